"""The fake server's misbehaviour: OpenAI's error answers and its rate-limit buckets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from batchrunner.fake.answers import error_body

# status, type, code, message: the shapes the real API sends.
ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "context_length": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. However, your messages resulted "
        "in 131072 tokens. Please reduce the length of the messages.",
    ),
    "400": (400, "invalid_request_error", None, "Invalid request: 'messages' is malformed."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "403": (
        403,
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    "404": (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    "422": (422, "invalid_request_error", None, "Unprocessable request."),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "429": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again in 50ms.",
    ),
    "500": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "502": (502, "server_error", None, "Bad gateway."),
    "503": (503, "server_error", None, "The engine is currently overloaded, try again later."),
    "retry_later": (503, "server_error", None, "Down for maintenance; come back in a while."),
}
RETRY_LATER_MS = 1500  # what `[fake:retry_later]` asks the client to wait
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    body: dict[str, Any] | bytes
    headers: dict[str, str]


def error_answer(name: str, retry_after_ms: int = 50) -> ErrorAnswer:
    """The answer for an error name (`context_length`, `503`, ...) or a bare status code."""
    if name == "502":
        return ErrorAnswer(502, HTML_502, {})  # gateways answer in HTML: an unparsable body
    status, kind, code, message = ERRORS.get(name) or _generic(name)
    headers = {}
    if status == 429 and code == "rate_limit_exceeded":
        headers = {"retry-after-ms": str(retry_after_ms), "retry-after": "1"}
    if name == "retry_later":
        headers = {"retry-after-ms": str(RETRY_LATER_MS), "retry-after": "2"}
    return ErrorAnswer(status, error_body(message, kind, code), headers)


def model_missing(model: str) -> ErrorAnswer:
    """OpenAI's answer to a model the account does not have."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return ErrorAnswer(404, error_body(message, "invalid_request_error", "model_not_found"), {})


def forced_answer(status: int, code: str | None, message: str | None = None) -> ErrorAnswer:
    """`force_status` / `force_code` (/ `force_message`): every request gets this error."""
    if code is not None and code in ERRORS:
        answer = error_answer(code)
    else:
        answer = error_answer(str(status))
        if code is not None and isinstance(answer.body, dict):
            answer.body["error"]["code"] = code
    if message is not None and isinstance(answer.body, dict):
        answer.body["error"]["message"] = message
    return answer


def _generic(name: str) -> tuple[int, str, str | None, str]:
    status = int(name) if name.isdigit() else 500
    return status, "server_error" if status >= 500 else "invalid_request_error", None, name


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: `120ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


class Bucket:
    """A per-minute limit as a token bucket that starts full and refills continuously.

    `window_s` below 60 enforces the limit over a shorter period, as the real API may (60,000
    requests/min can be enforced as 1,000 per second): the bucket holds only that window's share.
    """

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.limit = per_minute
        self.window_s = window_s
        self.capacity = max(1.0, per_minute * window_s / 60.0)
        self.level = self.capacity
        self._last = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._last) * self.limit / 60.0)
        self._last = now

    def take(self, amount: int) -> float:
        """Take `amount` and return 0, or take nothing and return the seconds to wait."""
        self._refill()
        if amount <= self.level:
            self.level -= amount
            return 0.0
        return (amount - self.level) * 60.0 / self.limit

    def reset_seconds(self) -> float:
        return (self.capacity - self.level) * 60.0 / self.limit

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{kind}": format_reset(self.reset_seconds()),
        }


def rate_limited(kind: str, model: str, bucket: Bucket, requested: int, wait: float) -> ErrorAnswer:
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    used = round(bucket.capacity - max(0.0, bucket.level))
    message = (
        f"Rate limit reached for {model} in organization org-fake on {unit}: Limit "
        f"{bucket.limit}, Used {used}, Requested {requested}. Please try again in "
        f"{format_reset(wait)}. Visit https://platform.openai.com/account/rate-limits to learn "
        "more."
    )
    headers = {
        **bucket.headers(kind),
        "retry-after-ms": str(max(1, round(wait * 1000))),
        "retry-after": str(max(1, round(wait))),
    }
    return ErrorAnswer(429, error_body(message, kind, "rate_limit_exceeded"), headers)
