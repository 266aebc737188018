"""Requests-per-minute and tokens-per-minute throttles built on aiolimiter.

aiolimiter's bucket starts empty, so `AsyncLimiter(rpm, 60)` would let a whole minute of requests
through in the first second. Each limit is configured as a per-second rate instead (a bucket of
one second's worth), and a request larger than the token bucket is clamped to its size rather
than raising.
"""

from __future__ import annotations

import math

import orjson
from aiolimiter import AsyncLimiter

OUTPUT_ALLOWANCE_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
DEFAULT_OUTPUT_ALLOWANCE = 256


def per_second_limiter(per_minute: float) -> AsyncLimiter:
    per_second = per_minute / 60.0
    capacity = max(1.0, per_second)
    return AsyncLimiter(capacity, capacity / per_second)


def estimate_request_tokens(body: str) -> int:
    """Prompt tokens (about 4 characters each) plus the output allowance of the request."""
    allowance = DEFAULT_OUTPUT_ALLOWANCE
    if any(key in body for key in OUTPUT_ALLOWANCE_KEYS):
        parsed = orjson.loads(body)
        for key in OUTPUT_ALLOWANCE_KEYS:
            value = parsed.get(key)
            if isinstance(value, int):
                allowance = value
                break
    return math.ceil(len(body) / 4) + allowance


class RateLimits:
    """Both throttles together; a request waits for a slot and for its tokens."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self._requests = per_second_limiter(rpm) if rpm else None
        self._tokens = per_second_limiter(tpm) if tpm else None

    @property
    def counts_tokens(self) -> bool:
        return self._tokens is not None

    async def acquire(self, tokens: int = 0) -> None:
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None and tokens > 0:
            await self._tokens.acquire(min(float(tokens), self._tokens.max_rate))
