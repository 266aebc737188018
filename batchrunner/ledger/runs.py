"""Who works on a job: runs (one process each), their heartbeats, and taking work back from
the dead.

A run's id is the claim token of every item it holds: results are written only where the item
still carries it, so a late answer from a run that lost its items changes nothing. A run is
dead once its heartbeat is older than the lease (or, on this host, its process is gone); any
live run of the job then puts the dead run's items back to pending.

No heartbeat can be written while the database is away, so silence is counted from when it came
back: from the server's start (PostgreSQL), and from when this process got it back. A run that
was taken for dead all the same (cut off alone for longer than the lease) comes back to life at
its next heartbeat; the items it lost went to the others, and its late answers change no result.

`run` takes a job alone (a second one is refused); workers (`shared`) take it together, each
claiming its own items, on PostgreSQL with FOR UPDATE SKIP LOCKED.

A cancelled job stays cancelled: a run that starts on it leaves the state alone (and stops at
once, seeing it), and a run that ends on it cancels what it held instead of handing it back.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Connection, case, func, insert, select, text, update

from batchrunner.errors import JobBusyError
from batchrunner.ledger.models import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    attempts_t,
    items_t,
    jobs_t,
    pauses_t,
    runs_t,
)
from batchrunner.ledger.outages import outlasting, outlasting_read
from batchrunner.ledger.records import QueriesMixin, RunRow, WorkerStatus, row_columns, utcnow
from batchrunner.logs import EVENTS
from batchrunner.redact import mask

DEFAULT_LEASE_S = 60.0
# How often a run looks whether its job was cancelled (`batchrunner cancel`, from any process):
# one read of the job's row, so a cancel stops every run of the job within about this long.
CANCEL_CHECK_S = 1.0


def run_is_live(
    run: RunRow,
    now: datetime,
    lease_s: float = DEFAULT_LEASE_S,
    silent_since: datetime | None = None,
) -> bool:
    """A run is live while its heartbeat is fresh and, on this host, its process exists;
    silence counts from `silent_since` when that is later (the database came back then)."""
    last_heard = max(run.heartbeat_at, silent_since) if silent_since else run.heartbeat_at
    if run.ended_at is not None or now - last_heard > timedelta(seconds=lease_s):
        return False
    if run.hostname == socket.gethostname() and run.pid != os.getpid():
        try:
            os.kill(run.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


class RunQueries(QueriesMixin):
    """Mixed into `Ledger`."""

    def start_run(
        self,
        job_id: int,
        max_attempts: int,
        *,
        shared: bool = False,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> str:
        """Register this process as a run of the job, take back what dead runs held, and fail
        the items that already used every attempt (their last error stays). Alone (`run`),
        refuse while another run is live; shared (`worker`), join the live ones."""
        run_id = str(uuid.uuid4())
        self._outage.outlast(
            lambda again: self._start_run(job_id, max_attempts, run_id, shared, lease_s, again)
        )
        return run_id

    def _start_run(
        self, job_id: int, max_attempts: int, run_id: str, shared: bool, lease_s: float, again: bool
    ) -> None:
        now = utcnow()
        with self._write("start a run in") as conn:
            # PostgreSQL: two processes starting the job at once queue up here, so the second
            # sees the first one's run (SQLite's BEGIN IMMEDIATE already serialises them).
            conn.execute(select(jobs_t.c.id).where(jobs_t.c.id == job_id).with_for_update())
            if again and conn.execute(select(runs_t.c.id).where(runs_t.c.id == run_id)).first():
                return  # the lost try's commit landed
            live = _end_dead_runs(conn, job_id, now, lease_s, self._silent_since(conn))
            if live and not shared:
                run = live[0]
                raise JobBusyError(
                    f"job {job_id} is already running in process {run.pid} on "
                    f"{run.hostname} (last heartbeat {(now - run.heartbeat_at).seconds}s "
                    "ago); wait for it to finish or stop it first"
                )
            _release_items_of_ended_runs(conn, job_id, now)
            _fail_exhausted(conn, job_id, max_attempts, now)
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
                .values(
                    state=case((jobs_t.c.state == CANCELLED, CANCELLED), else_=RUNNING),
                    started_at=func.coalesce(jobs_t.c.started_at, now),
                    stop_reason=None,  # an earlier run's: this one tells its own
                    stopped_at=None,
                )
            )

    def _silent_since(self, conn: Connection) -> datetime | None:
        """Since when a run's silence counts against its lease (see the module's doc)."""
        since = [self._outage.back_at] if self._outage.back_at else []
        if conn.dialect.name == "postgresql":
            started = "SELECT pg_postmaster_start_time() AT TIME ZONE 'UTC'"
            since.append(conn.execute(text(started)).scalar_one())
        return max(since, default=None)

    @outlasting
    def fail_exhausted(self, job_id: int, max_attempts: int) -> int:
        """Fail the pending items that already used every attempt (their last error stays),
        before they are sent again: a batch job's retried lines come back to pending."""
        with self._write("fail items in") as conn:
            return _fail_exhausted(conn, job_id, max_attempts, utcnow())

    @outlasting
    def record_stop(self, job_id: int, reason: str) -> None:
        """Keep why the job's run stopped early, and when, for `status` (the next run clears
        it)."""
        reason = mask(reason)  # a server's words may quote the key
        with self._write("record the stop in") as conn:
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id)
                .values(stop_reason=reason, stopped_at=utcnow())
            )

    @outlasting
    def record_pauses(
        self, job_id: int, run_id: str, windows: list[tuple[datetime, datetime]]
    ) -> None:
        """Keep when a run held every request back after a 429, and until when (`report`
        plots them); a repeat after a lost commit may keep a window twice (it only shows)."""
        if not windows:
            return
        rows = [
            {"job_id": job_id, "run_id": run_id, "started_at": start, "until_at": until}
            for start, until in windows
        ]
        with self._write("record the pauses in") as conn:
            conn.execute(insert(pauses_t), rows)

    @outlasting
    def heartbeat(self, run_id: str) -> bool:
        """Say the run is alive; one that was taken for dead is live again from now on (True:
        it was, and the items it held went to the others)."""
        now = utcnow()
        mine = runs_t.c.id == run_id
        with self._write("update the heartbeat in") as conn:
            revived = conn.execute(
                update(runs_t)
                .where(mine, runs_t.c.ended_at.is_not(None))
                .values(heartbeat_at=now, ended_at=None)
            ).rowcount
            if not revived:
                conn.execute(update(runs_t).where(mine).values(heartbeat_at=now))
        if revived:
            EVENTS.warning(
                "this run was taken for dead (no heartbeat for longer than its lease): the "
                "items it held went back to pending for the others; going on"
            )
        return bool(revived)

    @outlasting
    def reclaim(self, job_id: int, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Put the items of the job's dead runs back to pending; return how many live runs
        the job has (this one included), to share its rate limits among them."""
        now = utcnow()
        with self._write("take back the work of dead runs in") as conn:
            live = _end_dead_runs(conn, job_id, now, lease_s, self._silent_since(conn))
            _release_items_of_ended_runs(conn, job_id, now)
        return len(live)

    @outlasting
    def end_run(self, job_id: int, run_id: str, lease_s: float = DEFAULT_LEASE_S) -> str:
        """Release what this run still holds and settle the job's state; return that state
        ("completed", or "stopped" with work left; "running" while other runs go on). A job
        cancelled meanwhile stays cancelled ("cancelled"): what this run held and did not
        finish, and what waits unclaimed (deferred items, a dead worker's), is cancelled."""
        now = utcnow()
        with self._write("end the run in") as conn:
            job_state = conn.execute(select(jobs_t.c.state).where(jobs_t.c.id == job_id)).one()[0]
            cancelled = job_state == CANCELLED
            released: dict[str, object] = {"state": PENDING, "run_id": None, "updated_at": now}
            if cancelled:
                released.update(state=CANCELLED, finished_at=now)
            conn.execute(
                update(items_t)
                .where(
                    items_t.c.job_id == job_id,
                    items_t.c.state == RUNNING,
                    items_t.c.run_id == run_id,
                )
                .values(released)
            )
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(ended_at=now))
            others = _end_dead_runs(conn, job_id, now, lease_s, self._silent_since(conn))
            if cancelled:
                _release_items_of_ended_runs(conn, job_id, now)
                conn.execute(
                    update(items_t)
                    .where(items_t.c.job_id == job_id, items_t.c.state == PENDING)
                    .values(state=CANCELLED, updated_at=now, finished_at=now)
                )
            unfinished = conn.execute(
                select(func.count())
                .select_from(items_t)
                .where(items_t.c.job_id == job_id, items_t.c.state.in_((PENDING, RUNNING)))
            ).scalar_one()
            if cancelled:
                state = job_state = CANCELLED
            else:
                state = "stopped" if unfinished else "completed"
                job_state = "running" if unfinished and others else state
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id)
                .values(state=job_state, finished_at=None if unfinished else now)
            )
        return state

    @outlasting_read
    def held_by_others(self, job_id: int, run_id: str) -> int:
        """Items other runs are working on: a worker with nothing to claim waits for these
        (their run may die, and they come back to pending) before it leaves."""
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(items_t)
                    .where(
                        items_t.c.job_id == job_id,
                        items_t.c.state == RUNNING,
                        items_t.c.batch_id.is_(None),
                        items_t.c.run_id != run_id,
                    )
                ).scalar_one()
            )

    def runs_of(self, job_id: int, lease_s: float = DEFAULT_LEASE_S) -> list[WorkerStatus]:
        """The job's live runs (workers) with their last heartbeat and their requests in the
        last minute, for `status`."""
        now = utcnow()
        with self._read() as conn:
            runs = [run for run in _open_runs(conn, job_id) if run_is_live(run, now, lease_s)]
            recent: dict[str, int] = dict(
                conn.execute(
                    select(attempts_t.c.run_id, func.count())
                    .where(
                        attempts_t.c.job_id == job_id,
                        attempts_t.c.ended_at >= now - timedelta(seconds=60),
                        attempts_t.c.run_id.in_([run.id for run in runs]),
                    )
                    .group_by(attempts_t.c.run_id)
                ).all()
            )
        return [
            WorkerStatus(
                id=run.id,
                hostname=run.hostname,
                pid=run.pid,
                started_at=run.started_at,
                heartbeat_at=run.heartbeat_at,
                requests_last_minute=int(recent.get(run.id, 0)),
            )
            for run in runs
        ]


def _open_runs(conn: Connection, job_id: int) -> list[RunRow]:
    """The job's runs that have not said they ended."""
    query = select(*row_columns(runs_t, RunRow)).where(
        runs_t.c.job_id == job_id, runs_t.c.ended_at.is_(None)
    )
    return [RunRow(*row) for row in conn.execute(query)]


def _end_dead_runs(
    conn: Connection, job_id: int, now: datetime, lease_s: float, silent_since: datetime | None
) -> list[RunRow]:
    """Mark the job's dead runs ended; return the live ones."""
    live = []
    for run in _open_runs(conn, job_id):
        if run_is_live(run, now, lease_s, silent_since):
            live.append(run)
        else:
            conn.execute(update(runs_t).where(runs_t.c.id == run.id).values(ended_at=now))
    return live


def _fail_exhausted(conn: Connection, job_id: int, max_attempts: int, now: datetime) -> int:
    """Attempts count from the item's floor: a retried item (`retry_failed`) gets a fresh
    allowance."""
    return int(
        conn.execute(
            update(items_t)
            .where(
                items_t.c.job_id == job_id,
                items_t.c.state == PENDING,
                items_t.c.attempts - items_t.c.attempts_floor >= max_attempts,
            )
            .values(state=FAILED, updated_at=now, finished_at=now)
        ).rowcount
    )


def _release_items_of_ended_runs(conn: Connection, job_id: int, now: datetime) -> None:
    """Items held by runs that ended (or by none) go back to pending; a remote batch's items
    stay with their batch (see ledger/batches.py)."""
    ended = select(runs_t.c.id).where(runs_t.c.job_id == job_id, runs_t.c.ended_at.is_not(None))
    conn.execute(
        update(items_t)
        .where(
            items_t.c.job_id == job_id,
            items_t.c.state == RUNNING,
            items_t.c.batch_id.is_(None),
            (items_t.c.run_id.is_(None) | items_t.c.run_id.in_(ended)),
        )
        .values(state=PENDING, run_id=None, updated_at=now)
    )
