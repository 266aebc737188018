"""Every query the ledger answers: the only module that writes SQL.

Writes are batched (Core executemany, one transaction per batch, never one commit per item) and
each transaction is short, so a status reader or a second process never waits long.

The same statements run on SQLite and PostgreSQL. Where the two differ in how writers exclude
each other, each gets its own form: SQLite serialises every write transaction (BEGIN IMMEDIATE,
see engine.py), while PostgreSQL runs them side by side at READ COMMITTED, so there the claim
locks the rows it picks (FOR UPDATE SKIP LOCKED) and start_run locks the job's row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.sql.dml import ReturningUpdate

from batchrunner.errors import LedgerError, UsageError
from batchrunner.items import JobItem, request_hash
from batchrunner.ledger.batches import BatchQueries
from batchrunner.ledger.engine import READ_ONLY, describe, open_engine
from batchrunner.ledger.models import (
    FAILED,
    PENDING,
    RUNNING,
    attempts_t,
    items_t,
    jobs_t,
    runs_t,
)
from batchrunner.ledger.records import (
    ITEM_ROW_COLUMNS,
    AttemptRow,
    ClaimedItem,
    ItemRow,
    JobSummary,
    ModelTotals,
    RunRow,
    driver_sql,
    item_row,
    row_columns,
    time_to_sql,
    utcnow,
)
from batchrunner.ledger.results import ATTEMPT_RESULT_COLUMNS, reuse_answers, write_outcomes
from batchrunner.ledger.runs import RunQueries, run_is_live
from batchrunner.outcome import RESULT_COLUMNS, Outcome, Result

__all__ = ["ClaimedItem", "ItemRow", "JobSummary", "Ledger", "utcnow"]

INSERT_CHUNK = 2000
# What SQLite's terse reasons usually mean, and what to do.
HINTS = {
    "database is locked": (
        " (another process held the write lock past the busy timeout; raise it with "
        "?timeout=SECONDS on the URL)"
    ),
    "disk is full": " (free some space on the ledger's disk)",
    "unable to open database file": " (check that its folder exists and is writable)",
    "readonly database": " (the file or its folder is read-only)",
    "File exists": " (a file stands where the ledger's folder should be)",
}
PAGE_SIZE = 1000
# The newest migration in migrations/versions (a test checks): a ledger already there opens
# without Alembic.
SCHEMA_HEAD = "0005"


class Ledger(BatchQueries, RunQueries):
    """The ledger at one database URL; migrated to the latest schema when opened."""

    def __init__(self, url: str) -> None:
        self.url = url
        with self._errors("open"):
            self.engine: Engine = open_engine(url)
            if not self._schema_is_current():
                # Alembic only when the schema is behind (or new): importing it costs about
                # a tenth of a second of every command's start-up.
                from batchrunner.ledger import migrate

                migrate.upgrade(self.engine)

    def _schema_is_current(self) -> bool:
        """Whether the ledger is at SCHEMA_HEAD: one read of alembic_version. A ledger without
        that table, or at any other revision, goes through `migrate.upgrade`, which decides."""
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            try:
                found = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            except DatabaseError:
                found = []  # no such table yet (a new ledger); a real fault recurs in upgrade
            conn.rollback()
        return [row[0] for row in found] == [SCHEMA_HEAD]

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """What the database or the disk refused (locked, full, read-only, not a database, a
        folder that cannot be created) becomes a LedgerError that names the ledger. Errors that
        mean a bug (a broken constraint, bad SQL) stay tracebacks."""
        try:
            yield
        except (DatabaseError, OSError) as exc:
            if isinstance(exc, DatabaseError) and not _refused(exc):
                raise
            reason = str(exc.orig) if isinstance(exc, DatabaseError) else _os_reason(exc)
            hint = next((h for cause, h in HINTS.items() if cause in reason), "")
            raise LedgerError(
                f"could not {doing} the ledger at {describe(self.url)}: {reason}{hint}. "
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
        reuse: bool = False,
    ) -> int:
        """Record a job and all its items in one transaction: all of it, or nothing. With
        `reuse`, items whose request already succeeded in an earlier job take that answer in
        the same transaction (see `_reuse_answers`)."""
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

    def job_state(self, job_id: int) -> str:
        """The job's recorded state, without counting its items (see `summary` for that)."""
        with self._read() as conn:
            return str(conn.execute(select(jobs_t.c.state).where(jobs_t.c.id == job_id)).one()[0])

    def job_mode(self, job_id: int) -> str:
        """concurrent or batch: one column of the jobs row, without counting the items."""
        with self._read() as conn:
            return str(conn.execute(select(jobs_t.c.mode).where(jobs_t.c.id == job_id)).one()[0])

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

    def update_job_options(self, job_id: int, changes: dict[str, Any]) -> None:
        """Merge `changes` into the job's stored options (the estimate, a raised budget)."""
        with self._write("update the job in") as conn:
            options = conn.execute(select(jobs_t.c.options).where(jobs_t.c.id == job_id)).one()[0]
            merged = {**dict(options), **changes}
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(options=merged))

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
                ) = row
                summary.counts[state] = summary.counts.get(state, 0) + count
                totals = summary.models.setdefault(model, ModelTotals())
                totals.items += count
                totals.input_tokens += inp or 0
                totals.output_tokens += out or 0
                totals.cost_usd += cost or 0.0
                totals.unpriced += unpriced
                summary.input_tokens += inp or 0
                summary.cached_tokens += cached or 0
                summary.output_tokens += out or 0
                summary.reasoning_tokens += reasoning or 0
                summary.attempts += attempts or 0
                summary.finished_in_run += recent or 0
                summary.reused += reused or 0
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

    # -- items --------------------------------------------------------------------------------

    def claim_pending(self, job_id: int, run_id: str, limit: int) -> list[ClaimedItem]:
        """Mark up to `limit` pending items, in file order, as running for this run; items whose
        `not_before` is still ahead wait for a later claim."""
        with self._write("claim items from") as conn:
            statement = claim_statement(conn.dialect.name, job_id, run_id, limit, utcnow())
            rows = conn.execute(statement).all()
        claimed = [ClaimedItem(*row) for row in rows]
        claimed.sort(key=lambda item: item.position)
        return claimed

    def next_not_before(self, job_id: int) -> datetime | None:
        """The earliest future `not_before` among the job's pending items, or None: when
        nothing is claimable, a runner sleeps until then instead of polling."""
        with self._read() as conn:
            earliest = conn.execute(next_not_before_query(job_id, utcnow())).scalar()
        return cast(datetime | None, earliest)

    def record_outcomes(self, outcomes: list[Outcome]) -> None:
        """Write a batch of concurrent mode's outcomes in one transaction: the attempt rows
        and the items (where this run still holds them)."""
        if not outcomes:
            return
        with self._write("record results in") as conn:
            write_outcomes(conn, outcomes, "run_id")

    def iter_items(self, job_id: int, states: tuple[str, ...] | None = None) -> Iterator[ItemRow]:
        """Page through a job's items in file order, PAGE_SIZE rows per query."""
        columns = [items_t.c[name] for name in (*ITEM_ROW_COLUMNS, *RESULT_COLUMNS)]
        after = -1
        while True:
            query = (
                select(*columns)
                .where(items_t.c.job_id == job_id, items_t.c.position > after)
                .order_by(items_t.c.position)
                .limit(PAGE_SIZE)
            )
            if states is not None:
                query = query.where(items_t.c.state.in_(states))
            with self._read() as conn:
                rows = [item_row(row) for row in conn.execute(query)]
            if not rows:
                return
            yield from rows
            after = rows[-1].position

    def attempts_of(self, item_id: int) -> list[AttemptRow]:
        keys = ("id", "item_id", "job_id", "run_id", "number", "started_at", "ended_at", "outcome")
        with self._read() as conn:
            rows = conn.execute(
                select(*(attempts_t.c[name] for name in (*keys, *ATTEMPT_RESULT_COLUMNS)))
                .where(attempts_t.c.item_id == item_id)
                .order_by(attempts_t.c.number)
            ).all()
        return [
            AttemptRow(
                *row[: len(keys)],
                *[Result(**dict(zip(ATTEMPT_RESULT_COLUMNS, row[len(keys) :], strict=True)))],
            )
            for row in rows
        ]


def _claimable(job_id: int, now: datetime) -> list[ColumnElement[bool]]:
    """Pending items of the job that may be sent now.

    'pending' is a literal, not a bound parameter: psycopg prepares a statement once it has
    run a few times, and PostgreSQL's generic plan for it cannot match `state = $2` to the
    predicate of the partial index ix_items_pending, so it would scan every item of the job.
    """
    return [
        items_t.c.job_id == job_id,
        items_t.c.state == literal(PENDING, literal_execute=True),
        or_(items_t.c.not_before.is_(None), items_t.c.not_before <= now),
    ]


def claim_statement(
    dialect: str, job_id: int, run_id: str, limit: int, now: datetime
) -> ReturningUpdate[Any]:
    """UPDATE ... RETURNING of the next `limit` claimable items, in file order.

    On PostgreSQL the pick is `SELECT ... FOR UPDATE SKIP LOCKED` in a MATERIALIZED CTE: the
    lock lets concurrent claimers pass each other instead of queueing or claiming twice, and
    the fence stops the planner from folding the LIMIT subquery into the UPDATE, where it may
    be re-evaluated and update more rows than the LIMIT. SQLite claims under BEGIN IMMEDIATE,
    so a plain IN (subquery) is already exclusive.
    """
    chosen = (
        select(items_t.c.id)
        .where(*_claimable(job_id, now))
        .order_by(items_t.c.position)
        .limit(limit)
    )
    claim = update(items_t).values(state=RUNNING, run_id=run_id, not_before=None, updated_at=now)
    if dialect == "postgresql":
        fenced = chosen.with_for_update(skip_locked=True).cte("claimable")
        fenced = fenced.prefix_with("MATERIALIZED")
        claim = claim.where(items_t.c.id == fenced.c.id)
    else:
        claim = claim.where(items_t.c.id.in_(chosen.scalar_subquery()))
    return claim.returning(
        items_t.c.id,
        items_t.c.position,
        items_t.c.custom_id,
        items_t.c.url,
        items_t.c.model,
        items_t.c.body,
        items_t.c.attempts,
    )


def next_not_before_query(job_id: int, now: datetime) -> Executable:
    """min(not_before) over the deferred pending items, answered from ix_items_deferred."""
    return select(func.min(items_t.c.not_before)).where(
        items_t.c.job_id == job_id,
        items_t.c.state == literal(PENDING, literal_execute=True),
        items_t.c.not_before > now,
    )


INSERT_COLUMNS = (
    "job_id",
    "position",
    "custom_id",
    "url",
    "model",
    "body",
    "extra",
    "request_hash",
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
    for item in items:
        chunk.append(
            (
                job_id,
                item.position,
                item.custom_id,
                item.url,
                item.model,
                item.body.decode(),
                item.extra.decode() if item.extra else None,
                request_hash(item.url, item.body),
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


def _refused(exc: DatabaseError) -> bool:
    """The database said no (locked, full, read-only, gone, not a database): not a bug."""
    return isinstance(exc, OperationalError) or type(exc) is DatabaseError


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
