"""The concurrent runner: claim pending items from the ledger, send them through the transport
under the rate limits, judge each answer, and record every attempt.

Data flow: ledger (pending) -> feed -> workers -> transport -> verdict -> writer -> ledger.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrunner.errors import BatchrunnerError
from batchrunner.ledger import AttemptRecord, ClaimedItem, Ledger
from batchrunner.ledger.models import FAILED, PENDING, SUCCEEDED
from batchrunner.ledger.store import utcnow
from batchrunner.logs import ATTEMPTS, EVENTS, log_attempt
from batchrunner.runner.limits import RateLimits, estimate_request_tokens
from batchrunner.runner.retry import (
    FAIL,
    RETRY,
    STOP,
    SUCCEED,
    Verdict,
    backoff_delay,
    final_verdict,
    judge_reply,
    judge_transport_failure,
)
from batchrunner.runner.transport import HttpTransport, Reply, TransportFailure
from batchrunner.runner.writer import LedgerWriter
from batchrunner.settings import RunSettings
from batchrunner.usage import read_finish_reason, read_usage

HEARTBEAT_S = 10.0
CLAIM_PAGE = 500
OUTCOMES = {SUCCEED: "succeeded", RETRY: "retry", FAIL: "failed", STOP: "stopped"}
ITEM_STATES = {SUCCEED: SUCCEEDED, RETRY: None, FAIL: FAILED, STOP: PENDING}


@dataclass
class RunReport:
    job_id: int
    state: str  # completed | stopped
    stop_reason: str | None


class ConcurrentRunner:
    """Runs one job's pending items to the end, or until stopped."""

    def __init__(
        self,
        ledger: Ledger,
        job_id: int,
        settings: RunSettings,
        transport: HttpTransport,
        on_flush: Callable[[list[AttemptRecord]], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self._ledger = ledger
        self._job_id = job_id
        self._settings = settings
        self._transport = transport
        self._limits = RateLimits(settings.rpm, settings.tpm)
        self._writer = LedgerWriter(ledger, on_flush)
        self._rng = random.Random(seed)
        self._stopping = anyio.Event()
        self._stop_reason: str | None = None
        self._run_id = ""

    def stop(self, reason: str) -> None:
        """Send nothing more; in-flight requests finish and are recorded."""
        if not self._stopping.is_set():
            self._stop_reason = reason
            self._stopping.set()

    async def run(self, handle_signals: bool = False) -> RunReport:
        settings = self._settings
        self._run_id = await anyio.to_thread.run_sync(
            self._ledger.start_run, self._job_id, settings.max_attempts
        )
        try:
            async with anyio.create_task_group() as background:
                if handle_signals:
                    background.start_soon(self._watch_signals, background.cancel_scope)
                background.start_soon(self._heartbeat)
                async with anyio.create_task_group() as core:
                    core.start_soon(self._writer.run)
                    send, receive = anyio.create_memory_object_stream[ClaimedItem](
                        settings.concurrency
                    )
                    async with anyio.create_task_group() as pipeline:
                        pipeline.start_soon(self._feed, send)
                        async with receive:
                            for _ in range(settings.concurrency):
                                pipeline.start_soon(self._work, receive.clone())
                    self._writer.close()
                background.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first_deliberate(group) from None
        finally:
            await self._writer.flush_remaining()
            with anyio.CancelScope(shield=True):
                state = await anyio.to_thread.run_sync(
                    self._ledger.end_run, self._job_id, self._run_id
                )
        return RunReport(self._job_id, state, self._stop_reason if state != "completed" else None)

    async def _watch_signals(self, scope: CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if not self._stopping.is_set():
                    EVENTS.warning(
                        "stopping: waiting for the requests in flight "
                        "(press Ctrl-C again to abandon them)"
                    )
                    self.stop("interrupted" if signum == signal.SIGINT else "terminated")
                else:
                    EVENTS.warning("abandoning the requests in flight")
                    scope.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_S)
            await anyio.to_thread.run_sync(self._ledger.heartbeat, self._run_id)

    async def _feed(self, send: MemoryObjectSendStream[ClaimedItem]) -> None:
        async with send:
            while not self._stopping.is_set():
                page = await anyio.to_thread.run_sync(
                    self._ledger.claim_pending, self._job_id, self._run_id, CLAIM_PAGE
                )
                if not page:
                    return
                for item in page:
                    if self._stopping.is_set():
                        return  # claimed but unsent items go back to pending in end_run
                    await send.send(item)

    async def _work(self, items: MemoryObjectReceiveStream[ClaimedItem]) -> None:
        async with items:
            async for item in items:
                if not self._stopping.is_set():
                    await self._process(item)

    async def _process(self, item: ClaimedItem) -> None:
        """Send one item until it succeeds, fails for good, or the job stops."""
        body = item.body.encode()
        tokens = estimate_request_tokens(item.body) if self._limits.counts_tokens else 0
        attempt = item.attempts
        while True:
            await self._limits.acquire(tokens)
            if self._stopping.is_set():
                return
            attempt += 1
            started = utcnow()
            answer = await self._transport.post(item.url, body, item.custom_id)
            if isinstance(answer, Reply):
                verdict = judge_reply(answer.status, answer.body, answer.retry_after)
            else:
                verdict = judge_transport_failure(answer.kind, answer.message)
            verdict = final_verdict(verdict, attempt, self._settings.max_attempts)
            record = self._record(item, attempt, started, answer, verdict)
            if ATTEMPTS.isEnabledFor(logging.INFO):
                self._log(item, record)
            if verdict.action == STOP:
                self.stop(f"{verdict.kind}: {verdict.message}")
            if verdict.action != RETRY:
                await self._writer.write(record, durable=True)
                return
            await self._writer.write(record, durable=False)
            with anyio.move_on_after(backoff_delay(attempt, self._rng, verdict.retry_after)):
                await self._stopping.wait()
            if self._stopping.is_set():
                return

    def _record(
        self,
        item: ClaimedItem,
        attempt: int,
        started: datetime,
        answer: Reply | TransportFailure,
        verdict: Verdict,
    ) -> AttemptRecord:
        reply = answer if isinstance(answer, Reply) else None
        record = AttemptRecord(
            item_id=item.id,
            job_id=self._job_id,
            run_id=self._run_id,
            number=attempt,
            started_at=started,
            ended_at=utcnow(),
            outcome=OUTCOMES[verdict.action],
            item_state=ITEM_STATES[verdict.action],
            http_status=reply.status if reply else None,
            latency_ms=round(answer.latency_ms, 2),
        )
        if verdict.action == SUCCEED and verdict.body is not None and reply is not None:
            usage = read_usage(verdict.body)
            record.input_tokens = usage.input_tokens
            record.cached_tokens = usage.cached_tokens
            record.output_tokens = usage.output_tokens
            record.reasoning_tokens = usage.reasoning_tokens
            record.finish_reason = read_finish_reason(verdict.body)
            record.response = reply.body.decode()
        else:
            record.error_kind = verdict.kind
            record.error_code = verdict.code
            record.error_message = verdict.message
        return record

    def _log(self, item: ClaimedItem, record: AttemptRecord) -> None:
        log_attempt(
            job=self._job_id,
            custom_id=item.custom_id,
            attempt=record.number,
            outcome=record.outcome,
            status=record.http_status,
            error=record.error_kind,
            latency_ms=record.latency_ms,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
        )


def _first_deliberate(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap errors; surface the first one the CLI knows how to explain."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_deliberate(exc)
        if isinstance(exc, BatchrunnerError):
            return exc
    return group
