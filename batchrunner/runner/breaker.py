"""Whether the endpoint is there at all: a circuit breaker over every call a run makes (pure,
given a clock).

Per-item attempts cannot tell a dead endpoint from bad items: against a closed port every item
would burn its attempts and fail. So a failure that reached nothing (`unreachable`: refused, no
such host, TLS, a connect timeout) is never an item's attempt; the breaker counts them instead.

- closed: calls go. TRIP_AFTER unreachable failures in a row, with no answer of any kind
  between them from any worker, open it.
- open: no call goes but one probe at a time, after a wait that doubles from PROBE_FIRST_S to
  PROBE_MAX_S. Any answer (whatever its status) closes it and the run goes on by itself.
- given up: open for `give_up_s` (the run's `--unreachable-wait`): the job stops, resumably,
  with its items back to pending; `run` resumes it later.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TRIP_AFTER = 5
PROBE_FIRST_S = 1.0
PROBE_MAX_S = 30.0


class Breaker:
    def __init__(self, give_up_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.give_up_s = give_up_s
        self._clock = clock
        self._streak = 0  # unreachable failures since the last answer
        self._opened_at: float | None = None
        self._next_probe_at = 0.0
        self._probe_wait = PROBE_FIRST_S
        self._probing = False
        self.last_failure = ""

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def troubled(self) -> bool:
        """Open, or on its way there: an answer now has something to reset."""
        return self._streak > 0

    def answered(self) -> bool:
        """The server answered (any status): it is there. True if this closed the circuit."""
        was_open = self.is_open
        self._streak = 0
        self._opened_at = None
        self._probing = False
        self._probe_wait = PROBE_FIRST_S
        return was_open

    def unreachable(self, message: str, probe: bool = False) -> bool:
        """A call reached nothing (`probe`: it was the probe `may_call` let through, not a call
        sent before the circuit opened). True if this opened the circuit."""
        self.last_failure = message
        self._streak += 1
        now = self._clock()
        if self._probing and not probe:
            return False  # a straggler: the probe is still out
        if self._probing:  # the probe failed: wait longer for the next
            self._probing = False
            self._probe_wait = min(self._probe_wait * 2, PROBE_MAX_S)
            self._next_probe_at = now + self._probe_wait
            return False
        if self._opened_at is None and self._streak >= TRIP_AFTER:
            self._opened_at = now
            self._next_probe_at = now + self._probe_wait
            return True
        return False

    def may_call(self) -> bool:
        """Whether a call may go now: always while closed; while open, as the one probe when
        its time has come (the caller then sends it and reports how it went)."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() < self._next_probe_at:
            return False
        self._probing = True
        return True

    def gave_up(self) -> bool:
        """Open for longer than `give_up_s`: time to stop the job."""
        return self._opened_at is not None and self._clock() - self._opened_at >= self.give_up_s

    def seconds_to_next_probe(self) -> float:
        """How long until the next probe may go; while one is out, until it is given up on
        (its result comes first, and whoever waits is told)."""
        if self._probing:
            return self.seconds_to_give_up()
        return max(0.0, self._next_probe_at - self._clock())

    def seconds_to_give_up(self) -> float:
        if self._opened_at is None:
            return self.give_up_s
        return max(0.0, self._opened_at + self.give_up_s - self._clock())

    def stop_reason(self) -> str:
        return f"unreachable: no answer for {self.give_up_s:.0f}s: {self.last_failure}"
