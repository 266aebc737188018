"""Read token usage out of chat, responses and embeddings bodies alike, and show what it cost
(pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the API reports them; output tokens already include reasoning tokens."""

    input_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_usage(body: dict[str, Any]) -> Usage:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    if "input_tokens" in usage:  # /v1/responses
        input_details = usage.get("input_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or {}
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            cached_tokens=_int(input_details.get("cached_tokens")) or 0,
            output_tokens=_int(usage.get("output_tokens")),
            reasoning_tokens=_int(output_details.get("reasoning_tokens")) or 0,
        )
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    completion = _int(usage.get("completion_tokens"))
    return Usage(  # /v1/chat/completions, and /v1/embeddings (no completion tokens)
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")) or 0,
        output_tokens=completion if completion is not None else 0,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")) or 0,
    )


def read_finish_reason(body: dict[str, Any]) -> str | None:
    """The chat finish_reason, or the responses API's incomplete reason."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    if body.get("object") == "response" and body.get("status") == "incomplete":
        details = body.get("incomplete_details") or {}
        reason = details.get("reason")
        if reason == "max_output_tokens":
            return "length"
        return reason if isinstance(reason, str) else "incomplete"
    return None


def format_usd(value: float | None) -> str:
    """Cents for large sums; at least two significant digits for tiny ones (status, estimates)."""
    if value is None:
        return "unknown"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.{max(4, 1 - math.floor(math.log10(value)))}f}"
