"""Batch API mode: the ledger's state machine for batches. Pack pending items into batches,
submit them, poll, and reconcile, through any `BatchBackend`; no SDK is seen here.

Data flow: ledger (pending) -> plan files -> record the batch (intent) -> write and upload its
input file -> create the remote batch -> poll -> read the output and error files -> each line's
verdict (the dialect) and rule (failures.py) -> outcome -> its item -> leftovers back to pending
-> pack again.

Each step is recorded before the next begins, so a kill at any moment is resumed without
sending anything twice: a batch recorded as uploaded but not created is looked up by the token
in its metadata before a new one is created.

A batch's files (its input, output and error files) are deleted from the API last, once its
results are in the ledger (unless `keep_files`), and the batch then stops naming them: a kill
before that loses nothing, and the files it left are deleted by the next run. A delete that
fails is logged and tried again by the next run; it fails nothing.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from batchrunner.backends.base import BatchBackend, BatchProblem, RemoteBatch
from batchrunner.demand import token_demand
from batchrunner.dialects import BatchLine, Dialect
from batchrunner.errors import BackendError
from batchrunner.failures import RULES, SUCCEED, ErrorKind, Verdict
from batchrunner.ledger import BatchRow, Ledger
from batchrunner.ledger.batches import ABANDONED, PACKING, SETTLED, SUBMITTED, UPLOADED
from batchrunner.ledger.models import CANCELLED, FAILED, PENDING, SUCCEEDED
from batchrunner.ledger.records import utcnow
from batchrunner.ledger.runs import CANCEL_CHECK_S
from batchrunner.logs import EVENTS, bind_run
from batchrunner.outcome import Outcome
from batchrunner.prefixes import cacheable_tokens
from batchrunner.pricing import job_price_table
from batchrunner.runner.batch_plan import (
    Candidate,
    PlanLimits,
    PlannedFile,
    plan_files,
    within_token_cap,
)
from batchrunner.runner.budget import Budget
from batchrunner.runner.cache_keys import ADDED_KEY_BYTES, BatchKeys, refuses_cache_key
from batchrunner.runner.outcomes import BATCH_EFFECTS, AnswerReader
from batchrunner.runner.report import RunReport
from batchrunner.settings import RunSettings
from batchrunner.structured import OutputFormat

JOB_KEY = "batchrunner_job"
BATCH_KEY = "batchrunner_batch"
SETTLE_CHUNK = 1000
CANCELLABLE = (None, "validating", "in_progress")  # remote statuses a cancel still changes


@dataclass
class BatchProgress:
    """What the progress display shows: items settled, and the live batches' own counts."""

    total: int
    settled: int
    in_flight_done: int = 0
    states: dict[str, int] = field(default_factory=dict)


@dataclass
class CallTrouble:
    """Since when the Files/Batch API calls have failed with none going through between:
    what bounds a run's retries of an endpoint that is down or keeps failing."""

    since: float | None = None
    last_kind: str = ""
    last_message: str = ""
    clock: Callable[[], float] = time.monotonic

    def failed(self, exc: BackendError) -> None:
        if self.since is None:
            self.since = self.clock()
        self.last_kind, self.last_message = exc.kind.value, exc.message

    def went_through(self) -> None:
        self.since = None

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failing_for(self) -> float:
        """Seconds since the first failure of the streak; 0.0 when there is none."""
        return 0.0 if self.since is None else self.clock() - self.since


class BatchRunner:
    def __init__(
        self,
        ledger: Ledger,
        job_id: int,
        settings: RunSettings,
        backend: BatchBackend,
        dialect: Dialect,
        on_progress: Callable[[BatchProgress], None] | None = None,
        on_settled: Callable[[list[Outcome]], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._on_settled = on_settled  # the outcomes of settled lines, as written
        self._job_id = job_id
        self._settings = settings
        # Whether batches of this job carry keys batchrunner added: a refusal of one is ours
        self._added_keys = settings.cache_aware
        self._backend = backend
        self._dialect = dialect
        self._on_progress = on_progress
        self._limits = PlanLimits(
            max_requests=settings.batch_max_requests,  # the dialect's limit, unless told
            max_bytes=dialect.BATCH_MAX_BYTES,
            max_tokens=settings.batch_token_limit,
            max_inputs=dialect.BATCH_MAX_INPUTS,
        )
        self._prices = job_price_table(settings)
        self._answers = AnswerReader(dialect, self._prices, batch=True)
        self._held_until: dict[str, float] = {}  # model -> monotonic time (token cap reached)
        self._stop_reason: str | None = None
        self._cancelled = False
        self._packed_once = False
        self._over_budget: str | None = None  # why no more batches go out
        self._worst_of: dict[int, float] = {}  # batch id -> its worst-case cost (budget)
        self._calls = CallTrouble()  # Files/Batch API calls failing, with none going through

    # -- the loop --------------------------------------------------------------------------------

    def run(self, wait: bool, poll_s: float = 5.0, poll_max_s: float = 60.0) -> RunReport:
        """One pass (submit what is pending, settle what has ended), or passes until done."""
        self._cancelled = self._ledger.job_state(self._job_id) == CANCELLED
        run_id = self._ledger.start_run(self._job_id, self._settings.max_attempts)
        bind_run(self._job_id, run_id)
        delay = poll_s
        try:
            while True:
                self._ledger.heartbeat(run_id)
                noticed = self._notice_cancel()
                self._submit_pending()
                changed = self._poll() or noticed
                live = self._ledger.batches_of(self._job_id)
                repacking = self._settings.finish != "concurrent" and not self._cancelled
                repacking = repacking and not self._over_budget
                done = not live and not (repacking and self._ledger.has_pending(self._job_id))
                if not self._stop_reason:
                    self._stop_reason = self._gave_up()
                if not wait and not self._stop_reason and self._calls.failing:
                    self._stop_reason = f"{self._calls.last_kind}: {self._calls.last_message}"
                if self._stop_reason or not wait or done:
                    break
                delay = poll_s if changed else min(delay * 1.5, poll_max_s)
                self._wait_for_next_poll(delay)
            if not self._stop_reason and not self._calls.failing:
                self._delete_files_left()
        finally:
            if self._stop_reason:
                self._give_back_unsent()
            state = self._ledger.end_run(self._job_id, run_id)
            if self._cancelled:
                self._ledger.update_job_state(self._job_id, CANCELLED)
        if self._over_budget and state != "completed" and not self._stop_reason:
            self._stop_reason = self._over_budget
        if self._stop_reason:
            return RunReport(
                self._job_id, "stopped" if state != "completed" else state, self._stop_reason
            )
        if self._ledger.batches_of(self._job_id, (SUBMITTED,)):
            if not self._cancelled:
                self._ledger.update_job_state(self._job_id, "running")  # remote batches go on
            state = "submitted"
        return RunReport(self._job_id, state, self._stop_reason)

    def cancel(self) -> int:
        """Cancel the remote batches and the pending items; what finished stays. A batch the
        API would not cancel does not keep the others or the pending items from it: the
        refusals are raised together at the end (the job stays cancelled; cancel again)."""
        self._cancelled = True
        self._ledger.update_job_state(self._job_id, CANCELLED)
        refused: list[BackendError] = []
        for batch in self._ledger.batches_of(self._job_id):
            try:
                self._cancel_remote(batch)
            except BackendError as exc:
                refused.append(exc)
        count = self._ledger.cancel_pending(self._job_id)
        if refused:
            first = refused[0]
            raise BackendError(
                first.kind,
                f"cancelled {count:,} pending items, but {len(refused)} remote batch(es) "
                f"could not be cancelled: {first.message}",
                first.code,
                first.status,
            )
        return count

    def _notice_cancel(self) -> bool:
        """The job was cancelled (`batchrunner cancel`, from any process) while this run works
        on it: pack nothing more, cancel the batches no one has cancelled yet (a simulated
        job's live only here; one created while `cancel` ran), cancel the pending items, and
        go on settling what the batches return. True the moment it notices."""
        if self._cancelled or self._ledger.job_state(self._job_id) != CANCELLED:
            return False
        self._cancelled = True
        EVENTS.warning("job %s was cancelled: cancelling its batches", self._job_id)
        for batch in self._ledger.batches_of(self._job_id):
            if batch.state == SUBMITTED and batch.remote_status not in CANCELLABLE:
                continue  # cancelling already, or ended
            try:
                self._cancel_remote(batch)
            except BackendError as exc:
                EVENTS.warning("batch %s not cancelled: %s", batch.remote_id, exc.message)
        self._ledger.cancel_pending(self._job_id)
        return True

    def _wait_for_next_poll(self, seconds: float) -> None:
        """Sleep until the next poll, or until the job is seen cancelled."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, CANCEL_CHECK_S))
            if not self._cancelled and self._ledger.job_state(self._job_id) == CANCELLED:
                return

    def _cancel_remote(self, batch: BatchRow) -> None:
        remote_id = batch.remote_id
        if remote_id is None and batch.state == UPLOADED:
            found = self._backend.find(BATCH_KEY, batch.token)  # created before a kill?
            if found is not None:
                self._record_created(batch.id, found)
                remote_id = found.id
        if remote_id:
            remote = self._backend.cancel(remote_id)
            self._ledger.update_batch(batch.id, remote_status=remote.status)
        else:  # never created: nothing remote to wait for
            self._ledger.release_batch(batch.id, ABANDONED, leftover=CANCELLED)

    # -- packing and submitting ------------------------------------------------------------------

    def _submit_pending(self) -> None:
        for batch in self._ledger.batches_of(self._job_id, (PACKING, UPLOADED)):
            self._send(batch.id, batch.token, batch.endpoint, batch.state, batch.input_file_id)
            if self._stop_reason:
                return
        if self._over_budget or self._cancelled:
            return  # nothing new for a cancelled job, or past the budget
        if self._packed_once and self._settings.finish == "concurrent":
            return  # expired leftovers are finished concurrently, not repacked
        self._packed_once = True
        self._ledger.fail_exhausted(self._job_id, self._settings.max_attempts)
        enqueued = self._ledger.enqueued_tokens(self._job_id)
        budget = self._batch_budget()
        for planned in plan_files(self._candidates(budget), self._limits):
            if self._held(planned, enqueued):
                continue
            if budget is not None and budget.reserve(planned.worst_usd) is None:
                self._over_budget = f"budget: {budget.describe()}; the next batch could pass it"
                return
            token = str(uuid.uuid4())
            batch_id, assigned = self._ledger.open_batch(
                self._job_id, token, planned.url, planned.model, planned.item_ids, planned.tokens
            )
            if not assigned:
                self._ledger.release_batch(batch_id, ABANDONED)
                continue
            enqueued[planned.model] = enqueued.get(planned.model, 0) + planned.tokens
            self._worst_of[batch_id] = planned.worst_usd
            self._send(batch_id, token, planned.url, PACKING, None)
            if self._stop_reason:
                return

    def _held(self, planned: PlannedFile, enqueued: dict[str, int]) -> bool:
        """Hold a file back while the model's unfinished batches fill the token cap."""
        if time.monotonic() < self._held_until.get(planned.model, 0.0):
            return True
        return not within_token_cap(enqueued.get(planned.model, 0), planned, self._limits)

    def _candidates(self, budget: Budget | None) -> Iterator[Candidate]:
        counting = self._limits.max_tokens is not None or budget is not None
        line_size, inputs = self._dialect.batch_line_size, self._dialect.batch_inputs
        for row in self._ledger.iter_items(self._job_id, states=(PENDING,)):
            demand = token_demand(row.url, orjson.loads(row.body)) if counting else None
            size = line_size(row.custom_id, row.url, row.body)
            if self._settings.cache_aware and cacheable_tokens(row.prefix_tokens):
                size += ADDED_KEY_BYTES
            worst = 0.0
            if budget is not None and demand is not None:
                worst = budget.worst_case(row.model, demand)
            tokens = demand.prompt if demand is not None else 0
            counted = inputs(row.url, row.body)
            yield Candidate(row.id, row.url, row.model, size, tokens, worst, counted)

    def _batch_budget(self) -> Budget | None:
        """The budget as it stands: what was spent, plus the worst case of every batch still
        out (the budget bounds what the submitted batches could cost)."""
        limit = self._settings.budget
        if limit is None:
            return None
        spent = self._ledger.summary(self._job_id).cost_usd or 0.0
        budget = Budget(limit, spent, self._prices, batch=True)
        for batch in self._ledger.batches_of(self._job_id):
            if batch.id not in self._worst_of:  # opened by an earlier process: count it once
                self._worst_of[batch.id] = self._worst_case(batch, budget)
            budget.hold(self._worst_of[batch.id])
        return budget

    def _worst_case(self, batch: BatchRow, budget: Budget) -> float:
        total = 0.0
        for row in self._ledger.batch_items(batch.id):
            total += budget.worst_case(batch.model, token_demand(row.url, orjson.loads(row.body)))
        return total

    def _send(
        self, batch_id: int, token: str, endpoint: str, state: str, input_file_id: str | None
    ) -> None:
        """Upload (if not yet) and create (if not yet) one recorded batch."""
        try:
            if state == PACKING or input_file_id is None:
                input_file_id = self._upload(batch_id)
                self._ledger.update_batch(batch_id, state=UPLOADED, input_file_id=input_file_id)
            else:  # uploaded before a kill: it may have been created too
                found = self._backend.find(BATCH_KEY, token)
                if found is not None:
                    self._record_created(batch_id, found)
                    return
            metadata = {JOB_KEY: str(self._job_id), BATCH_KEY: token}
            try:
                created = self._backend.create(input_file_id, endpoint, metadata)
            except BackendError as exc:
                if exc.status is not None:  # the API answered: it refused
                    raise
                found = self._backend.find(BATCH_KEY, token)  # the answer was lost, not the batch?
                if found is None:
                    raise
                created = found
            self._record_created(batch_id, created)
        except BackendError as exc:
            self._refused(batch_id, exc)

    def _refused(self, batch_id: int, exc: BackendError) -> None:
        """A call for one batch that failed, as the rule table says: stop the job, give the
        batch up (refused for good: too many lines, too big; its items go back to pending and
        the job stops, since every later batch would be refused alike), or try again on the
        next pass."""
        if self._stops(exc):
            return
        if not RULES[exc.kind].retry:
            self._ledger.release_batch(batch_id, ABANDONED)
            self._stop_reason = f"batch refused by the API: {exc.message}"
        else:
            self._call_failed(f"batch {batch_id} not submitted", exc)

    def _stops(self, exc: BackendError) -> bool:
        """Whether a failed call stops the job: the rule table's word (every later call would
        fail alike: a bad key, no quota), or a Files/Batch API address the server does not
        have (a 404 to the Batch API itself proves every batch would meet it)."""
        rule = RULES[exc.kind]
        if rule.stops_job or rule.fails_alike:
            self._stop_reason = f"{exc.kind}: {exc.message}"
            return True
        return False

    def _call_failed(self, doing: str, exc: BackendError) -> None:
        """A call that may go better next pass; the job stops when none has gone well for
        `unreachable_wait` (an endpoint that is down, a server that keeps failing)."""
        EVENTS.warning("%s (will retry): %s", doing, exc.message)
        self._calls.failed(exc)

    def _gave_up(self) -> str | None:
        """Why the run stops now, if it does: no call has gone well for too long."""
        trouble = self._calls
        if not trouble.failing or trouble.failing_for() < self._settings.unreachable_wait:
            return None
        return (
            f"{trouble.last_kind}: no Files/Batch API call went through for "
            f"{self._settings.unreachable_wait:.0f}s: {trouble.last_message}"
        )

    def _give_back_unsent(self) -> None:
        """At a stop: the batches never created give their items back to pending. An uploaded
        one only when the API says no batch has its token (a create whose answer was lost may
        have made one); one that cannot be looked up stays, for the next run to look again."""
        for batch in self._ledger.batches_of(self._job_id, (PACKING, UPLOADED)):
            if batch.state == UPLOADED:
                try:
                    found = self._backend.find(BATCH_KEY, batch.token)
                except BackendError:
                    continue
                if found is not None:
                    self._record_created(batch.id, found)
                    continue
            self._ledger.release_batch(batch.id, ABANDONED)

    def _record_created(self, batch_id: int, remote: RemoteBatch) -> None:
        self._calls.went_through()
        self._ledger.update_batch(
            batch_id, state=SUBMITTED, remote_id=remote.id, remote_status=remote.status
        )

    def _upload(self, batch_id: int) -> str:
        with tempfile.TemporaryDirectory(prefix="batchrunner-") as folder:
            path = Path(folder) / f"job{self._job_id}-batch{batch_id}.jsonl"
            keys = BatchKeys(self._settings.cache_key_rpm, batch_id)
            with path.open("wb") as out:
                for row in self._ledger.batch_items(batch_id):
                    body = row.body
                    if self._settings.cache_aware:
                        body = keys.body(body, row.prefix_group, row.prefix_tokens)
                    out.write(self._dialect.batch_line(row.custom_id, row.url, body))
            return self._backend.upload(path)

    # -- polling and reconciling -----------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the recorded state of the submitted batches up to date (for `status`),
        without settling any: only `run` writes results."""
        for batch in self._ledger.batches_of(self._job_id, (SUBMITTED,)):
            if batch.remote_id is None:
                continue
            remote = self._backend.retrieve(batch.remote_id)
            self._ledger.update_batch(
                batch.id,
                remote_status=remote.status,
                completed=remote.completed,
                failed=remote.failed,
            )

    def _poll(self) -> bool:
        """Refresh every submitted batch; settle those that ended. True if anything moved."""
        changed = False
        progress = BatchProgress(total=0, settled=0)
        for batch in self._ledger.batches_of(self._job_id, (SUBMITTED,)):
            if batch.remote_id is None:
                continue
            try:
                remote = self._backend.retrieve(batch.remote_id)
            except BackendError as exc:
                if self._stops(exc):
                    return changed
                self._call_failed(f"could not poll batch {batch.remote_id}", exc)
                continue
            self._calls.went_through()
            progress.states[remote.status] = progress.states.get(remote.status, 0) + 1
            if (remote.status, remote.completed, remote.failed) != (
                batch.remote_status,
                batch.completed,
                batch.failed,
            ):
                changed = True
                self._ledger.update_batch(
                    batch.id,
                    remote_status=remote.status,
                    completed=remote.completed,
                    failed=remote.failed,
                    output_file_id=remote.output_file_id,
                    error_file_id=remote.error_file_id,
                )
            if remote.terminal:
                try:
                    self._settle(batch, remote)
                except BackendError as exc:  # its files could not be read: the next poll goes on
                    if self._stops(exc):
                        return changed
                    self._call_failed(f"batch {batch.remote_id} not settled yet", exc)
                    continue
                changed = True
            else:
                progress.in_flight_done += remote.completed + remote.failed
        self._report(progress)
        return changed

    def _report(self, progress: BatchProgress) -> None:
        if self._on_progress is None:
            return
        summary = self._ledger.summary(self._job_id)
        progress.total = summary.item_count
        progress.settled = sum(
            summary.counts.get(state, 0) for state in (SUCCEEDED, FAILED, CANCELLED)
        )
        self._on_progress(progress)

    def _settle(self, batch: BatchRow, remote: RemoteBatch) -> None:
        leftover = CANCELLED if self._cancelled else PENDING
        files = (batch.input_file_id, remote.output_file_id, remote.error_file_id)
        if remote.status == "failed":
            self._settle_failed(batch, remote.problems, leftover)
            self._delete_files(batch.id, files)
            return
        with tempfile.TemporaryDirectory(prefix="batchrunner-") as folder:
            for file_id in (remote.output_file_id, remote.error_file_id):
                if file_id:
                    self._settle_file(batch, file_id, Path(folder), leftover)
        usage = orjson.dumps(remote.usage).decode() if remote.usage else None
        returned = self._ledger.release_batch(batch.id, SETTLED, leftover=leftover)
        self._ledger.update_batch(batch.id, usage=usage)
        EVENTS.info("batch %s %s: %d back to %s", remote.id, remote.status, returned, leftover)
        self._delete_files(batch.id, files)

    def _delete_files(self, batch_id: int, file_ids: tuple[str | None, ...]) -> None:
        """Delete an ended batch's files from the API, its results being in the ledger; each
        one deleted is forgotten by the batch. A delete that fails stays for the next run."""
        if self._settings.keep_files:
            return
        for file_id in dict.fromkeys(f for f in file_ids if f):
            try:
                self._backend.delete_file(file_id)
            except BackendError as exc:
                EVENTS.warning(
                    "file %s of batch %s not deleted (the next run tries again): %s",
                    file_id,
                    batch_id,
                    exc.message,
                )
                continue
            self._ledger.forget_batch_file(batch_id, file_id)

    def _delete_files_left(self) -> None:
        """The files of ended batches that are still there: left by a kill just after their
        batch was settled, by a delete that failed, or by a batch given up after its upload."""
        if self._settings.keep_files:
            return
        for batch in self._ledger.batches_of(self._job_id, (SETTLED, ABANDONED)):
            self._delete_files(
                batch.id, (batch.input_file_id, batch.output_file_id, batch.error_file_id)
            )

    def _settle_file(self, batch: BatchRow, file_id: str, scratch: Path, leftover: str) -> None:
        chunk: list[BatchLine] = []
        for raw in self._backend.lines(file_id, scratch):
            line = self._dialect.read_batch_line(raw)
            if line is None:
                continue
            chunk.append(line)
            if len(chunk) >= SETTLE_CHUNK:
                self._settle_answers(batch, chunk, leftover)
                chunk = []
        self._settle_answers(batch, chunk, leftover)

    def _settle_answers(self, batch: BatchRow, chunk: list[BatchLine], leftover: str) -> None:
        """Settle a chunk of output lines; an answer whose request asked for a structured
        output is checked against it (the requests are read from the ledger, those that may
        ask for one only)."""
        answered = [line.custom_id for line in chunk if line.verdict.action == SUCCEED]
        requests = self._ledger.structured_requests(batch.id, answered)
        outcomes = []
        for line in chunk:
            request = requests.get(line.custom_id)
            wanted = self._answers.wanted(*request) if request is not None else None
            verdict = line.verdict
            if self._added_keys and refuses_cache_key(verdict):
                verdict = self._key_refused(verdict)
            outcomes.append(
                self._outcome(
                    batch,
                    line.custom_id,
                    verdict,
                    line.http_status,
                    line.body,
                    leftover,
                    wanted,
                )
            )
        self._settle_lines(batch, outcomes)

    def _key_refused(self, verdict: Verdict) -> Verdict:
        """The Batch API refused the prompt_cache_key batchrunner added: the line proves
        nothing about its item, which goes to the next batch (not an attempt); no key is added
        from now on, for the rest of the job (kept with it)."""
        if self._settings.cache_aware:
            self._settings = replace(self._settings, cache_aware=False)
            self._ledger.update_job_options(self._job_id, {"cache_aware": False})
            EVENTS.warning(
                "the Batch API refuses prompt_cache_key (%s): its lines go again in the next "
                "batches, without the keys cache-aware sending adds",
                verdict.message,
            )
        return Verdict.failure(ErrorKind.NOT_RUN, verdict.code, f"not run: {verdict.message}")

    def _settle_lines(self, batch: BatchRow, lines: list[Outcome]) -> None:
        retry_invalid = 0 if self._cancelled else self._settings.retry_invalid
        written = self._ledger.settle_batch_lines(
            self._job_id, batch.id, lines, self._settings.max_attempts, retry_invalid
        )
        if self._on_settled is not None:
            self._on_settled(written)

    def _outcome(
        self,
        batch: BatchRow,
        custom_id: str,
        verdict: Verdict,
        status: int | None,
        body: str | None,
        leftover: str,
        wanted: OutputFormat | None = None,
    ) -> Outcome:
        """A line's outcome. A retryable line's item goes back to `leftover` (pending for the
        next batch, or cancelled with its job); one line never stops a job, it fails."""
        effect = BATCH_EFFECTS[verdict.action]
        rule = verdict.rule
        now = utcnow()
        outcome = Outcome(
            job_id=self._job_id,
            custom_id=custom_id,
            state=leftover if effect.state == PENDING else effect.state,
            attempt_outcome=effect.attempt,
            started_at=now,
            ended_at=now,
            batch_id=batch.id,
            is_attempt=rule.is_attempt if rule is not None else True,
            model=batch.model,
        )
        outcome.result.http_status = status
        self._answers.fill(outcome.result, verdict, batch.model, body, wanted)
        return outcome

    def _settle_failed(
        self, batch: BatchRow, problems: tuple[BatchProblem, ...], leftover: str
    ) -> None:
        """A batch the API refused: wait out a token cap, or fail the lines it names."""
        self._ledger.record_batch_errors(batch.id, [(p.code, p.message, p.line) for p in problems])
        kinds = [self._dialect.batch_problem_kind(p.code) for p in problems]
        if any(RULES[kind].retry for kind in kinds):  # the enqueued-token cap: wait, resubmit
            self._held_until[batch.model] = time.monotonic() + self._settings.batch_hold_s
            self._ledger.release_batch(batch.id, SETTLED, leftover=leftover)
            return
        by_line = {p.line: p for p in problems if p.line is not None}
        general = [p for p in problems if p.line is None] or (
            [] if by_line else [BatchProblem(None, "the batch failed without a reason", None)]
        )
        failed: list[Outcome] = []
        for number, row in enumerate(self._ledger.batch_items(batch.id), start=1):
            problem = by_line.get(number) or (general[0] if general else None)
            if problem is not None:
                verdict = Verdict.failure(ErrorKind.BATCH_VALIDATION, problem.code, problem.message)
                failed.append(self._outcome(batch, row.custom_id, verdict, None, None, leftover))
        for start in range(0, len(failed), SETTLE_CHUNK):
            chunk = failed[start : start + SETTLE_CHUNK]
            self._settle_lines(batch, chunk)
        self._ledger.release_batch(batch.id, SETTLED, leftover=leftover)
