"""The ledger: one database URL, its transactions and what the database refuses, and the
queries of items being worked on (claims, outcomes, reads). The queries of jobs (jobs.py), runs
(runs.py) and Batch API batches (batches.py) are mixed in; results are written by results.py.
Only ledger/ writes SQL.

Writes are batched (Core executemany, one transaction per batch, never one commit per item) and
each transaction is short, so a status reader or a second process never waits long.

The same statements run on SQLite and PostgreSQL. Where the two differ in how writers exclude
each other, each gets its own form: SQLite serialises every write transaction (BEGIN IMMEDIATE,
see engine.py), while PostgreSQL runs them side by side at READ COMMITTED, so there the claim
locks the rows it picks (FOR UPDATE SKIP LOCKED) and start_run locks the job's row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.sql.dml import ReturningUpdate

from batchrunner.errors import LedgerError, LedgerUnavailable, UsageError, ledger_refusal
from batchrunner.ledger.batches import BatchQueries
from batchrunner.ledger.engine import READ_ONLY, describe, open_engine, writable
from batchrunner.ledger.history import HistoryQueries
from batchrunner.ledger.jobs import JobQueries
from batchrunner.ledger.models import (
    FAILED,
    PENDING,
    RUNNING,
    attempts_t,
    items_t,
    jobs_t,
)
from batchrunner.ledger.outages import Outage, database_away, outlasting, outlasting_read
from batchrunner.ledger.records import (
    ITEM_ROW_COLUMNS,
    AttemptRow,
    ClaimedItem,
    ItemRow,
    JobSummary,
    item_row,
    utcnow,
)
from batchrunner.ledger.results import (
    ATTEMPT_KEYS,
    ATTEMPT_RESULT_COLUMNS,
    POSSIBLY_BILLED_REQUESTS,
    POSSIBLY_BILLED_USD,
    count_invalid_answers,
    mask_outcomes,
    write_abandoned,
    write_outcomes,
)
from batchrunner.ledger.runs import RunQueries
from batchrunner.outcome import RESULT_COLUMNS, Outcome, Result
from batchrunner.redact import mask

__all__ = ["ClaimedItem", "ItemRow", "JobSummary", "Ledger", "utcnow"]

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
SCHEMA_HEAD = "0009"


class Ledger(JobQueries, BatchQueries, RunQueries, HistoryQueries):
    """The ledger at one database URL; migrated to the latest schema when opened.

    With `create` (what `submit` does) a ledger that is not there is made; without it (every
    command that only reads or changes existing jobs) a missing SQLite file, or a database with
    no ledger in it, is a UsageError and nothing is created. A ledger of a newer batchrunner is
    a UsageError too (migrate.py), and stays as it was.

    `read_only` (the commands that only read) opens a SQLite file read-only (engine.py), so a
    ledger on a read-only mount or another user's can be read; a schema that is behind is
    brought to head first through a writable engine, where this process may write."""

    def __init__(self, url: str, *, create: bool = True, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self._outage = Outage(describe(url))
        with self._errors("open"):
            self.engine: Engine = open_engine(url, create=create, read_only=read_only)
            try:
                self._bring_to_head(create)
            except BaseException:
                self.engine.dispose()  # a ledger that could not be opened keeps nothing open
                raise

    def _bring_to_head(self, create: bool) -> None:
        revisions = self._schema_revisions()
        if revisions is None and not create:
            raise UsageError(
                f"no ledger in {describe(self.url)}: it holds no batchrunner tables (submit a "
                "job first, or check --db)"
            )
        if revisions != [SCHEMA_HEAD]:
            # Alembic only when the schema is behind (or new): importing it costs about a
            # tenth of a second of every command's start-up.
            from batchrunner.ledger import migrate

            if not self.read_only:
                migrate.upgrade(self.engine)
                return
            if not writable(self.url):
                raise UsageError(
                    f"the ledger at {describe(self.url)} has schema revision "
                    f"{', '.join(revisions or [])}, not this batchrunner's {SCHEMA_HEAD}, and "
                    "is read-only here: open it once with a command that writes (batchrunner "
                    "run) as a user who may write it, or read it with the batchrunner that "
                    "wrote it (the ledger was not changed)"
                )
            writer = open_engine(self.url, create=False)
            try:
                migrate.upgrade(writer)
            finally:
                writer.dispose()

    def _schema_revisions(self) -> list[str] | None:
        """The ledger's schema revisions, one read of alembic_version; None when it has no
        such table (a new ledger, or a database that holds none). A revision other than
        SCHEMA_HEAD goes through `migrate.upgrade`, which decides."""
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            for tries_left in (1, 0):
                try:
                    found = conn.execute(text("SELECT version_num FROM alembic_version")).all()
                    break
                except DatabaseError:
                    conn.rollback()
                    if not inspect(conn).has_table("alembic_version"):
                        return None
                    if not tries_left:
                        raise  # a real fault, not a missing table
                    # else another process created the ledger meanwhile: read it again
            conn.rollback()
        return [row[0] for row in found]

    def close(self) -> None:
        self.engine.dispose()

    def wait_for_database(self, seconds: float) -> None:
        """How long a run's reads and writes wait for a database that went away (0: not at
        all, as for every other command) before the refusal stops the run."""
        self._outage.wait_s = seconds

    def stop_waiting(self) -> None:
        """Give up on a database that is away now, and from now on (a second Ctrl-C): the
        calls waiting for it raise their refusal at once."""
        self._outage.abandon()

    @contextmanager
    def _errors(self, doing: str, recorded: bool = True) -> Iterator[None]:
        """What the database or the disk refused (locked, full, read-only, not a database, a
        folder that cannot be created) becomes a LedgerError that names the ledger (and says
        to resume, or, with `recorded` False, that nothing was recorded). Errors that mean a
        bug (a broken constraint, bad SQL) stay tracebacks."""
        try:
            yield
        except (DatabaseError, OSError) as exc:
            if isinstance(exc, DatabaseError) and not _refused(exc):
                raise
            # One line: libpq gives its reasons on several ("server closed the connection
            # unexpectedly\n\tThis probably means ...").
            if isinstance(exc, DatabaseError):
                reason = " ".join(str(exc.orig).split())
            else:
                reason = _os_reason(exc)
            hint = next((h for cause, h in HINTS.items() if cause in reason), "")
            where = describe(self.url)
            if isinstance(exc, DatabaseError) and database_away(exc):
                raise LedgerUnavailable(doing, where, reason + hint, recorded=recorded) from None
            raise LedgerError(
                ledger_refusal(doing, where, reason + hint), recorded=recorded
            ) from None

    @contextmanager
    def _write(self, doing: str, recorded: bool = True) -> Iterator[Connection]:
        with self._errors(doing, recorded), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with (
            self._errors("read"),
            self.engine.connect().execution_options(**{READ_ONLY: True}) as conn,
        ):
            yield conn

    # -- items --------------------------------------------------------------------------------

    def claim_pending(self, job_id: int, run_id: str, limit: int) -> list[ClaimedItem]:
        """Mark up to `limit` pending items, in file order, as running for this run; items whose
        `not_before` is still ahead wait for a later claim.

        A repeat after a lost connection first takes the items the lost try claimed, in case
        its commit landed: they carry this run and that try's exact `updated_at`."""
        now = utcnow()

        def claim(again: bool) -> list[Any]:
            with self._write("claim items from") as conn:
                rows = list(conn.execute(claimed_before(job_id, run_id, now))) if again else []
                if len(rows) < limit:
                    statement = claim_statement(
                        conn.dialect.name, job_id, run_id, limit - len(rows), now
                    )
                    rows += conn.execute(statement).all()
            return rows

        claimed = [ClaimedItem(*row) for row in self._outage.outlast(claim)]
        claimed.sort(key=lambda item: item.position)
        return claimed

    @outlasting
    def fail_pending_alike(self, job_id: int, url: str, model: str | None, result: Result) -> int:
        """Fail, unsent, the job's pending items of one endpoint (and model, when given) with
        `result`'s error: one answer proved they would all get it (a missing model or path).
        Their attempts stay as they were: none of them was sent."""
        now = utcnow()
        alike = [items_t.c.job_id == job_id, items_t.c.state == PENDING, items_t.c.url == url]
        if model is not None:
            alike.append(items_t.c.model == model)
        with self._write("fail items in") as conn:
            return int(
                conn.execute(
                    update(items_t)
                    .where(*alike)
                    .values(
                        state=FAILED,
                        error_kind=result.error_kind,
                        error_code=result.error_code,
                        error_message=mask(result.error_message or ""),  # a server's words
                        not_before=None,
                        updated_at=now,
                        finished_at=now,
                    )
                ).rowcount
            )

    @outlasting_read
    def next_not_before(self, job_id: int) -> datetime | None:
        """The earliest future `not_before` among the job's pending items, or None: when
        nothing is claimable, a runner sleeps until then instead of polling."""
        with self._read() as conn:
            earliest = conn.execute(next_not_before_query(job_id, utcnow())).scalar()
        return cast(datetime | None, earliest)

    def record_outcomes(self, outcomes: list[Outcome]) -> None:
        """Write a batch of concurrent mode's outcomes in one transaction: the attempt rows
        and the items (where this run still holds them). Repeated after a lost connection,
        it writes each attempt row once whether the lost try's commit landed or not."""
        if not outcomes:
            return
        mask_outcomes(outcomes)

        def record(again: bool) -> None:
            with self._write("record results in") as conn:
                write_outcomes(conn, outcomes, "run_id", again=again)

        self._outage.outlast(record)

    def record_abandoned(self, job_id: int, outcomes: list[Outcome]) -> None:
        """Requests abandoned in flight (results.write_abandoned), and what they may have cost
        added to the job's possibly-billed total, in one transaction (the job's row locked on
        PostgreSQL: workers of one job add to it)."""
        if not outcomes:
            return
        mask_outcomes(outcomes)
        worst = sum(o.result.cost_usd or 0.0 for o in outcomes)
        with self._write("record abandoned requests in") as conn:
            write_abandoned(conn, outcomes)
            options = conn.execute(
                select(jobs_t.c.options).where(jobs_t.c.id == job_id).with_for_update()
            ).one()[0]
            merged = dict(options)
            merged[POSSIBLY_BILLED_REQUESTS] = merged.get(POSSIBLY_BILLED_REQUESTS, 0) + len(
                outcomes
            )
            merged[POSSIBLY_BILLED_USD] = merged.get(POSSIBLY_BILLED_USD, 0.0) + worst
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(options=merged))

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
        keys = ("id", *ATTEMPT_KEYS)
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

    @outlasting_read
    def invalid_answers(self, floors: dict[int, int]) -> dict[int, int]:
        """How many answers that failed their structured-output check each item (id -> its
        attempts_floor) got since its floor: what --retry-invalid allows is what is left."""
        with self._read() as conn:
            return count_invalid_answers(conn, floors)


# A ClaimedItem's fields.
CLAIMED_COLUMNS = (
    items_t.c.id,
    items_t.c.position,
    items_t.c.custom_id,
    items_t.c.url,
    items_t.c.model,
    items_t.c.body,
    items_t.c.attempts,
    items_t.c.attempts_floor,
    items_t.c.prefix_group,
    items_t.c.prefix_tokens,
)


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
    return claim.returning(*CLAIMED_COLUMNS)


def claimed_before(job_id: int, run_id: str, at: datetime) -> Executable:
    """The items a claim of this run at `at` took (when its commit landed)."""
    return select(*CLAIMED_COLUMNS).where(
        items_t.c.job_id == job_id,
        items_t.c.state == RUNNING,
        items_t.c.run_id == run_id,
        items_t.c.updated_at == at,
    )


def next_not_before_query(job_id: int, now: datetime) -> Executable:
    """min(not_before) over the deferred pending items, answered from ix_items_deferred."""
    return select(func.min(items_t.c.not_before)).where(
        items_t.c.job_id == job_id,
        items_t.c.state == literal(PENDING, literal_execute=True),
        items_t.c.not_before > now,
    )


def _refused(exc: DatabaseError) -> bool:
    """The database said no (locked, full, read-only, gone, not a database): not a bug."""
    return isinstance(exc, OperationalError) or type(exc) is DatabaseError


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
