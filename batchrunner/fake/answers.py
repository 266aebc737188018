"""What the fake server answers: OpenAI-shaped bodies built from the request (pure functions).

The answer to a prompt is `echo: <last user text>`, so a test can match every answer to its
request; a request that caps its output gets an answer padded to 80-100% of the cap (cut at
the cap, with finish_reason `length`, when the echo alone is longer). A request that asks for
a structured output gets JSON that fits it, its strings the echo (fake/structured.py). Prompt
tokens are counted
with the model's real encoding (as batchrunner counts them); output tokens are rough (4
characters a token) but consistent.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from batchrunner.dialects.openai import output_cap
from batchrunner.fake.structured import structured_text
from batchrunner.structured import OutputFormat
from batchrunner.tokens import prompt_tokens

ECHO_PREFIX = "echo: "
ECHO_LIMIT = 200
FILLER = " and so on"
REASONING_TOKENS = 64
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
TRIGGER = re.compile(rb"\[fake:([a-z0-9_]+?)(?:x(\d+))?\]")
# Markers that shape a 200 answer instead of replacing it: cut, filtered, or (for a request
# that asks for a structured output, see fake/structured.py) not the JSON it asked for.
OUTPUT_TRIGGERS = ("length", "content_filter", "invalid_json", "invalid_schema")
# Markers that give no HTTP answer (server.py): the connection dropped, or an answer held back
# for `hang_seconds`. And the Batch API's own (batches.py, batch_files.py). The error markers
# are the names of faults.ERRORS (plus any status code: `[fake:418]`).
TRANSPORT_TRIGGERS = ("drop", "hang")
BATCH_TRIGGERS = ("batch_invalid", "batch_omit")


@dataclass(frozen=True, slots=True)
class Trigger:
    """A `[fake:NAME]` or `[fake:NAMExN]` marker in a request: misbehave on purpose."""

    name: str
    times: int | None  # None: every time; N: only the first N requests of this id


def find_trigger(raw_body: bytes) -> Trigger | None:
    match = TRIGGER.search(raw_body)
    if match is None:
        return None
    times = int(match.group(2)) if match.group(2) else None
    return Trigger(match.group(1).decode(), times)


def estimate_tokens(text: str) -> int:
    """Output tokens of an echo answer: about 4 characters a token is close enough."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _part_text(content: Any) -> str:
    """Text of a message content: a string, or a list of text / input_text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _part_text(users[-1].get("content")) if users else ""


def prompt_of(url: str, body: dict[str, Any]) -> tuple[str, int]:
    """(text to echo, prompt tokens counted with the model's real encoding)."""
    tokens = prompt_tokens(url, body)
    if url.endswith("/chat/completions"):
        return _last_user_text(body.get("messages")), tokens
    if url.endswith("/responses"):
        given = body.get("input")
        return (given if isinstance(given, str) else _last_user_text(given)), tokens
    if url.endswith("/completions"):
        given = body.get("prompt")
        first = given[0] if isinstance(given, list) and given else given
        return (first if isinstance(first, str) else ""), tokens
    return "", tokens


@dataclass(frozen=True, slots=True)
class Completion:
    text: str | None
    output_tokens: int
    reasoning_tokens: int
    finish_reason: str  # stop, length or content_filter


def complete(
    model: str,
    prompt_text: str,
    body: dict[str, Any],
    trigger: str | None,
    default_cap: int | None = None,
    shape: OutputFormat | None = None,
) -> Completion:
    """The echo answer, cut at the request's output allowance like a real model (or at the
    endpoint's own cap when the request sets none: OpenAI's completions stop at 16). A request
    that asks for a structured output (`shape`) gets JSON (fake/structured.py), padded with
    whitespace."""
    text = ECHO_PREFIX + prompt_text[:ECHO_LIMIT]
    if shape is not None:
        text = structured_text(shape, text, trigger)
    reasoning = REASONING_TOKENS if REASONING_MODEL.match(model) else 0
    visible = estimate_tokens(text)
    if trigger == "content_filter":
        return Completion(None, reasoning, reasoning, "content_filter")
    allowance = output_cap(body)
    if allowance is None:
        allowance = default_cap
    if trigger == "length":
        allowance = min(allowance or visible, max(1, visible // 2) + reasoning)
    if allowance is not None and reasoning + visible > allowance:
        reasoning = min(reasoning, allowance)
        kept_tokens = allowance - reasoning
        return Completion(text[: kept_tokens * 4], allowance, reasoning, "length")
    if allowance is not None:  # like a model asked for up to N tokens, write most of them
        wanted = int(allowance * _share_of_allowance(prompt_text)) - reasoning
        filler = FILLER if shape is None else " "  # JSON may end in whitespace, not in words
        text += filler * max(0, (wanted - visible) * 4 // len(filler))
        visible = estimate_tokens(text)
    return Completion(text, reasoning + visible, reasoning, "stop")


def _share_of_allowance(prompt_text: str) -> float:
    """Between 80% and 100%, the same for the same prompt."""
    digest = hashlib.sha256(prompt_text.encode()).digest()
    return 0.8 + 0.2 * digest[0] / 255


def chat_body(
    model: str, prompt_tokens: int, cached: int, answer: Completion, seed: int
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"fp_fake{seed % 1000:03d}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": prompt_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": answer.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
    }


def responses_body(
    model: str, prompt_tokens: int, cached: int, answer: Completion
) -> dict[str, Any]:
    incomplete = answer.finish_reason != "stop"
    reason = "max_output_tokens" if answer.finish_reason == "length" else answer.finish_reason
    content = (
        []
        if answer.text is None
        else [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}]
    )
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "error": None,
        "incomplete_details": {"reason": reason} if incomplete else None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": content,
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt_tokens,
            # cache_write_tokens: the SDK's Response type requires it, as the API now sends it
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": answer.output_tokens,
            "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
            "total_tokens": prompt_tokens + answer.output_tokens,
        },
    }


def completions_body(model: str, prompt_tokens: int, answer: Completion) -> dict[str, Any]:
    """/v1/completions: a base model's text completion."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "text": answer.text or "",
                "index": 0,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": prompt_tokens + answer.output_tokens,
        },
    }


MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def moderations_body(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """/v1/moderations: one result per input, flagged when it says `[flag]`. No usage:
    the endpoint is free."""
    given = body.get("input")
    inputs = given if isinstance(given, list) else [given]
    results = []
    for entry in inputs:
        flagged = "[flag]" in repr(entry)
        score = 0.9 if flagged else 0.001
        results.append(
            {
                "flagged": flagged,
                "categories": dict.fromkeys(MODERATION_CATEGORIES, flagged),
                "category_scores": dict.fromkeys(MODERATION_CATEGORIES, score),
            }
        )
    return {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": model, "results": results}


# The image tokens a 1024x1024 picture of medium quality costs gpt-image-1 (OpenAI's guide).
IMAGE_OUTPUT_TOKENS = 1056


def image_body(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """/v1/images/*: an address per image asked for. dall-e reports no usage; gpt-image models
    report tokens (text in, image tokens out), as the real API does, so they can be priced."""
    given = body.get("n")
    count = given if isinstance(given, int) else 1
    digest = hashlib.sha256(repr(body.get("prompt")).encode()).hexdigest()[:16]
    data = [{"url": f"https://images.fake.invalid/{digest}-{i}.png"} for i in range(count)]
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    if model.startswith("gpt-image"):
        text_tokens = estimate_tokens(str(body.get("prompt") or ""))
        output_tokens = IMAGE_OUTPUT_TOKENS * count
        answer["usage"] = {
            "input_tokens": text_tokens,
            "output_tokens": output_tokens,
            "total_tokens": text_tokens + output_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        }
    return answer


def video_body(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """/v1/videos: the video job, queued (the real API renders it later)."""
    return {
        "id": f"video_{uuid.uuid4().hex[:24]}",
        "object": "video",
        "model": model,
        "status": "queued",
        "created_at": int(time.time()),
        "seconds": str(body.get("seconds") or "4"),
        "size": str(body.get("size") or "720x1280"),
    }


def embedding_inputs(given: Any) -> list[Any]:
    """A string, a token list, or a list of either: always a list of single inputs."""
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(x, int) for x in given):
        return [given]
    if isinstance(given, list):
        return given
    return []


def embedding_vector(item: Any, dims: int) -> list[float]:
    """A deterministic unit vector: the same text always embeds the same way."""
    seed = hashlib.sha256(repr(item).encode()).digest()
    raw = [((seed[i % len(seed)] + 31 * i) % 255) / 127.0 - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def embeddings_body(model: str, body: dict[str, Any], dims: int) -> dict[str, Any]:
    inputs = embedding_inputs(body.get("input"))
    as_base64 = body.get("encoding_format") == "base64"
    wanted = body.get("dimensions")
    size = wanted if isinstance(wanted, int) and wanted > 0 else dims
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, size)
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = prompt_tokens("/v1/embeddings", body)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def error_body(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
