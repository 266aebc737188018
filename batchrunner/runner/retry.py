"""Decide what one answer means for its item (pure: a table, tested as one).

| answer                                         | verdict                                    |
|------------------------------------------------|--------------------------------------------|
| 200 with a JSON body                           | succeed (finish_reason length/content_filter|
|                                                | is kept as a flag, never retried: billed)   |
| 429 insufficient_quota, 401, 403, 404          | stop the job; the item stays pending        |
| 429 rate limited                               | retry after the server's delay              |
| 408, 409, 5xx, timeout, dropped connection,    | retry with exponential backoff and full     |
| unparsable body                                | jitter, up to max_attempts                  |
| other 4xx (400, 422, ...)                      | fail the item now, with the API's message   |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from batchrunner.runner.limits import wait_from_message

SUCCEED: Final = "succeed"
RETRY: Final = "retry"
FAIL: Final = "fail"
STOP: Final = "stop"
Action = Literal["succeed", "retry", "fail", "stop"]

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0
STOP_CODES = {401: "auth", 403: "permission", 404: "not_found"}


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    kind: str | None = None  # rate_limit, server_error, timeout, connection, invalid_request ...
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    body: dict[str, Any] | None = None  # the parsed 200 body


def api_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(type, code, message) of an OpenAI-style error body, whatever its shape."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return None, None, text or None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        kind, code, message = error.get("type"), error.get("code"), error.get("message")
        return (
            kind if isinstance(kind, str) else None,
            str(code) if code is not None else None,
            message if isinstance(message, str) else None,
        )
    if isinstance(error, str):
        return None, None, error
    return None, None, body[:300].decode("utf-8", "replace")


def judge_reply(status: int, body: bytes, retry_after: float | None) -> Verdict:
    """The verdict for an HTTP answer."""
    if status == 200:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Verdict(RETRY, "bad_response", None, "the 200 answer's body is not JSON")
        if not isinstance(parsed, dict):
            return Verdict(RETRY, "bad_response", None, "the 200 answer's body is not an object")
        return Verdict(SUCCEED, body=parsed)
    error_type, code, message = api_error(body)
    message = message or f"HTTP {status}"
    if status == 429:
        if "insufficient_quota" in (code, error_type):
            return Verdict(STOP, "quota", code or error_type, message)
        wait = retry_after if retry_after is not None else wait_from_message(message)
        return Verdict(RETRY, "rate_limit", code, message, wait)
    if status in STOP_CODES:
        return Verdict(STOP, STOP_CODES[status], code, message)
    if status in (408, 409) or status >= 500:
        kind = "timeout" if status == 408 else "server_error"
        return Verdict(RETRY, kind, code or str(status), message, retry_after)
    return Verdict(FAIL, "invalid_request", code or error_type, message)


def judge_transport_failure(kind: str, message: str) -> Verdict:
    """A timeout, a dropped connection or a broken body: always worth another try."""
    return Verdict(RETRY, kind, None, message)


def final_verdict(verdict: Verdict, attempt: int, max_attempts: int) -> Verdict:
    """A retry after the last allowed attempt becomes a failure of the item."""
    if verdict.action == RETRY and attempt >= max_attempts:
        return Verdict(FAIL, verdict.kind, verdict.code, verdict.message)
    return verdict


def backoff_delay(attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than what the server asked."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)
