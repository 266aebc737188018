"""The fake server speaks the real API's shapes: the real `openai` SDK parses every answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from batchrunner.fake import FakeConfig, FakeServer, run_in_thread


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_in_thread(FakeConfig(seed=1)) as running:
        yield running


def client(server: FakeServer, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0, timeout=10)


def ask(server: FakeServer, text: str, request_id: str = "r-1", **body: Any) -> object:
    return client(server).chat.completions.create(
        model=str(body.pop("model", "gpt-4o-mini")),
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Client-Request-Id": request_id},
        **body,
    )


def test_chat_answer_echoes_the_prompt_with_usage(server: FakeServer) -> None:
    answer = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
        ],
    )
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_reasoning_models_report_reasoning_inside_output_tokens(server: FakeServer) -> None:
    answer = ask(server, "think", model="o4-mini")
    usage = answer.usage  # type: ignore[attr-defined]
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0 and usage.completion_tokens > reasoning


def test_output_allowance_cuts_the_answer_with_finish_reason_length(server: FakeServer) -> None:
    long_text = "word " * 100
    answer = ask(server, long_text, max_tokens=5)
    assert answer.choices[0].finish_reason == "length"  # type: ignore[attr-defined]
    assert answer.usage.completion_tokens == 5  # type: ignore[attr-defined]


def test_a_completion_with_no_cap_stops_at_16_tokens_as_openais_does(server: FakeServer) -> None:
    long_prompt = "Tell me everything about the history of the printing press in Europe."
    answer = client(server).completions.create(model="gpt-3.5-turbo-instruct", prompt=long_prompt)
    assert answer.usage is not None and answer.usage.completion_tokens == 16
    assert answer.choices[0].finish_reason == "length"
    capped = client(server).completions.create(
        model="gpt-3.5-turbo-instruct", prompt=long_prompt, max_tokens=40
    )
    assert capped.usage is not None and 16 < capped.usage.completion_tokens <= 40


def test_responses_api_answer(server: FakeServer) -> None:
    answer = client(server).responses.create(model="gpt-4.1-mini", input="what is 2+2?")
    assert answer.output_text == "echo: what is 2+2?"
    assert answer.usage is not None and answer.usage.input_tokens > 0
    cut = client(server).responses.create(
        model="gpt-4.1-mini", input="x" * 400, max_output_tokens=16
    )
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


def test_embeddings_are_deterministic_unit_vectors(server: FakeServer) -> None:
    api = client(server).embeddings
    first = api.create(model="text-embedding-3-small", input=["a cat", "a dog"])  # base64 wire
    again = api.create(model="text-embedding-3-small", input="a cat", encoding_format="float")
    assert len(first.data) == 2 and len(first.data[0].embedding) == 16
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert first.data[0].embedding != first.data[1].embedding
    assert sum(x * x for x in first.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert first.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("marker", "error", "code"),
    [
        ("[fake:context_length]", openai.BadRequestError, "context_length_exceeded"),
        ("[fake:401]", openai.AuthenticationError, "invalid_api_key"),
        ("[fake:404]", openai.NotFoundError, "model_not_found"),
        ("[fake:422]", openai.UnprocessableEntityError, None),
        ("[fake:503]", openai.InternalServerError, None),
        ("[fake:429]", openai.RateLimitError, "rate_limit_exceeded"),
    ],
)
def test_markers_raise_the_sdk_error_of_their_kind(
    server: FakeServer, marker: str, error: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(error) as raised:
        ask(server, f"{marker} please fail")
    assert raised.value.code == code


def test_counted_markers_fail_only_the_first_n_tries_of_each_id(server: FakeServer) -> None:
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(server, "[fake:500x2]", request_id="flaky")
    assert ask(server, "[fake:500x2]", request_id="flaky").choices  # type: ignore[attr-defined]
    with pytest.raises(openai.InternalServerError):
        ask(server, "[fake:500x2]", request_id="other")  # a different id has its own count
    assert server.requests_by_id["flaky"] == 3 and server.requests_by_id["other"] == 1
    assert server.status_counts[500] == 3 and server.status_counts[200] == 1


def test_dropped_connections_and_gateway_html(server: FakeServer) -> None:
    with pytest.raises(openai.APIConnectionError):
        ask(server, "[fake:drop]")
    with pytest.raises(openai.InternalServerError) as raised:
        ask(server, "[fake:502]")
    assert "502 Bad Gateway" in raised.value.response.text


def test_forced_status_and_wrong_key(server: FakeServer) -> None:
    server.config.force_status, server.config.force_code = 429, "insufficient_quota"
    with pytest.raises(openai.RateLimitError) as raised:
        ask(server, "hi")
    assert raised.value.code == "insufficient_quota"
    server.config.force_status = server.config.force_code = None
    server.config.api_key = "sk-right"
    with pytest.raises(openai.AuthenticationError):
        ask(server, "hi")
    assert client(server, key="sk-right").models.list().data


def test_rate_limits_answer_with_openai_headers_and_a_429(server: FakeServer) -> None:
    server.config.rpm_limit = 3
    raw = client(server).chat.completions.with_raw_response
    remaining = []
    for _ in range(3):
        reply = raw.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        remaining.append(int(reply.headers["x-ratelimit-remaining-requests"]))
        assert reply.headers["x-ratelimit-limit-requests"] == "3"
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as raised:
        ask(server, "hi")
    headers = raised.value.response.headers
    assert float(headers["retry-after-ms"]) > 1000  # a 3-per-minute bucket refills slowly
    assert "Please try again in" in raised.value.message


def call(url: str, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_control_endpoints(server: FakeServer) -> None:
    root = server.base_url.removesuffix("/v1")
    ask(server, "hi")
    _, stats = call(f"{root}/_fake/stats")
    assert stats["total_requests"] == 1 and stats["status_counts"] == {"200": 1}
    status, _ = call(f"{root}/_fake/config", {"latency_ms": 5.0})
    assert status == 200 and server.config.latency_ms == 5.0
    assert call(f"{root}/_fake/config", {"nonsense": 1})[0] == 400
    call(f"{root}/_fake/reset", {})
    assert server.total_requests == 0
