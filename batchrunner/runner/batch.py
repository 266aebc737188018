"""Batch API mode: pack pending items into batches, submit them, poll, and reconcile.

Data flow: ledger (pending) -> plan files -> record the batch (intent) -> write and upload its
input file -> create the remote batch -> poll -> download the output and error files ->
reconcile every line into its item -> leftovers back to pending -> pack again.

Each step is recorded before the next begins, so a kill at any moment is resumed without
sending anything twice: a batch recorded as uploaded but not created is looked up by the token
in its metadata before a new one is created.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import orjson

from batchrunner.jobfile import batch_line
from batchrunner.ledger import Ledger
from batchrunner.ledger.batches import (
    ABANDONED,
    PACKING,
    SETTLED,
    SUBMITTED,
    UPLOADED,
    SettledLine,
    problems_json,
)
from batchrunner.ledger.models import CANCELLED, FAILED, PENDING
from batchrunner.pricing import PriceTable, price_item, price_table_from
from batchrunner.runner.batch_api import BatchApi, BatchProblem, RemoteBatch
from batchrunner.runner.batch_lines import LineOutcome, read_line
from batchrunner.runner.batch_plan import (
    Candidate,
    PlanLimits,
    PlannedFile,
    line_size,
    plan_files,
    within_token_cap,
)
from batchrunner.runner.budget import Budget
from batchrunner.runner.concurrent import RunReport
from batchrunner.settings import RunSettings
from batchrunner.tokens import output_allowance, prompt_tokens

EVENTS = logging.getLogger("batchrunner")
JOB_KEY = "batchrunner_job"
BATCH_KEY = "batchrunner_batch"
SETTLE_CHUNK = 1000
TOKEN_LIMIT_CODE = "token_limit_exceeded"
STOP_ERRORS = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


@dataclass
class BatchProgress:
    """What the progress display shows: items settled, and the live batches' own counts."""

    total: int
    settled: int
    in_flight_done: int = 0
    states: dict[str, int] = field(default_factory=dict)


class BatchRunner:
    def __init__(
        self,
        ledger: Ledger,
        job_id: int,
        settings: RunSettings,
        api: BatchApi,
        on_progress: Callable[[BatchProgress], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._job_id = job_id
        self._settings = settings
        self._api = api
        self._on_progress = on_progress
        self._limits = PlanLimits(
            max_requests=settings.batch_max_requests, max_tokens=settings.batch_token_limit
        )
        self._prices: PriceTable | None = (
            price_table_from(settings.prices, "--prices") if settings.prices else None
        )
        self._held_until: dict[str, float] = {}  # model -> monotonic time (token cap reached)
        self._stop_reason: str | None = None
        self._cancelled = False
        self._packed_once = False
        self._over_budget: str | None = None  # why no more batches go out
        self._worst_of: dict[int, float] = {}  # batch id -> its worst-case cost (budget)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, wait: bool, poll_s: float = 5.0, poll_max_s: float = 60.0) -> RunReport:
        """One pass (submit what is pending, settle what has ended), or passes until done."""
        self._cancelled = self._ledger.job_state(self._job_id) == CANCELLED
        run_id = self._ledger.start_run(self._job_id, self._settings.max_attempts)
        delay = poll_s
        try:
            while True:
                self._ledger.heartbeat(run_id)
                self._submit_pending()
                changed = self._poll()
                live = self._ledger.batches_of(self._job_id)
                repacking = self._settings.finish != "concurrent" and not self._cancelled
                repacking = repacking and not self._over_budget
                done = not live and not (repacking and self._ledger.has_pending(self._job_id))
                if self._stop_reason or not wait or done:
                    break
                delay = poll_s if changed else min(delay * 1.5, poll_max_s)
                time.sleep(delay)
        finally:
            state = self._ledger.end_run(self._job_id, run_id)
            if self._cancelled:
                self._ledger.update_job_state(self._job_id, CANCELLED)
        if self._over_budget and state != "completed" and not self._stop_reason:
            self._stop_reason = self._over_budget
        if self._ledger.batches_of(self._job_id) and not self._stop_reason:
            if not self._cancelled:
                self._ledger.update_job_state(self._job_id, "running")  # remote batches go on
            state = "submitted"
        return RunReport(self._job_id, state, self._stop_reason)

    def cancel(self) -> int:
        """Cancel the remote batches and the pending items; what finished stays."""
        self._cancelled = True
        self._ledger.update_job_state(self._job_id, CANCELLED)
        for batch in self._ledger.batches_of(self._job_id):
            remote_id = batch.remote_id
            if remote_id is None and batch.state == UPLOADED:
                found = self._api.find(BATCH_KEY, batch.token)  # created before a kill?
                if found is not None:
                    self._record_created(batch.id, found)
                    remote_id = found.id
            if remote_id:
                remote = self._api.cancel(remote_id)
                self._ledger.update_batch(batch.id, remote_status=remote.status)
            else:  # never created: nothing remote to wait for
                self._ledger.release_batch(batch.id, ABANDONED, leftover=CANCELLED)
        return self._ledger.cancel_pending(self._job_id)

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
        for row in self._ledger.iter_items(self._job_id, states=(PENDING,)):
            body = orjson.loads(row.body) if counting else {}
            tokens = prompt_tokens(row.url, body) if counting else 0
            size = line_size(row.custom_id, row.url, row.body)
            worst = 0.0
            if budget is not None:
                worst = budget.worst_case(row.model, tokens, output_allowance(body))
            yield Candidate(row.id, row.url, row.model, size, tokens, worst)

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

    def _worst_case(self, batch: Any, budget: Budget) -> float:
        total = 0.0
        for row in self._ledger.batch_items(batch.id):
            body = orjson.loads(row.body)
            tokens = prompt_tokens(row.url, body)
            total += budget.worst_case(batch.model, tokens, output_allowance(body))
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
                found = self._api.find(BATCH_KEY, token)
                if found is not None:
                    self._record_created(batch_id, found)
                    return
            metadata = {JOB_KEY: str(self._job_id), BATCH_KEY: token}
            try:
                created = self._api.create(input_file_id, endpoint, metadata)
            except (openai.APIConnectionError, openai.APITimeoutError):
                found = self._api.find(BATCH_KEY, token)  # the answer was lost, not the batch?
                if found is None:
                    raise
                created = found
            self._record_created(batch_id, created)
        except STOP_ERRORS as exc:
            self._stop_reason = f"{type(exc).__name__}: {exc.message}"
        except openai.RateLimitError as exc:
            if exc.code == "insufficient_quota":
                self._stop_reason = f"quota: {exc.message}"
            else:
                EVENTS.warning("batch %s not submitted yet: %s", batch_id, exc.message)
        except openai.BadRequestError as exc:  # refused for good: too many lines, too big
            self._ledger.release_batch(batch_id, ABANDONED)  # its items go back to pending
            self._stop_reason = f"batch refused by the API: {exc.message}"
        except openai.APIError as exc:
            EVENTS.warning("batch %s not submitted yet (will retry): %s", batch_id, exc)

    def _record_created(self, batch_id: int, remote: RemoteBatch) -> None:
        self._ledger.update_batch(
            batch_id, state=SUBMITTED, remote_id=remote.id, remote_status=remote.status
        )

    def _upload(self, batch_id: int) -> str:
        with tempfile.TemporaryDirectory(prefix="batchrunner-") as folder:
            path = Path(folder) / f"job{self._job_id}-batch{batch_id}.jsonl"
            with path.open("wb") as out:
                for row in self._ledger.batch_items(batch_id):
                    out.write(batch_line(row.custom_id, row.url, row.body))
            return self._api.upload(path)

    # -- polling and reconciling -----------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the recorded state of the submitted batches up to date (for `status`),
        without settling any: only `run` writes results."""
        for batch in self._ledger.batches_of(self._job_id, (SUBMITTED,)):
            remote = self._api.retrieve(batch.remote_id)
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
            try:
                remote = self._api.retrieve(batch.remote_id)
            except openai.APIError as exc:
                EVENTS.warning("could not poll batch %s: %s", batch.remote_id, exc)
                continue
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
                self._settle(batch, remote)
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
            summary.counts.get(state, 0) for state in ("succeeded", FAILED, CANCELLED)
        )
        self._on_progress(progress)

    def _settle(self, batch: Any, remote: RemoteBatch) -> None:
        leftover = CANCELLED if self._cancelled else PENDING
        if remote.status == "failed":
            self._settle_failed(batch, remote.problems, leftover)
            return
        with tempfile.TemporaryDirectory(prefix="batchrunner-") as folder:
            for file_id in (remote.output_file_id, remote.error_file_id):
                if file_id:
                    self._settle_file(batch, file_id, Path(folder), leftover)
        usage = orjson.dumps(remote.usage).decode() if remote.usage else None
        returned = self._ledger.release_batch(batch.id, SETTLED, leftover=leftover)
        self._ledger.update_batch(batch.id, usage=usage)
        EVENTS.info("batch %s %s: %d back to %s", remote.id, remote.status, returned, leftover)

    def _settle_file(self, batch: Any, file_id: str, scratch: Path, leftover: str) -> None:
        chunk: list[SettledLine] = []
        for raw in self._api.lines(file_id, scratch):
            outcome = read_line(raw)
            if outcome is None:
                continue
            chunk.append(self._settled(outcome, batch.model, leftover))
            if len(chunk) >= SETTLE_CHUNK:
                self._ledger.settle_lines(self._job_id, batch.id, chunk)
                chunk = []
        self._ledger.settle_lines(self._job_id, batch.id, chunk)

    def _settled(self, outcome: LineOutcome, model: str, leftover: str) -> SettledLine:
        """The line as the ledger takes it; a line that was never run goes to `leftover`."""
        usage = outcome.usage
        cost = None
        if outcome.state == "succeeded":
            priced = price_item(
                model, usage, batch=True, when=datetime.now(UTC), overrides=self._prices
            )
            cost = priced.usd if priced is not None else None
        return SettledLine(
            custom_id=outcome.custom_id,
            state=leftover if outcome.state == PENDING else outcome.state,
            http_status=outcome.http_status,
            response=outcome.response,
            error_kind=outcome.error_kind,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            input_tokens=usage.input_tokens,
            cached_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost,
            finish_reason=outcome.finish_reason,
        )

    def _settle_failed(self, batch: Any, problems: tuple[BatchProblem, ...], leftover: str) -> None:
        """A batch the API refused: wait out a token cap, or fail the lines it names."""
        self._ledger.update_batch(batch.id, errors=problems_json(problems))
        if any(p.code == TOKEN_LIMIT_CODE for p in problems):
            self._held_until[batch.model] = time.monotonic() + self._settings.batch_hold_s
            self._ledger.release_batch(batch.id, SETTLED, leftover=leftover)
            return
        by_line = {p.line: p for p in problems if p.line is not None}
        general = [p for p in problems if p.line is None] or (
            [] if by_line else [BatchProblem(None, "the batch failed without a reason", None)]
        )
        failed: list[SettledLine] = []
        for number, row in enumerate(self._ledger.batch_items(batch.id), start=1):
            problem = by_line.get(number) or (general[0] if general else None)
            if problem is not None:
                failed.append(_refused(row.custom_id, problem))
        for start in range(0, len(failed), SETTLE_CHUNK):
            self._ledger.settle_lines(self._job_id, batch.id, failed[start : start + SETTLE_CHUNK])
        self._ledger.release_batch(batch.id, SETTLED, leftover=leftover)


def _refused(custom_id: str, problem: BatchProblem) -> SettledLine:
    return SettledLine(
        custom_id,
        FAILED,
        error_kind="batch_validation",
        error_code=problem.code,
        error_message=problem.message,
    )
