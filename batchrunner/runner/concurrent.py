"""The concurrent runner: claim pending items from the ledger, send them through a request
backend under the rate limits, judge each answer, and record every attempt.

Data flow: ledger (pending) -> feed -> workers -> backend -> dialect's verdict -> rule table ->
outcome -> writer -> ledger.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import anyio
import orjson
from anyio import CancelScope
from anyio.abc import TaskGroup

from batchrunner.backends.base import Reply, RequestBackend, TransportFailure
from batchrunner.demand import TokenDemand, TypicalOutput, token_demand
from batchrunner.dialects import Dialect, ServerLimits
from batchrunner.errors import BatchrunnerError
from batchrunner.failures import (
    FAIL,
    RETRY,
    STOP,
    SUCCEED,
    Verdict,
    backoff_delay,
    final_verdict,
    retries_invalid,
)
from batchrunner.ledger import ClaimedItem, Ledger
from batchrunner.ledger.models import CANCELLED, FAILED, PENDING
from batchrunner.ledger.records import utcnow
from batchrunner.ledger.runs import CANCEL_CHECK_S
from batchrunner.logs import ATTEMPTS, EVENTS, bind_run, log_attempt
from batchrunner.outcome import Outcome, Result, mendable
from batchrunner.prefixes import cacheable_tokens
from batchrunner.pricing import job_price_table
from batchrunner.runner.breaker import Breaker
from batchrunner.runner.budget import Budget, Reservation, worst_case_of
from batchrunner.runner.cache_keys import CacheKeys, KeyLease, refuses_cache_key
from batchrunner.runner.limits import PauseLog, Throttle
from batchrunner.runner.outcomes import CONCURRENT_EFFECTS, AnswerReader, abandoned_outcome
from batchrunner.runner.report import RunGauges, RunReport
from batchrunner.runner.writer import LedgerWriter
from batchrunner.settings import RunSettings
from batchrunner.structured import OutputFormat

HEARTBEAT_S = 10.0
OTHERS_POLL_S = 0.2  # how often a worker with nothing to claim looks at what others hold
CLAIM_PAGE = 500
# Workers start at this rate, not all in one loop pass (500 workers: over 0.1 s). A job meets the
# server's limits before it has learned them from its headers: against a 600 rpm limit with no
# --rpm, workers started at once drew 63 429s, started at this rate 31 (bench/limits.py); and
# their first answers come back spread out rather than in one burst.
WORKER_STARTS_PER_S = 5_000.0


class ConcurrentRunner:
    """Runs one job's pending items to the end, or until stopped."""

    def __init__(
        self,
        ledger: Ledger,
        job_id: int,
        settings: RunSettings,
        backend: RequestBackend,
        dialect: Dialect,
        on_flush: Callable[[list[Outcome]], None] | None = None,
        seed: int | None = None,
        shared: bool = False,
    ) -> None:
        self._ledger = ledger
        self._shared = shared  # a worker: other processes work on the same job
        self._claim_page = min(CLAIM_PAGE, 2 * settings.concurrency) if shared else CLAIM_PAGE
        self._job_id = job_id
        self._settings = settings
        self._backend = backend
        self._dialect = dialect
        self._throttle = Throttle(settings.rpm, settings.tpm)
        self._breaker = Breaker(settings.unreachable_wait)
        self._circuit_changed = anyio.Event()  # set when a probe's result is in, or on stop
        self._prices = job_price_table(settings)
        self._answers = AnswerReader(dialect, self._prices, batch=False)
        self._budget: Budget | None = None
        self._typical_output = TypicalOutput()
        # At most `concurrency` answers wait for the ledger besides the requests in flight: what
        # a kill can cost (sent again by the next run) stays within twice the concurrency.
        self._writer = LedgerWriter(ledger, on_flush, backlog=settings.concurrency)
        # Claimed items wait here for a worker: a plain deque, because a stream's per-item
        # checkpoints cost more than the rest of the hand-over.
        self._queue: deque[ClaimedItem] = deque()
        self._items_ready = anyio.Event()  # set when the feed adds items (or all are fed)
        self._hungry = anyio.Event()  # set when the queue runs low
        self._all_fed = False
        self._unfinished = 0  # items claimed by this run and not yet done with by a worker
        self._settled = anyio.Event()  # set when _unfinished drops to 0
        self._rng = random.Random(seed)
        self._stopping = anyio.Event()
        self._stop_reason: str | None = None
        self._run_id = ""
        self._cache_keys: CacheKeys | None = None  # set once the run has its id
        self._pauses = PauseLog()  # the run's pauses after 429s, for the ledger (report)
        # (url, model) or (url, None) -> the error one answer proved all its items would get
        self._proven_failures: dict[tuple[str, str | None], Result] = {}
        # item id -> (the item, its attempt's number, when it was sent): requests sent and not
        # yet answered, recorded as possibly billed if the run abandons them
        self._in_flight: dict[int, tuple[ClaimedItem, int, datetime]] = {}

    def gauges(self) -> RunGauges:
        """What this run is doing right now: its requests in flight, limits and pauses."""
        throttle, learned = self._throttle, self._throttle.learned
        return RunGauges(
            in_flight=len(self._in_flight),
            requests_per_minute=throttle.requests_per_minute,
            tokens_per_minute=throttle.tokens_per_minute,
            learned_requests=learned.limit_requests,
            learned_tokens=learned.limit_tokens,
            pauses=throttle.pauses,
            last_commit_s=self._writer.last_commit_s,
        )

    def stop(self, reason: str) -> None:
        """Send nothing more; in-flight requests finish and are recorded."""
        if not self._stopping.is_set():
            self._stop_reason = reason
            self._stopping.set()
            self._hungry.set()  # the feed and idle workers see the stop and return
            self._items_ready.set()
            self._settled.set()
            self._circuit_changed.set()

    async def run(self, handle_signals: bool = False) -> RunReport:
        """Run to the end or until stopped. With `handle_signals`, Ctrl-C and SIGTERM are this
        run's from its start until its items are released: the first stops it, the second
        abandons the requests in flight, and any later one waits for the ledger's last writes."""
        if not handle_signals:
            return await self._run(None)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            return await self._run(signals)

    async def _run(self, signals: AsyncIterator[int] | None) -> RunReport:
        settings = self._settings
        self._run_id = await anyio.to_thread.run_sync(
            functools.partial(
                self._ledger.start_run,
                self._job_id,
                settings.max_attempts,
                shared=self._shared,
                lease_s=settings.lease_s,
            )
        )
        bind_run(self._job_id, self._run_id)
        if settings.cache_aware:
            self._cache_keys = CacheKeys(settings.cache_key_rpm, namespace=self._run_id[:8])
        if await self._job_cancelled():
            self.stop("cancelled")  # claims nothing; its end cancels what dead runs held
        if settings.budget is not None:
            spent = (await anyio.to_thread.run_sync(self._ledger.summary, self._job_id)).cost_usd
            self._budget = Budget(settings.budget, spent or 0.0, self._prices)
        try:
            async with anyio.create_task_group() as background:
                if signals is not None:
                    background.start_soon(self._watch_signals, signals, background.cancel_scope)
                background.start_soon(self._heartbeat)
                background.start_soon(self._watch_for_cancel)
                if self._shared:
                    await self._join()  # Ctrl-C and a cancel already heard meanwhile
                async with anyio.create_task_group() as core:
                    core.start_soon(self._writer.run)
                    async with anyio.create_task_group() as pipeline:
                        pipeline.start_soon(self._feed)
                        await self._start_workers(pipeline)
                    self._writer.close()
                background.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first_deliberate(group) from None
        finally:
            failing = sys.exc_info()[1] is not None
            await self._writer.flush_remaining()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(BatchrunnerError):  # only shown: never the run's fate
                    await self._record_pauses(finished_only=False)
                await self._record_abandoned()
                state = await self._end_run(keep_first_error=failing)
        return RunReport(self._job_id, state, self._stop_reason if state != "completed" else None)

    async def _start_workers(self, pipeline: TaskGroup) -> None:
        """Start `concurrency` workers at WORKER_STARTS_PER_S, or fewer when the run has no
        more items for them."""
        started_at = anyio.current_time()
        for started in range(self._settings.concurrency):
            if self._stopping.is_set() or (self._all_fed and not self._queue):
                return
            due = started_at + started / WORKER_STARTS_PER_S
            if due > anyio.current_time():
                await anyio.sleep_until(due)
            pipeline.start_soon(self._work)

    async def _end_run(self, keep_first_error: bool) -> str:
        """Release this run's items. When the run is already failing (the ledger refused a
        write, say), a second refusal here must not hide the first one."""
        try:
            return await anyio.to_thread.run_sync(
                self._ledger.end_run, self._job_id, self._run_id, self._settings.lease_s
            )
        except BatchrunnerError:
            if keep_first_error:
                return "stopped"
            raise

    async def _record_abandoned(self) -> None:
        """The requests still in flight when the run was cut short (a second Ctrl-C): the
        server may have answered and billed them, so each is an attempt of unknown outcome,
        at its worst-case cost (an estimate) that the job's spend and budget count; their
        items go back to pending with the rest. A ledger that refuses this is a warning: the
        run's end, which gives its items back, must still come."""
        if not self._in_flight:
            return
        outcomes = [
            abandoned_outcome(
                self._job_id,
                self._run_id,
                item.id,
                item.custom_id,
                number,
                sent_at,
                worst_case_of(item.model, self._demand(item), self._prices),
            )
            for item, number, sent_at in self._in_flight.values()
        ]
        self._in_flight.clear()
        EVENTS.warning(
            "%d requests abandoned in flight: recorded as possibly billed, at their worst case",
            len(outcomes),
        )
        try:
            await anyio.to_thread.run_sync(self._ledger.record_abandoned, self._job_id, outcomes)
        except BatchrunnerError as exc:
            EVENTS.warning("the requests abandoned in flight were not recorded: %s", exc)

    async def _watch_signals(self, signals: AsyncIterator[int], scope: CancelScope) -> None:
        async for signum in signals:
            if not self._stopping.is_set():
                EVENTS.warning(
                    "stopping: waiting for the requests in flight "
                    "(press Ctrl-C again to abandon them)"
                )
                self.stop("interrupted" if signum == signal.SIGINT else "terminated")
            else:
                EVENTS.warning("abandoning the requests in flight")
                self._ledger.stop_waiting()  # nor wait any longer for a database away
                scope.cancel()

    async def _record_pauses(self, finished_only: bool) -> None:
        windows = self._pauses.take(finished_only)
        if windows:
            await anyio.to_thread.run_sync(
                self._ledger.record_pauses, self._job_id, self._run_id, windows
            )

    async def _job_cancelled(self) -> bool:
        state = await anyio.to_thread.run_sync(self._ledger.job_state, self._job_id)
        return state == CANCELLED

    async def _watch_for_cancel(self) -> None:
        """Stop within CANCEL_CHECK_S of the job being cancelled: nothing more is claimed or
        sent, the requests in flight finish and are recorded, and the end of the run cancels
        the items it held unsent."""
        while not self._stopping.is_set():
            await anyio.sleep(CANCEL_CHECK_S)
            if await self._job_cancelled():
                EVENTS.warning(
                    "job %s was cancelled: waiting for the requests in flight", self._job_id
                )
                self.stop("cancelled")

    async def _heartbeat(self) -> None:
        """Say this run is alive (and keep its pauses); a worker also takes back the items of
        dead workers and re-splits the job's limits among the live ones."""
        while True:
            await anyio.sleep(self._heartbeat_s)
            if await anyio.to_thread.run_sync(self._ledger.heartbeat, self._run_id):
                self._forget_queued()
            await self._record_pauses(finished_only=True)
            if self._shared:
                await self._share_the_job()

    def _forget_queued(self) -> None:
        """This run was taken for dead: the items it claimed and has not started went back to
        pending for the others, so it must not send them (their answers would change no
        result, and be paid twice)."""
        dropped = len(self._queue)
        self._queue.clear()
        self._unfinished -= dropped
        if not self._unfinished:
            self._settled.set()
        self._hungry.set()

    async def _join(self) -> None:
        """A joining worker waits one heartbeat, so the workers already running see it and
        shrink their share of the limits before it sends at its own."""
        await self._share_the_job()
        if self._throttle.requests_per_minute or self._throttle.tokens_per_minute:
            with anyio.move_on_after(self._heartbeat_s * 1.5):  # every other worker beat
                await self._stopping.wait()
            await self._share_the_job()

    @property
    def _heartbeat_s(self) -> float:
        return min(HEARTBEAT_S, self._settings.lease_s / 4)

    async def _share_the_job(self) -> None:
        lease = self._settings.lease_s
        live = await anyio.to_thread.run_sync(self._ledger.reclaim, self._job_id, lease)
        self._throttle.share_with(max(1, live))
        options, _ = await anyio.to_thread.run_sync(self._ledger.job_options, self._job_id)
        told = ServerLimits(options.get("server_rpm"), None, None, options.get("server_tpm"))
        self._throttle.observe(told)
        mine = self._throttle.learned
        if (mine.limit_requests, mine.limit_tokens) != (told.limit_requests, told.limit_tokens):
            learned = {"server_rpm": mine.limit_requests, "server_tpm": mine.limit_tokens}
            await anyio.to_thread.run_sync(self._ledger.update_job_options, self._job_id, learned)

    async def _feed(self) -> None:
        """Keep about `concurrency` claimed items queued, one ledger page at a time."""
        try:
            while not self._stopping.is_set():
                if len(self._queue) >= self._settings.concurrency:
                    self._hungry = anyio.Event()
                    await self._hungry.wait()
                    continue
                page = await anyio.to_thread.run_sync(
                    self._ledger.claim_pending, self._job_id, self._run_id, self._claim_page
                )
                if not page:
                    if await self._wait_for_deferred() or await self._wait_for_others():
                        continue
                    if not await self._wait_for_own():
                        return
                    continue
                self._unfinished += len(page)
                if self._cache_keys is not None:  # a group's requests close together in time
                    page.sort(key=_prefix_group)
                self._queue.extend(page)  # claimed but unsent items go back in end_run
                self._wake_workers()
        finally:
            self._all_fed = True
            self._wake_workers()

    def _wake_workers(self) -> None:
        ready, self._items_ready = self._items_ready, anyio.Event()
        ready.set()

    async def _wait_for_own(self) -> bool:
        """Nothing to claim, but this run's last items may still come back deferred (a long
        Retry-After hands an item back to pending): wait until the workers are done with them
        and their outcomes are committed, then look again; False when none were left."""
        if self._stopping.is_set():
            return False
        if not (self._unfinished or self._writer.uncommitted):
            # Nothing in hand, but the last of them may have been committed deferred after
            # the feed last looked for deferred items: look once more.
            wake = await anyio.to_thread.run_sync(self._ledger.next_not_before, self._job_id)
            return wake is not None and not self._stopping.is_set()
        if self._unfinished:
            self._settled = anyio.Event()
            await self._settled.wait()
        await self._writer.committed()
        return not self._stopping.is_set()

    async def _wait_for_deferred(self) -> bool:
        """Sleep until the earliest deferred item may go; False if there is none."""
        wake = await anyio.to_thread.run_sync(self._ledger.next_not_before, self._job_id)
        if wake is None:
            return False
        with anyio.move_on_after(max(0.01, (wake - utcnow()).total_seconds())):
            await self._stopping.wait()
        return not self._stopping.is_set()

    async def _wait_for_others(self) -> bool:
        """A worker with nothing to claim stays while other workers hold items (if one of them
        dies, its items come back to pending once its lease is over); False when none do."""
        if not self._shared:
            return False
        held = await self._held_by_others()
        if not held:
            return False
        # Look again often (one cheap count), so a worker leaves within moments of the last
        # item's commit; take back dead workers' items once a quarter lease.
        give_back_at = anyio.current_time() + self._settings.lease_s / 4
        while anyio.current_time() < give_back_at:
            with anyio.move_on_after(OTHERS_POLL_S):
                await self._stopping.wait()
            if self._stopping.is_set():
                return False
            now_held = await self._held_by_others()
            if now_held < held:  # finished, or handed back to pending: look for work again
                return True
        await self._share_the_job()
        return not self._stopping.is_set()

    async def _held_by_others(self) -> int:
        return await anyio.to_thread.run_sync(
            self._ledger.held_by_others, self._job_id, self._run_id
        )

    async def _work(self) -> None:
        queue = self._queue
        while not self._stopping.is_set():
            if queue:
                item = queue.popleft()
                if len(queue) < self._settings.concurrency and not self._hungry.is_set():
                    self._hungry.set()
                try:
                    await self._process(item)
                finally:
                    self._unfinished -= 1
                    if not self._unfinished:
                        self._settled.set()
            elif self._all_fed:
                return
            else:
                await self._items_ready.wait()

    async def _process(self, item: ClaimedItem) -> None:
        """Send one item until it succeeds, fails for good, or the job stops."""
        body = item.body.encode()
        attempt = item.attempts
        unreachable_tries = 0
        wanted = self._answers.wanted(item.url, item.body)  # a structured output to check
        # Invalid answers the item got before this run: none if it was never sent (else the
        # ledger is asked, once an invalid answer may be asked for again).
        invalid: int | None = 0 if attempt == item.attempts_floor else None
        proof = self._proven_failure(item)
        if proof is not None:
            await self._writer.write(self._unsent_failure(item, proof))
            return
        while True:
            if not await self._admitted():
                return
            probe = self._breaker.is_open  # admitted while open: this call is the one probe
            needs = self._demand(item) if self._needs_demand else None
            typical = self._typical_output.tokens if needs is not None else 0
            await self._throttle.acquire(
                needs.expected(typical) if needs and self._throttle.counts_tokens else 0
            )
            reservation = self._reserve(item, needs)
            lease = await self._cache_lease(item, body)
            if self._stopping.is_set():
                if lease is not None and self._cache_keys is not None:
                    self._cache_keys.answered(lease, warmed=False)
                self._unspent(reservation)
                return
            attempt += 1
            started = utcnow()
            answer = await self._post(item, body, lease, attempt, started)
            verdict = self._judge(answer)
            if self._breaker.troubled or isinstance(answer, TransportFailure):
                unreachable_tries = self._watch_the_circuit(verdict, unreachable_tries, probe)
                if unreachable_tries and await self._again_unsent(reservation, unreachable_tries):
                    attempt -= 1  # nothing was sent: no attempt, nothing spent
                    continue
            # (after the breaker heard of it: a probe refused for its key is still an answer)
            if lease is not None and lease.key.name and refuses_cache_key(verdict):
                self._stop_spreading_keys(verdict)
                self._unspent(reservation)
                attempt -= 1  # refused for the key we added: the item's request goes again
                continue
            used = attempt - item.attempts_floor  # a retried item's earlier ones do not count
            verdict = final_verdict(verdict, used, self._settings.max_attempts)
            outcome = self._outcome(item, attempt, started, answer, verdict, wanted)
            again = False  # an invalid structured answer asked for again (--retry-invalid)
            if self._settings.retry_invalid and mendable(outcome.result):
                invalid = await self._invalid_before(item) if invalid is None else invalid
                limits = (self._settings.retry_invalid, used, self._settings.max_attempts)
                if retries_invalid(invalid, *limits):
                    again, invalid = True, invalid + 1
                    outcome.state, outcome.attempt_outcome = None, "retry"
            self._account(needs, typical, reservation, outcome, verdict)
            if ATTEMPTS.isEnabledFor(logging.INFO):
                self._log(item, outcome)
            if verdict.action == STOP:
                self.stop(f"{verdict.kind}: {verdict.message}")
            if verdict.action == FAIL and verdict.rule is not None and verdict.rule.fails_alike:
                await self._fail_alike(item, verdict.rule.fails_alike, outcome)
            if verdict.action == RETRY and self._defers(verdict):
                outcome.state = PENDING  # back to the ledger until the server's time
                outcome.not_before = utcnow() + timedelta(seconds=verdict.retry_after or 0)
            await self._writer.write(outcome)
            if again:
                continue
            if verdict.action != RETRY or outcome.state == PENDING:
                return
            with anyio.move_on_after(backoff_delay(used, self._rng, verdict.retry_after)):
                await self._stopping.wait()
            if self._stopping.is_set():
                return

    async def _cache_lease(self, item: ClaimedItem, body: bytes) -> KeyLease | None:
        """The prompt_cache_key (and the wait for its group's opener) of a request whose head
        the provider can cache; None for the others, which go as they are."""
        keys = self._cache_keys
        if keys is None or item.prefix_group is None or not cacheable_tokens(item.prefix_tokens):
            return None
        return await keys.lease(item.prefix_group, body)

    async def _post(
        self,
        item: ClaimedItem,
        body: bytes,
        lease: KeyLease | None,
        attempt: int,
        started: datetime,
    ) -> Reply | TransportFailure:
        """Send one request (with its cache key, if it has one). Until its answer is in it is
        in flight: abandoned there (a second Ctrl-C), it is recorded as possibly billed."""
        self._in_flight[item.id] = (item, attempt, started)
        sent = lease.body(body) if lease is not None else body
        answer: Reply | TransportFailure | None = None
        try:
            answer = await self._backend.post(item.url, sent, item.custom_id, item.model)
            del self._in_flight[item.id]
            return answer
        finally:  # the opener's waiters must hear of it whatever happened
            if lease is not None and self._cache_keys is not None:
                warmed = isinstance(answer, Reply) and answer.status == 200
                self._cache_keys.answered(lease, warmed)

    def _unspent(self, reservation: Reservation | None) -> None:
        """The budget gets back what a request that never went (or was refused unread, for
        the key we added) had reserved."""
        if reservation is not None and self._budget is not None:
            self._budget.settle(reservation, None, billed=False)

    def _stop_spreading_keys(self, verdict: Verdict) -> None:
        if self._cache_keys is not None and self._cache_keys.spreading:
            self._cache_keys.stop_spreading()
            EVENTS.warning(
                "the server refuses prompt_cache_key (%s): requests go without the keys "
                "cache-aware sending adds (--no-cache-aware says so from the start)",
                verdict.message,
            )

    async def _invalid_before(self, item: ClaimedItem) -> int:
        """The invalid structured answers an item sent before this run got (its attempts)."""
        floors = {item.id: item.attempts_floor}
        counts = await anyio.to_thread.run_sync(self._ledger.invalid_answers, floors)
        return counts.get(item.id, 0)

    def _proven_failure(self, item: ClaimedItem) -> Result | None:
        """The error an earlier answer proved this item's model or endpoint gets, if any."""
        alike = self._proven_failures
        return alike.get((item.url, item.model)) or alike.get((item.url, None))

    async def _fail_alike(self, item: ClaimedItem, scope: str, outcome: Outcome) -> None:
        """One answer proved that every item of this model (or endpoint) fails alike: fail
        the pending ones unsent, and this run's queued ones as they come up; the rest of the
        job goes on."""
        key = (item.url, item.model if scope == "model" else None)
        if key in self._proven_failures:
            return
        proof = outcome.result
        unsent = Result(
            error_kind=proof.error_kind,
            error_code=proof.error_code,
            error_message=f"not sent: {item.custom_id} got {proof.http_status}: "
            f"{proof.error_message}",
        )
        self._proven_failures[key] = unsent
        await anyio.to_thread.run_sync(
            self._ledger.fail_pending_alike, self._job_id, key[0], key[1], unsent
        )
        what = f"model {item.model} at {item.url}" if key[1] is not None else item.url
        EVENTS.warning(
            "%s is missing here (%s: %s): its items fail unsent, the rest go on",
            what,
            proof.error_kind,
            proof.error_message,
        )

    def _unsent_failure(self, item: ClaimedItem, proof: Result) -> Outcome:
        """A queued item whose model or endpoint was proven missing: failed, never sent."""
        now = utcnow()
        outcome = Outcome(
            job_id=self._job_id,
            custom_id=item.custom_id,
            state=FAILED,
            attempt_outcome="failed",
            started_at=now,
            ended_at=now,
            run_id=self._run_id,
            item_id=item.id,
            number=item.attempts,
            is_attempt=False,
            model=item.model,
        )
        outcome.result = replace(proof)
        return outcome

    async def _admitted(self) -> bool:
        """Wait while the endpoint is unreachable (one worker at a time probes it); stop the
        job when it has been for `unreachable_wait`. False: the job is stopping."""
        breaker = self._breaker
        while not self._stopping.is_set():
            if breaker.may_call():
                return True
            if breaker.gave_up():
                self.stop(breaker.stop_reason())
                return False
            changed = self._circuit_changed
            wait = min(breaker.seconds_to_next_probe(), breaker.seconds_to_give_up())
            with anyio.move_on_after(max(wait, 0.01)):
                await changed.wait()
        return False

    def _watch_the_circuit(self, verdict: Verdict, unreachable_tries: int, probe: bool) -> int:
        """Tell the breaker how the call went (and the workers waiting on it, when that was
        the probe); the item's count of calls that reached nothing in a row (0 once one
        reached the server)."""
        rule = verdict.rule
        breaker = self._breaker
        if rule is not None and rule.breaks_circuit:
            if breaker.unreachable(verdict.message or "unreachable", probe=probe):
                EVENTS.warning(
                    "%s; waiting up to %.0fs for it (--unreachable-wait), probing",
                    verdict.message,
                    breaker.give_up_s,
                )
            if probe:
                self._circuit_moved()  # the next probe's time is set: the waiters may see it
            return unreachable_tries + 1
        if breaker.answered():
            EVENTS.warning("the endpoint answers again: going on")
            self._circuit_moved()
        return 0

    def _circuit_moved(self) -> None:
        changed, self._circuit_changed = self._circuit_changed, anyio.Event()
        changed.set()

    async def _again_unsent(self, reservation: Reservation | None, tries: int) -> bool:
        """After a call that reached nothing: True to send the item again as if it had not
        been (no attempt, nothing spent). While the circuit is closed (the server answers
        others) an item gets `max_attempts` such tries, then they count as attempts."""
        if not self._breaker.is_open and tries > self._settings.max_attempts:
            return False
        self._unspent(reservation)
        if not self._breaker.is_open:
            with anyio.move_on_after(backoff_delay(tries, self._rng)):
                await self._stopping.wait()
        return True

    def _defers(self, verdict: Verdict) -> bool:
        """A wait longer than `max_retry_wait` is the ledger's to keep, not a worker's."""
        return (verdict.retry_after or 0.0) > self._settings.max_retry_wait

    @property
    def _needs_demand(self) -> bool:
        return self._budget is not None or self._throttle.counts_tokens

    def _demand(self, item: ClaimedItem) -> TokenDemand:
        return token_demand(item.url, orjson.loads(item.body))

    def _reserve(self, item: ClaimedItem, needs: TokenDemand | None) -> Reservation | None:
        """Hold the request's worst-case cost; stop the job when the budget cannot."""
        if self._budget is None or needs is None:
            return None
        worst = self._budget.worst_case(item.model, needs)
        reservation = self._budget.reserve(worst)
        if reservation is None:
            self.stop(f"budget: {self._budget.describe()}; the next request could pass the limit")
        return reservation

    def _account(
        self,
        needs: TokenDemand | None,
        typical: int,
        reservation: Reservation | None,
        outcome: Outcome,
        verdict: Verdict,
    ) -> None:
        """Tell the throttle and the budget what the request really used."""
        result = outcome.result
        if result.output_tokens is not None:
            self._typical_output.observe(result.output_tokens, needs.answers if needs else 1)
            if needs is not None and not needs.capped:
                actual = (result.input_tokens or 0) + result.output_tokens
                self._throttle.settle(needs.expected(typical), actual)
        if reservation is not None and self._budget is not None:
            rule = verdict.rule
            billed = rule is not None and rule.possibly_billed
            self._budget.settle(reservation, result.cost_usd, billed=billed)

    def _judge(self, answer: Reply | TransportFailure) -> Verdict:
        """The verdict on one answer; the throttle learns from its headers and pauses every
        worker where the rule table says."""
        if not isinstance(answer, Reply):
            return Verdict.failure(answer.kind, None, answer.message)
        if answer.limits is not None:
            before = self._throttle.requests_per_minute, self._throttle.tokens_per_minute
            self._throttle.observe(answer.limits)
            after = self._throttle.requests_per_minute, self._throttle.tokens_per_minute
            if after != before:
                EVENTS.info("server limits: %s", self._throttle.describe())
        verdict = self._dialect.judge_reply(answer.status, answer.body, answer.retry_after)
        rule = verdict.rule
        if rule is not None and rule.pauses_all:
            self._throttle.rate_limited(verdict.retry_after)  # the rule's minimum when None
            self._pauses.paused(self._throttle.paused_for)
        return verdict

    def _outcome(
        self,
        item: ClaimedItem,
        attempt: int,
        started: datetime,
        answer: Reply | TransportFailure,
        verdict: Verdict,
        wanted: OutputFormat | None = None,
    ) -> Outcome:
        reply = answer if isinstance(answer, Reply) else None
        effect = CONCURRENT_EFFECTS[verdict.action]
        outcome = Outcome(
            job_id=self._job_id,
            custom_id=item.custom_id,
            state=effect.state,
            attempt_outcome=effect.attempt,
            started_at=started,
            ended_at=utcnow(),
            run_id=self._run_id,
            item_id=item.id,
            number=attempt,
            model=item.model,
        )
        result = outcome.result
        result.http_status = reply.status if reply else None
        result.latency_ms = round(answer.latency_ms, 2)
        # Only a success keeps its body, and only a body that parsed as JSON is certain to be
        # text: a gateway's error page may be in any encoding.
        response = reply.body.decode() if reply and verdict.action == SUCCEED else None
        self._answers.fill(result, verdict, item.model, response, wanted)
        return outcome

    def _log(self, item: ClaimedItem, outcome: Outcome) -> None:
        result = outcome.result
        log_attempt(
            job=self._job_id,
            custom_id=item.custom_id,
            attempt=outcome.number,
            outcome=outcome.attempt_outcome,
            status=result.http_status,
            error=result.error_kind,
            latency_ms=result.latency_ms,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
        )


def _prefix_group(item: ClaimedItem) -> str:
    return item.prefix_group or ""


def _first_deliberate(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap errors; surface the first one the CLI knows how to explain."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_deliberate(exc)
        if isinstance(exc, BatchrunnerError):
            return exc
    return group
