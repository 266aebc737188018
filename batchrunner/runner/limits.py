"""Run at the account's limit without tripping it: requests/min and tokens/min.

Two sources of limits: what the user configured (`--rpm`, `--tpm`) and what the server reports
in its rate-limit headers (the dialect reads them into `ServerLimits`); the tighter one wins,
and a server that reports limits is throttled even when nothing was configured. A 429 pauses
every worker until the time the server names, then the rate ramps back up from half over
`RAMP_S`.

Built on aiolimiter, around its sharp edges:
- its bucket starts empty, so `AsyncLimiter(rpm, 60)` would let a whole minute's requests
  through in the first second: each limit is a per-second rate with a quarter second of burst;
- it cannot change its rate: a new limiter replaces the old one when a limit changes;
- it serves small waiters first, which would starve large requests: acquisitions queue through
  one FIFO lock, so at most one task waits inside a limiter at a time;
- an amount larger than the bucket raises: large requests are taken in bucket-sized chunks;
- it cannot give capacity back: the difference between a request's estimated and actual tokens
  is carried as a credit (or a debt) into the next acquisitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
from aiolimiter import AsyncLimiter

from batchrunner.dialects import ServerLimits
from batchrunner.failures import RULES, ErrorKind

BURST_S = 0.25  # a bucket holds this much of a second: small bursts, even when rebuilt
PAUSE_CAP_S = 60.0  # longer waits defer the item instead of pausing every worker
DEFAULT_PAUSE_S = RULES[ErrorKind.RATE_LIMIT].min_wait_s  # a 429 that names no time
RAMP_S = 10.0
RAMP_START = 0.5
RAMP_STEPS = 5
EMPTY_REFILL_SHARE = 0.02


def describe_limits(rpm: float | None, tpm: float | None) -> str:
    """Both limits in words; one not set (none configured, none reported) says so."""
    requests = f"{rpm:,.0f} requests/min" if rpm is not None else "no request limit"
    tokens = f"{tpm:,.0f} tokens/min" if tpm is not None else "no token limit"
    return f"{requests}, {tokens}"


class _Rate:
    """One per-minute limit as an aiolimiter bucket holding a quarter second of it."""

    def __init__(self, configured: float | None) -> None:
        self.configured = configured
        self.learned: float | None = None
        self.factor = 1.0
        self.share = 1  # workers splitting the limit (each takes 1/share of it)
        self.debt = 0.0  # taken on top of the next request, after the bucket was rebuilt
        self.limiter: AsyncLimiter | None = None
        self._rebuild()

    @property
    def per_minute(self) -> float | None:
        known = [x for x in (self.configured, self.learned) if x]
        return min(known) * self.factor / self.share if known else None

    def _rebuild(self) -> None:
        per_minute = self.per_minute
        if per_minute is None:
            self.limiter = None
            return
        per_second = per_minute / 60.0
        capacity = max(1.0, per_second * BURST_S)
        if self.limiter is not None:  # a fresh bucket is full: no second burst on a change
            self.debt = capacity
        self.limiter = AsyncLimiter(capacity, capacity / per_second)

    def learn(self, limit: int) -> bool:
        """Take the server's reported limit; True if the effective rate changed."""
        if limit <= 0 or limit == self.learned:
            return False
        before = self.per_minute
        self.learned = float(limit)
        if self.per_minute != before:
            self._rebuild()
            return True
        return False

    def set_share(self, share: int) -> None:
        if share != self.share:
            self.share = max(1, share)
            self._rebuild()

    def set_factor(self, factor: float) -> None:
        if factor != self.factor:
            self.factor = factor
            self._rebuild()

    async def take(self, amount: float) -> None:
        limiter = self.limiter
        if limiter is None:
            return
        amount, self.debt = amount + self.debt, 0.0
        while amount > 0:
            chunk = min(amount, limiter.max_rate)
            await limiter.acquire(chunk)
            amount -= chunk


class Throttle:
    """Both limits, the global pause after a 429, and what was learned from the server."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = _Rate(rpm)
        self._tokens = _Rate(tpm)
        self._clock = clock
        self._lock = anyio.Lock()
        self._paused_until = 0.0
        self._ramp_from: float | None = None
        self._token_credit = 0.0
        self.pauses = 0

    @property
    def paused_for(self) -> float:
        """Seconds until the pause after the last 429 is over (0: not paused)."""
        return max(0.0, self._paused_until - self._clock())

    @property
    def counts_tokens(self) -> bool:
        """Whether requests need a token estimate: only once a token limit is known."""
        return self._tokens.limiter is not None

    @property
    def requests_per_minute(self) -> float | None:
        return self._requests.per_minute

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tokens.per_minute

    def describe(self) -> str:
        """The limits in force, for a log line: "500 requests/min, no token limit"."""
        return describe_limits(self.requests_per_minute, self.tokens_per_minute)

    async def acquire(self, tokens: int) -> None:
        """Wait for any pause, a request slot and `tokens` tokens, in arrival order."""
        unlimited = self._requests.limiter is None and self._tokens.limiter is None
        if unlimited and self._paused_until <= self._clock():
            return
        async with self._lock:
            wait = self._paused_until - self._clock()
            if wait > 0:
                await anyio.sleep(wait)
            self._ramp()
            await self._requests.take(1)
            wanted = tokens - self._token_credit
            self._token_credit = max(0.0, -wanted)
            await self._tokens.take(max(0.0, wanted))

    def settle(self, estimated: int, actual: int | None) -> None:
        """Carry the difference between a request's estimated and actual tokens forward."""
        per_minute = self._tokens.per_minute
        if actual is not None and per_minute:
            self._token_credit += estimated - actual
            second = per_minute / 60.0  # never carry more than a second of the limit
            self._token_credit = max(-second, min(second, self._token_credit))

    def observe(self, limits: ServerLimits) -> None:
        """Learn from an answer's headers: tighter limits, and a short pause when the server
        says nothing is left (someone else may be spending the same account)."""
        if limits.limit_requests is not None:
            self._requests.learn(limits.limit_requests)
        if limits.limit_tokens is not None and self._tokens.learn(limits.limit_tokens):
            # A fresh bucket offers a full second of tokens; the server may have fewer left.
            limiter = self._tokens.limiter
            if limiter is not None and limits.remaining_tokens is not None:
                short = limits.remaining_tokens - limiter.max_rate
                self._token_credit = max(-limiter.max_rate, min(self._token_credit, short))
        if limits.remaining_requests == 0 and limits.limit_requests:
            self._pause(60.0 / limits.limit_requests, ramp=False)  # one request's refill
        if limits.remaining_tokens is not None and limits.remaining_tokens <= 0:
            refill = 60.0 * EMPTY_REFILL_SHARE  # a slice of the bucket, not all of it
            self._pause(min(limits.reset_tokens or refill, refill), ramp=False)

    def share_with(self, runs: int) -> None:
        """Take 1/runs of every limit: the job's live workers split it between them."""
        self._requests.set_share(runs)
        self._tokens.set_share(runs)

    @property
    def learned(self) -> ServerLimits:
        """The limits the server reported, to pass on to the job's other workers."""
        requests, tokens = self._requests.learned, self._tokens.learned
        return ServerLimits(
            limit_requests=int(requests) if requests else None,
            limit_tokens=int(tokens) if tokens else None,
        )

    def rate_limited(self, wait: float | None) -> None:
        """A 429: every worker waits until the server's time, then the rate ramps back up."""
        self._pause(min(wait if wait is not None else DEFAULT_PAUSE_S, PAUSE_CAP_S), ramp=True)

    def _pause(self, seconds: float, ramp: bool) -> None:
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1
        if ramp:
            self._ramp_from = self._paused_until

    def _ramp(self) -> None:
        """After a 429, start again at half the rate and step back up to all of it."""
        if self._ramp_from is None:
            return
        progress = (self._clock() - self._ramp_from) / RAMP_S
        if progress >= 1:
            self._ramp_from = None
            factor = 1.0
        else:
            step = int(max(0.0, progress) * RAMP_STEPS) / RAMP_STEPS
            factor = RAMP_START + (1 - RAMP_START) * step
        self._requests.set_factor(factor)
        self._tokens.set_factor(factor)


class PauseLog:
    """A run's pauses after 429s as wall-clock windows: a pause that a later 429 extends (or
    that starts while one lasts) stays one window. The runner hands them to the ledger."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now
        self._windows: list[tuple[datetime, datetime]] = []  # the last one may still grow

    def paused(self, seconds: float) -> None:
        """Every request is held back for `seconds` from now."""
        if seconds <= 0:
            return
        now = self._now()
        until = now + timedelta(seconds=seconds)
        if self._windows and self._windows[-1][1] >= now:
            start, end = self._windows[-1]
            self._windows[-1] = (start, max(end, until))
        else:
            self._windows.append((now, until))

    def take(self, finished_only: bool) -> list[tuple[datetime, datetime]]:
        """The windows to keep, naive UTC as the ledger stores times; with `finished_only`
        the one still under way stays here, to grow, else it ends now (the run's end)."""
        keep: list[tuple[datetime, datetime]] = []
        now = self._now()
        if self._windows and self._windows[-1][1] >= now:
            if finished_only:
                keep = [self._windows.pop()]
            else:  # the run ends: it holds nothing back after now
                start = self._windows.pop()[0]
                if start < now:
                    self._windows.append((start, now))
        taken, self._windows = self._windows, keep
        return [(s.replace(tzinfo=None), e.replace(tzinfo=None)) for s, e in taken]
