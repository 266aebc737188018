"""Group commit: many outcomes, one ledger transaction.

Workers hand their outcomes to one writer task. While a transaction runs, new outcomes gather;
the next transaction takes them all. A worker whose outcome finishes an item waits until it is
durable before it takes the next item, so a kill never loses more than what was in flight.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from batchrunner.ledger import AttemptRecord, Ledger

MAX_BATCH = 2000


class LedgerWriter:
    def __init__(
        self, ledger: Ledger, on_flush: Callable[[list[AttemptRecord]], None] | None = None
    ) -> None:
        self._ledger = ledger
        self._on_flush = on_flush
        self._pending: list[AttemptRecord] = []
        self._batch_done = anyio.Event()
        self._wakeup = anyio.Event()
        self._closed = False
        self._error: BaseException | None = None

    async def write(self, record: AttemptRecord, *, durable: bool) -> None:
        """Queue `record`; with `durable`, return only once it is committed."""
        if self._error is not None:
            raise self._error
        self._pending.append(record)
        done = self._batch_done
        self._wakeup.set()
        if durable:
            await done.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """No more writes: `run` commits what is left and returns."""
        self._closed = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while self._pending:
                await self._flush()
            if self._closed:
                return

    async def _flush(self) -> None:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        done = self._batch_done
        takes_all = not self._pending  # else the rest shares `done` and a later flush sets it
        if takes_all:
            self._batch_done = anyio.Event()  # outcomes queued during this commit wait for the next
        try:
            with anyio.CancelScope(shield=True):  # a commit, once begun, is never abandoned
                await anyio.to_thread.run_sync(self._ledger.record_attempts, batch)
        except BaseException as exc:
            self._error = exc
            done.set()
            raise
        if self._on_flush is not None:
            self._on_flush(batch)
        if takes_all:
            done.set()

    async def flush_remaining(self) -> None:
        """After a cancelled run: commit what was queued, shielded from the cancellation."""
        with anyio.CancelScope(shield=True):
            while self._pending and self._error is None:
                await self._flush()
