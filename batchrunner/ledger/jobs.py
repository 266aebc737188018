"""The ledger's queries for jobs: recording a job and its items in one transaction, finding
jobs, their options and state, and the summary `status` shows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, literal, select, update

from batchrunner.errors import UsageError
from batchrunner.items import JobItem, request_hash
from batchrunner.ledger.engine import describe
from batchrunner.ledger.models import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    items_t,
    jobs_t,
    runs_t,
)
from batchrunner.ledger.outages import outlasting, outlasting_read
from batchrunner.ledger.records import (
    JobSummary,
    ModelTotals,
    QueriesMixin,
    RunRow,
    driver_sql,
    row_columns,
    time_to_sql,
    utcnow,
)
from batchrunner.ledger.results import POSSIBLY_BILLED_USD, reuse_answers
from batchrunner.ledger.runs import run_is_live
from batchrunner.outcome import FLAGGED_FINISH_REASONS, INVALID_OUTPUT
from batchrunner.prefixes import PrefixFinder

INSERT_CHUNK = 2000


class JobQueries(QueriesMixin):
    """Mixed into `Ledger`."""

    def create_job(
        self,
        *,
        name: str,
        mode: str,
        source_path: str,
        source_sha256: str,
        options: dict[str, Any],
        simulated: bool,
        items: Iterable[JobItem],
        reuse: bool = False,
    ) -> int:
        """Record a job and all its items in one transaction: all of it, or nothing (so its
        refusal says that no job was recorded). With `reuse`, items whose request already
        succeeded in an earlier job take that answer in the same transaction (see
        `_reuse_answers`)."""
        now = utcnow()
        with self._write("record the job in", recorded=False) as conn:
            job_id: int = conn.execute(
                insert(jobs_t).returning(jobs_t.c.id),
                {
                    "name": name,
                    "mode": mode,
                    "state": PENDING,
                    "simulated": simulated,
                    "source_path": source_path,
                    "source_sha256": source_sha256,
                    "item_count": 0,
                    "options": options,
                    "created_at": now,
                },
            ).scalar_one()
            count = _insert_items(conn, job_id, items, now)
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(item_count=count))
            if reuse:
                reuse_answers(conn, job_id, simulated, now)
        return job_id

    def find_job(self, ref: str | int | None = None) -> int:
        """A job id from an id, a name (the latest job of that name) or None (the latest job)."""
        with self._read() as conn:
            query = select(jobs_t.c.id).order_by(jobs_t.c.id.desc()).limit(1)
            if ref is None:
                found = conn.execute(query).scalar()
                if found is None:
                    raise UsageError(f"no jobs in the ledger at {describe(self.url)}")
                return int(found)
            if isinstance(ref, int) or ref.isdigit():
                found = conn.execute(query.where(jobs_t.c.id == int(ref))).scalar()
            else:
                found = conn.execute(query.where(jobs_t.c.name == ref)).scalar()
        if found is None:
            raise UsageError(f"no job {ref!r} in the ledger at {describe(self.url)}")
        return int(found)

    @outlasting_read
    def job_ids(self, limit: int = 50) -> list[int]:
        with self._read() as conn:
            rows = conn.execute(select(jobs_t.c.id).order_by(jobs_t.c.id.desc()).limit(limit))
            return sorted(int(r[0]) for r in rows)

    @outlasting_read
    def job_options(self, job_id: int) -> tuple[dict[str, Any], bool]:
        with self._read() as conn:
            row = conn.execute(
                select(jobs_t.c.options, jobs_t.c.simulated).where(jobs_t.c.id == job_id)
            ).one()
        return dict(row.options), bool(row.simulated)

    @outlasting_read
    def job_state(self, job_id: int) -> str:
        """The job's recorded state, without counting its items (see `summary` for that)."""
        with self._read() as conn:
            return str(conn.execute(select(jobs_t.c.state).where(jobs_t.c.id == job_id)).one()[0])

    @outlasting_read
    def job_mode(self, job_id: int) -> str:
        """concurrent or batch: one column of the jobs row, without counting the items."""
        with self._read() as conn:
            return str(conn.execute(select(jobs_t.c.mode).where(jobs_t.c.id == job_id)).one()[0])

    @outlasting_read
    def has_pending(self, job_id: int) -> bool:
        """Whether any item waits to be sent: one row from the pending index, not a count."""
        with self._read() as conn:
            found = conn.execute(
                select(items_t.c.id)
                .where(
                    items_t.c.job_id == job_id,
                    items_t.c.state == literal(PENDING, literal_execute=True),
                )
                .limit(1)
            ).first()
        return found is not None

    def jobs_from_source(self, sha256: str) -> list[tuple[int, str]]:
        """(id, state) of the jobs recorded from a file with this content."""
        with self._read() as conn:
            rows = conn.execute(
                select(jobs_t.c.id, jobs_t.c.state)
                .where(jobs_t.c.source_sha256 == sha256)
                .order_by(jobs_t.c.id)
            )
            return [(row.id, row.state) for row in rows]

    @outlasting
    def update_job_options(self, job_id: int, changes: dict[str, Any]) -> None:
        """Merge `changes` into the job's stored options (the estimate, a raised budget); the
        job's row locked (PostgreSQL), as record_abandoned locks it: workers merge at once."""
        with self._write("update the job in") as conn:
            current = select(jobs_t.c.options).where(jobs_t.c.id == job_id).with_for_update()
            options = conn.execute(current).one()[0]
            merged = {**dict(options), **changes}
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(options=merged))

    def update_job_state(self, job_id: int, state: str) -> None:
        with self._write("update the job in") as conn:
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(state=state))

    def cancel_pending(self, job_id: int) -> int:
        """Cancel the job's items that nothing is working on; finished ones stay."""
        now = utcnow()
        with self._write("cancel items in") as conn:
            return int(
                conn.execute(
                    update(items_t)
                    .where(items_t.c.job_id == job_id, items_t.c.state == PENDING)
                    .values(state=CANCELLED, updated_at=now, finished_at=now)
                ).rowcount
            )

    def retry_failed(self, job_id: int, kinds: Sequence[str] = ()) -> int:
        """Put the job's failed items (those of these error kinds; none given: all) back to
        pending, in one statement, and return how many. Each gets max_attempts more from the
        attempts it has used (attempts_floor); its attempts count, its attempt rows, its last
        error (until its next outcome replaces it) and what it cost stay. A completed job is
        stopped again, so a kill before the next run starts leaves it to `run`; a live run
        (or worker) of the job claims the items as any pending ones."""
        now = utcnow()
        with self._write("retry items in") as conn:
            state = conn.execute(
                select(jobs_t.c.state).where(jobs_t.c.id == job_id).with_for_update()
            ).scalar_one()
            if state == CANCELLED:
                raise UsageError(f"job {job_id} was cancelled: its failed items stay failed")
            retry = update(items_t).where(items_t.c.job_id == job_id, items_t.c.state == FAILED)
            if kinds:
                retry = retry.where(items_t.c.error_kind.in_(kinds))
            count = conn.execute(
                retry.values(
                    state=PENDING,
                    attempts_floor=items_t.c.attempts,
                    run_id=None,  # no late write of a former holder reaches it (results.py)
                    batch_id=None,
                    not_before=None,
                    finished_at=None,
                    updated_at=now,
                )
            ).rowcount
            if count and state == "completed":
                conn.execute(
                    update(jobs_t)
                    .where(jobs_t.c.id == job_id)
                    .values(
                        state="stopped",
                        finished_at=None,
                        stop_reason=f"retried: {count:,} failed items back to pending",
                        stopped_at=now,
                    )
                )
        return int(count)

    @outlasting_read
    def summary(self, job_id: int) -> JobSummary:
        with self._read() as conn:
            job = conn.execute(select(jobs_t).where(jobs_t.c.id == job_id)).one()
            summary = JobSummary(
                id=job.id,
                name=job.name,
                mode=job.mode,
                state=job.state,
                simulated=bool(job.simulated),
                source_path=job.source_path,
                item_count=job.item_count,
                options=dict(job.options),
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                stop_reason=job.stop_reason,
                stopped_at=job.stopped_at,
            )
            found = conn.execute(
                select(*row_columns(runs_t, RunRow))
                .where(runs_t.c.job_id == job_id)
                .order_by(runs_t.c.started_at.desc())
                .limit(1)
            ).first()
            run = RunRow(*found) if found is not None else None
            since = run.started_at if run is not None else job.created_at
            summary.run_started_at = run.started_at if run is not None else None
            summary.live_run = run is not None and run_is_live(run, utcnow())
            rows = conn.execute(
                select(
                    items_t.c.state,
                    items_t.c.model,
                    func.count(),
                    func.sum(items_t.c.input_tokens),
                    func.sum(items_t.c.cached_tokens),
                    func.sum(items_t.c.output_tokens),
                    func.sum(items_t.c.reasoning_tokens),
                    func.sum(items_t.c.cost_usd),
                    func.sum(items_t.c.attempts),
                    func.count(items_t.c.finished_at).filter(items_t.c.finished_at >= since),
                    func.count().filter(
                        items_t.c.cost_usd.is_(None), items_t.c.output_tokens.is_not(None)
                    ),
                    func.count().filter(items_t.c.reused.is_(True)),
                    func.count().filter(items_t.c.output_valid.is_(False)),
                    func.max(items_t.c.finished_at),
                    *(
                        func.count().filter(items_t.c.finish_reason == reason)
                        for reason in FLAGGED_FINISH_REASONS
                    ),
                )
                .where(items_t.c.job_id == job_id)
                .group_by(items_t.c.state, items_t.c.model)
            )
            for row in rows:
                (
                    state,
                    model,
                    count,
                    inp,
                    cached,
                    out,
                    reasoning,
                    cost,
                    attempts,
                    recent,
                    unpriced,
                    reused,
                    invalid,
                    last_finished,
                    *flagged,
                ) = row
                summary.counts[state] = summary.counts.get(state, 0) + count
                totals = summary.models.setdefault(model, ModelTotals())
                totals.items += count
                totals.input_tokens += inp or 0
                totals.cached_tokens += cached or 0
                totals.output_tokens += out or 0
                totals.reasoning_tokens += reasoning or 0
                totals.cost_usd += cost or 0.0
                totals.unpriced += unpriced
                summary.input_tokens += inp or 0
                summary.cached_tokens += cached or 0
                summary.output_tokens += out or 0
                summary.reasoning_tokens += reasoning or 0
                summary.attempts += attempts or 0
                summary.finished_in_run += recent or 0
                if last_finished is not None:
                    summary.last_finished_at = max(
                        last_finished, summary.last_finished_at or last_finished
                    )
                summary.reused += reused or 0
                for reason, n in zip(FLAGGED_FINISH_REASONS, flagged, strict=True):
                    if n and state == SUCCEEDED:
                        summary.flagged[reason] = summary.flagged.get(reason, 0) + n
                if invalid and state == SUCCEEDED:  # kept, flagged: failed its structured check
                    summary.flagged[INVALID_OUTPUT] = (
                        summary.flagged.get(INVALID_OUTPUT, 0) + invalid
                    )
                if cost is not None:
                    summary.cost_usd = (summary.cost_usd or 0.0) + cost
            kinds = conn.execute(
                select(items_t.c.error_kind, func.count())
                .where(items_t.c.job_id == job_id, items_t.c.state == FAILED)
                .group_by(items_t.c.error_kind)
            )
            summary.failures_by_kind = {str(kind): n for kind, n in kinds}
        possibly_billed = summary.options.get(POSSIBLY_BILLED_USD)
        if possibly_billed:  # requests abandoned in flight: their worst case, an estimate
            summary.cost_usd = (summary.cost_usd or 0.0) + possibly_billed
        if summary.state == RUNNING and not summary.live_run:
            summary.state = "stopped"  # its process died without saying so
        return summary


INSERT_COLUMNS = (
    "job_id",
    "position",
    "custom_id",
    "url",
    "model",
    "body",
    "extra",
    "request_hash",
    "prefix_group",
    "prefix_tokens",
    "reused",
    "state",
    "attempts",
    "created_at",
)
INSERT_ITEM = (
    f"INSERT INTO items ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"
)


def _insert_items(conn: Connection, job_id: int, items: Iterable[JobItem], now: datetime) -> int:
    """Insert the items in chunks through the driver's executemany with plain tuples.

    SQLAlchemy's per-row parameter processing was a fifth of `submit` on large files; the
    values that need a type's conversion (the time, the flag) are converted once here, by the
    dialect's own processors (on SQLite the time becomes the text SQLAlchemy would store,
    instead of going through sqlite3's deprecated datetime adapter on every row)."""
    dialect = conn.dialect
    sql = driver_sql(dialect, INSERT_ITEM)
    created_at = time_to_sql(dialect)(now)
    flag = items_t.c.reused.type.dialect_impl(dialect).bind_processor(dialect)
    not_reused = flag(False) if flag else False
    count = 0
    chunk: list[tuple[Any, ...]] = []
    prefixes = PrefixFinder()
    for item in items:
        parsed = orjson.loads(item.body)
        prefix = prefixes.find(item.url, parsed) if isinstance(parsed, dict) else None
        chunk.append(
            (
                job_id,
                item.position,
                item.custom_id,
                item.url,
                item.model,
                item.body.decode(),
                item.extra.decode() if item.extra else None,
                request_hash(item.url, item.body, parsed),
                prefix.group if prefix else None,
                prefix.tokens if prefix else None,
                not_reused,
                PENDING,
                0,
                created_at,
            )
        )
        if len(chunk) >= INSERT_CHUNK:
            conn.exec_driver_sql(sql, chunk)
            count += len(chunk)
            chunk = []
    if chunk:
        conn.exec_driver_sql(sql, chunk)
        count += len(chunk)
    return count
