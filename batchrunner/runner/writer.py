"""Group commit: many outcomes, one ledger transaction.

Workers hand their outcomes to one writer task and go on with their next item: while a
transaction runs, new outcomes gather, and the next transaction takes them all. An item counts
as done only once its outcome is committed, so a kill loses at most the outcomes queued or being
committed (never more than `backlog`) plus the requests in flight; those items are still
"running" in the ledger and are sent again by the next run. When the ledger falls behind,
`write` waits for room instead of letting the queue grow.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from batchrunner.ledger import Ledger
from batchrunner.outcome import Outcome

MAX_BATCH = 2000
# A commit waits this long for GATHER_SHARE of the backlog to gather: commits of a few outcomes
# each write the same index pages again and again, and the workers do not wait for them anyway.
GATHER_S = 0.02
# Three quarters, not half: with the backlog at 1x --concurrency (the re-send bound), half made
# commits of ~64 outcomes at concurrency 128 and cost 10% of zero-latency throughput
# (bench/RESULTS.md, 2026-12-01); three quarters won that back.
GATHER_SHARE = 0.75


class LedgerWriter:
    def __init__(
        self,
        ledger: Ledger,
        on_flush: Callable[[list[Outcome]], None] | None = None,
        backlog: int = MAX_BATCH,
    ) -> None:
        self._ledger = ledger
        self._on_flush = on_flush
        self._backlog = max(1, backlog)
        self._gather = max(1, int(self._backlog * GATHER_SHARE))  # outcomes worth a commit
        self._pending: list[Outcome] = []
        self._committing = 0  # outcomes in the transaction under way
        self._wakeup = anyio.Event()
        self._room = anyio.Event()
        self._full = anyio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self.last_commit_s = 0.0  # how long the last commit took (the run's metrics read it)

    async def write(self, record: Outcome) -> None:
        """Queue `record` for the next commit; wait only while `backlog` outcomes are queued or
        being committed."""
        while self.uncommitted >= self._backlog and self._error is None:
            await self._room.wait()
        if self._error is not None:
            raise self._error
        self._pending.append(record)
        self._wakeup.set()
        if len(self._pending) >= self._gather:
            self._full.set()

    @property
    def uncommitted(self) -> int:
        """Outcomes queued or in the transaction under way."""
        return len(self._pending) + self._committing

    async def committed(self) -> None:
        """Return once everything written so far is committed (or the writer failed). Someone
        waits for it, so the commit does not wait for more outcomes to gather."""
        self._full.set()
        while self.uncommitted and self._error is None:
            await self._room.wait()

    def close(self) -> None:
        """No more writes: `run` commits what is left and returns."""
        self._closed = True
        self._wakeup.set()
        self._full.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            if not self._closed and len(self._pending) < self._gather:
                with anyio.move_on_after(GATHER_S):
                    await self._full.wait()
            self._full = anyio.Event()
            while self._pending:
                await self._flush()
            if self._closed:
                return

    async def _flush(self) -> None:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._committing = len(batch)
        began = time.perf_counter()
        try:
            with anyio.CancelScope(shield=True):  # a commit, once begun, is never abandoned
                await anyio.to_thread.run_sync(self._ledger.record_outcomes, batch)
            self.last_commit_s = time.perf_counter() - began
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._committing = 0
            room, self._room = self._room, anyio.Event()
            room.set()  # writers waiting for room look again (or see the error)
        if self._on_flush is not None:
            self._on_flush(batch)

    async def flush_remaining(self) -> None:
        """After a cancelled run: commit what was queued, shielded from the cancellation."""
        with anyio.CancelScope(shield=True):
            while self._pending and self._error is None:
                await self._flush()
