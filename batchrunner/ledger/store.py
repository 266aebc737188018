"""Every query the ledger answers: the only module that writes SQL.

Writes are batched (Core executemany, one transaction per batch, never one commit per item) and
each transaction is short, so a status reader or a second process never waits long.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import OperationalError

from batchrunner.errors import JobBusyError, LedgerError, UsageError
from batchrunner.jobfile import JobItem
from batchrunner.ledger import migrate
from batchrunner.ledger.engine import READ_ONLY, describe, open_engine
from batchrunner.ledger.models import (
    FAILED,
    PENDING,
    RUNNING,
    Attempt,
    Item,
    Job,
    Run,
)

INSERT_CHUNK = 2000
PAGE_SIZE = 1000
STALE_HEARTBEAT = timedelta(seconds=60)

jobs_t = cast(Table, Job.__table__)
items_t = cast(Table, Item.__table__)
attempts_t = cast(Table, Attempt.__table__)
runs_t = cast(Table, Run.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """An item handed to a runner: what it needs to send the request."""

    id: int
    position: int
    custom_id: str
    url: str
    model: str
    body: str
    attempts: int


@dataclass(slots=True)
class AttemptRecord:
    """One request's outcome. `item_state` is None while the item will be tried again."""

    item_id: int
    job_id: int
    run_id: str
    number: int
    started_at: datetime
    ended_at: datetime
    outcome: str
    item_state: str | None
    http_status: int | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    input_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    response: str | None = None


@dataclass
class JobSummary:
    """A job row plus its item counts and sums: everything `status` shows."""

    id: int
    name: str
    mode: str
    state: str
    simulated: bool
    source_path: str
    item_count: int
    options: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 0
    live_run: bool = False
    run_started_at: datetime | None = None
    finished_in_run: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)


class Ledger:
    """The ledger at one database URL; migrated to the latest schema when opened."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = open_engine(url)
        with self._errors("open"):
            migrate.upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            reason = str(exc.orig) if exc.orig is not None else str(exc)
            raise LedgerError(
                f"could not {doing} the ledger at {describe(self.url)}: {reason}. "
                "Nothing already recorded is lost; fix the cause and resume with "
                "`batchrunner run`."
            ) from None

    @contextmanager
    def _write(self, doing: str) -> Iterator[Connection]:
        with self._errors(doing), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with (
            self._errors("read"),
            self.engine.connect().execution_options(**{READ_ONLY: True}) as conn,
        ):
            yield conn

    # -- jobs ---------------------------------------------------------------------------------

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
    ) -> int:
        """Record a job and all its items in one transaction: all of it, or nothing."""
        now = utcnow()
        with self._write("record the job in") as conn:
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
            count = 0
            chunk: list[dict[str, Any]] = []
            statement = insert(items_t)
            for item in items:
                chunk.append(
                    {
                        "job_id": job_id,
                        "position": item.position,
                        "custom_id": item.custom_id,
                        "url": item.url,
                        "model": item.model,
                        "body": item.body.decode(),
                        "extra": item.extra.decode() if item.extra else None,
                        "state": PENDING,
                        "attempts": 0,
                        "created_at": now,
                    }
                )
                if len(chunk) >= INSERT_CHUNK:
                    conn.execute(statement, chunk)
                    count += len(chunk)
                    chunk = []
            if chunk:
                conn.execute(statement, chunk)
                count += len(chunk)
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(item_count=count))
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

    def job_ids(self, limit: int = 50) -> list[int]:
        with self._read() as conn:
            rows = conn.execute(select(jobs_t.c.id).order_by(jobs_t.c.id.desc()).limit(limit))
            return sorted(int(r[0]) for r in rows)

    def job_options(self, job_id: int) -> tuple[dict[str, Any], bool]:
        with self._read() as conn:
            row = conn.execute(
                select(jobs_t.c.options, jobs_t.c.simulated).where(jobs_t.c.id == job_id)
            ).one()
        return dict(row.options), bool(row.simulated)

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
            )
            run = conn.execute(
                select(runs_t)
                .where(runs_t.c.job_id == job_id)
                .order_by(runs_t.c.started_at.desc())
                .limit(1)
            ).first()
            since = run.started_at if run is not None else job.created_at
            summary.run_started_at = run.started_at if run is not None else None
            summary.live_run = run is not None and _run_is_live(run, utcnow())
            rows = conn.execute(
                select(
                    items_t.c.state,
                    func.count(),
                    func.sum(items_t.c.input_tokens),
                    func.sum(items_t.c.cached_tokens),
                    func.sum(items_t.c.output_tokens),
                    func.sum(items_t.c.reasoning_tokens),
                    func.sum(items_t.c.cost_usd),
                    func.sum(items_t.c.attempts),
                    func.count(items_t.c.finished_at).filter(items_t.c.finished_at >= since),
                )
                .where(items_t.c.job_id == job_id)
                .group_by(items_t.c.state)
            )
            for state, count, inp, cached, out, reasoning, cost, attempts, recent in rows:
                summary.counts[state] = count
                summary.input_tokens += inp or 0
                summary.cached_tokens += cached or 0
                summary.output_tokens += out or 0
                summary.reasoning_tokens += reasoning or 0
                summary.attempts += attempts or 0
                summary.finished_in_run += recent or 0
                if cost is not None:
                    summary.cost_usd = (summary.cost_usd or 0.0) + cost
            kinds = conn.execute(
                select(items_t.c.error_kind, func.count())
                .where(items_t.c.job_id == job_id, items_t.c.state == FAILED)
                .group_by(items_t.c.error_kind)
            )
            summary.failures_by_kind = {str(kind): n for kind, n in kinds}
        if summary.state == RUNNING and not summary.live_run:
            summary.state = "stopped"  # its process died without saying so
        return summary

    # -- runs ---------------------------------------------------------------------------------

    def start_run(self, job_id: int, max_attempts: int) -> str:
        """Register this process as the job's one live run, put the items a dead run left
        half-done back to pending, and fail those that already used every attempt (their last
        error stays). Refuse if another live run has the job."""
        now = utcnow()
        run_id = str(uuid.uuid4())
        with self._write("start a run in") as conn:
            for run in conn.execute(
                select(runs_t).where(runs_t.c.job_id == job_id, runs_t.c.ended_at.is_(None))
            ):
                if _run_is_live(run, now):
                    raise JobBusyError(
                        f"job {job_id} is already running in process {run.pid} on "
                        f"{run.hostname} (last heartbeat {(now - run.heartbeat_at).seconds}s "
                        "ago); wait for it to finish or stop it first"
                    )
                conn.execute(update(runs_t).where(runs_t.c.id == run.id).values(ended_at=now))
            conn.execute(
                update(items_t)
                .where(items_t.c.job_id == job_id, items_t.c.state == RUNNING)
                .values(state=PENDING, run_id=None, updated_at=now)
            )
            conn.execute(
                update(items_t)
                .where(
                    items_t.c.job_id == job_id,
                    items_t.c.state == PENDING,
                    items_t.c.attempts >= max_attempts,
                )
                .values(state=FAILED, updated_at=now, finished_at=now)
            )
            conn.execute(
                insert(runs_t),
                {
                    "id": run_id,
                    "job_id": job_id,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "started_at": now,
                    "heartbeat_at": now,
                },
            )
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id)
                .values(state=RUNNING, started_at=func.coalesce(jobs_t.c.started_at, now))
            )
        return run_id

    def heartbeat(self, run_id: str) -> None:
        with self._write("update the heartbeat in") as conn:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(heartbeat_at=utcnow()))

    def end_run(self, job_id: int, run_id: str) -> str:
        """Release what this run still holds and settle the job's state; return that state."""
        now = utcnow()
        with self._write("end the run in") as conn:
            conn.execute(
                update(items_t)
                .where(
                    items_t.c.job_id == job_id,
                    items_t.c.state == RUNNING,
                    items_t.c.run_id == run_id,
                )
                .values(state=PENDING, run_id=None, updated_at=now)
            )
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(ended_at=now))
            unfinished = conn.execute(
                select(func.count())
                .select_from(items_t)
                .where(items_t.c.job_id == job_id, items_t.c.state.in_((PENDING, RUNNING)))
            ).scalar_one()
            state = "stopped" if unfinished else "completed"
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id)
                .values(state=state, finished_at=None if unfinished else now)
            )
        return state

    # -- items --------------------------------------------------------------------------------

    def claim_pending(self, job_id: int, run_id: str, limit: int) -> list[ClaimedItem]:
        """Mark up to `limit` pending items, in file order, as running for this run."""
        now = utcnow()
        next_ids = (
            select(items_t.c.id)
            .where(items_t.c.job_id == job_id, items_t.c.state == PENDING)
            .order_by(items_t.c.position)
            .limit(limit)
            .scalar_subquery()
        )
        with self._write("claim items from") as conn:
            rows = conn.execute(
                update(items_t)
                .where(items_t.c.id.in_(next_ids))
                .values(state=RUNNING, run_id=run_id, updated_at=now)
                .returning(
                    items_t.c.id,
                    items_t.c.position,
                    items_t.c.custom_id,
                    items_t.c.url,
                    items_t.c.model,
                    items_t.c.body,
                    items_t.c.attempts,
                )
            ).all()
        claimed = [ClaimedItem(*row) for row in rows]
        claimed.sort(key=lambda item: item.position)
        return claimed

    def record_attempts(self, records: list[AttemptRecord]) -> None:
        """Write a batch of outcomes in one transaction: the attempt rows and the items."""
        if not records:
            return
        attempt_rows = []
        item_rows = []
        for r in records:
            usage = {
                "input_tokens": r.input_tokens,
                "cached_tokens": r.cached_tokens,
                "output_tokens": r.output_tokens,
                "reasoning_tokens": r.reasoning_tokens,
                "cost_usd": r.cost_usd,
                "latency_ms": r.latency_ms,
            }
            error = {
                "error_kind": r.error_kind,
                "error_code": r.error_code,
                "error_message": r.error_message,
            }
            attempt_rows.append(
                {
                    "item_id": r.item_id,
                    "job_id": r.job_id,
                    "run_id": r.run_id,
                    "number": r.number,
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "outcome": r.outcome,
                    "http_status": r.http_status,
                    **error,
                    **usage,
                }
            )
            item_rows.append(
                {
                    "b_id": r.item_id,
                    "b_run": r.run_id,
                    "state": r.item_state or RUNNING,
                    "run_id": None if r.item_state == PENDING else r.run_id,
                    "attempts": r.number,
                    "http_status": r.http_status,
                    "finish_reason": r.finish_reason,
                    "response": r.response,
                    "updated_at": r.ended_at,
                    "finished_at": r.ended_at if r.item_state else None,
                    **error,
                    **usage,
                }
            )
        item_update = (
            update(items_t)
            .where(items_t.c.id == bindparam("b_id"), items_t.c.run_id == bindparam("b_run"))
            .values({name: bindparam(name) for name in item_rows[0] if not name.startswith("b_")})
        )
        with self._write("record results in") as conn:
            conn.execute(insert(attempts_t), attempt_rows)
            conn.execute(item_update, item_rows)

    def iter_items(self, job_id: int, states: tuple[str, ...] | None = None) -> Iterator[Any]:
        """Page through a job's items in file order, PAGE_SIZE rows per query."""
        after = -1
        while True:
            query = (
                select(items_t)
                .where(items_t.c.job_id == job_id, items_t.c.position > after)
                .order_by(items_t.c.position)
                .limit(PAGE_SIZE)
            )
            if states is not None:
                query = query.where(items_t.c.state.in_(states))
            with self._read() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield from rows
            after = rows[-1].position

    def attempts_of(self, item_id: int) -> list[Any]:
        with self._read() as conn:
            return list(
                conn.execute(
                    select(attempts_t)
                    .where(attempts_t.c.item_id == item_id)
                    .order_by(attempts_t.c.number)
                )
            )


def _run_is_live(run: Any, now: datetime) -> bool:
    """A run is live while its heartbeat is fresh and, on this host, its process exists."""
    if run.ended_at is not None or now - run.heartbeat_at > STALE_HEARTBEAT:
        return False
    if run.hostname == socket.gethostname() and run.pid != os.getpid():
        try:
            os.kill(run.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True
