"""What the ledger hands out and takes in: typed records, kept apart from the SQL. Rows leave
the ledger as these dataclasses, never as SQLAlchemy rows, so a renamed column is a type error.

Times are naive UTC throughout: both SQLite and PostgreSQL `timestamp without time zone` store
them as given, so a value read back compares with `utcnow()` whatever the server's time zone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, DateTime, Dialect, Table

from batchrunner.outcome import Result

if TYPE_CHECKING:
    from batchrunner.ledger.outages import Outage

# Turns a time into what the ledger's driver stores (SQLite: text; PostgreSQL: as is).
TimeToSql = Callable[[datetime | None], Any]


def time_to_sql(dialect: Dialect) -> TimeToSql:
    """The DateTime conversion SQLAlchemy would apply, for SQL sent straight to the driver."""
    convert = DateTime().dialect_impl(dialect).bind_processor(dialect)
    if convert is None:
        return lambda value: value
    return lambda value: None if value is None else convert(value)


def driver_sql(dialect: Dialect, sql: str) -> str:
    """`sql` written with `?` markers, in the driver's own parameter style."""
    return sql if dialect.paramstyle == "qmark" else sql.replace("?", "%s")


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
    attempts_floor: int  # attempts used before `run --retry-failed`: not counted against it
    prefix_group: str | None = None  # the group of requests sharing its head (prefixes.py)
    prefix_tokens: int | None = None  # that head's length in tokens


@dataclass(frozen=True, slots=True)
class ItemRow:
    """An item as the ledger holds it: its request, where it stands, and its result."""

    id: int
    job_id: int
    position: int  # its line in the job file: exports keep the file's order
    custom_id: str
    url: str
    model: str
    body: str
    extra: str | None  # the input line's other top-level keys, as JSON
    state: str
    run_id: str | None
    batch_id: int | None
    attempts: int
    attempts_floor: int
    not_before: datetime | None
    request_hash: str | None
    reused: bool
    prefix_group: str | None  # the group of requests sharing its head (prefixes.py)
    prefix_tokens: int | None  # that head's length in tokens
    created_at: datetime
    updated_at: datetime | None
    finished_at: datetime | None
    result: Result


# The items columns an ItemRow holds besides its result (a test checks they are all of them).
ITEM_ROW_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ItemRow) if f.name != "result")


def item_row(values: Sequence[Any]) -> ItemRow:
    """An ItemRow from ITEM_ROW_COLUMNS then RESULT_COLUMNS, in that order."""
    split = len(ITEM_ROW_COLUMNS)
    return ItemRow(*values[:split], *[Result(*values[split:])])  # mypy cannot count a slice


@dataclass(frozen=True, slots=True)
class PackedItem:
    """An item as a batch input line needs it."""

    id: int
    position: int
    custom_id: str
    url: str
    body: str
    prefix_group: str | None  # lines of a group carry prompt_cache_keys of their own
    prefix_tokens: int | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One request sent. Its result holds what the attempts table keeps: no answer (the item
    has it), so finish_reason and response are None."""

    id: int
    item_id: int
    job_id: int
    run_id: str | None
    number: int
    started_at: datetime
    ended_at: datetime
    outcome: str
    result: Result


@dataclass(frozen=True, slots=True)
class RunRow:
    """One process's run of a job."""

    id: str
    job_id: int
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A live run as `status` shows it."""

    id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    requests_last_minute: int


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A Batch API batch as the ledger records it (see models.RemoteBatch for its states)."""

    id: int
    job_id: int
    token: str
    state: str
    endpoint: str
    model: str
    request_count: int
    prompt_tokens: int
    remote_id: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    remote_status: str | None
    completed: int
    failed: int
    errors: str | None  # JSON: the API's errors.data
    usage: str | None  # JSON: the API's batch usage
    created_at: datetime
    updated_at: datetime | None
    finished_at: datetime | None


def row_columns(table: Table, row_type: type[Any]) -> list[Column[Any]]:
    """The table's columns in the order of `row_type`'s fields, to select rows for it."""
    return [table.c[f.name] for f in fields(row_type)]


@dataclass
class ModelTotals:
    """One model's share of a job: what `status` shows per model."""

    items: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # answered items whose cost is unknown (no price for the model)


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
    stop_reason: str | None = None  # why its last run stopped early (None: it did not)
    stopped_at: datetime | None = None
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
    last_finished_at: datetime | None = None  # its latest item's end: a stopped run's rate
    reused: int = 0  # items that took an earlier job's answer (--reuse): no request, no cost
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    # succeeded, but cut (finish_reason -> n) or failing its structured check (invalid_output)
    flagged: dict[str, int] = field(default_factory=dict)
    models: dict[str, ModelTotals] = field(default_factory=dict)

    @property
    def unpriced_models(self) -> list[str]:
        return sorted(name for name, totals in self.models.items() if totals.unpriced)


class QueriesMixin:
    """A group of ledger queries mixed into `Ledger`, which provides the transactions."""

    url: str  # the ledger's database URL, for messages
    _outage: Outage  # how long its database has been away (see outages.py)

    def _write(self, doing: str, recorded: bool = True) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError
