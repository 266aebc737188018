"""What the ledger hands out and takes in: plain records, kept apart from the SQL in store.py.

Times are naive UTC throughout: both SQLite and PostgreSQL `timestamp without time zone` store
them as given, so a value read back compares with `utcnow()` whatever the server's time zone.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect

from batchrunner.ledger.models import FINISHED_STATES, PENDING, RUNNING

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


@dataclass(slots=True)
class AttemptRecord:
    """One request's outcome. `item_state` is None while the item will be tried again.

    An `item_state` of PENDING hands the item back to the ledger; with `not_before` set, no run
    claims it before that time (a retry the runner does not want to wait for in memory).
    """

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
    not_before: datetime | None = None

    def _details(self) -> tuple[Any, ...]:
        """The error and usage of the attempt, in DETAIL_COLUMNS order: the attempt row and the
        item row both end with them."""
        return (
            self.error_kind,
            self.error_code,
            self.error_message,
            self.input_tokens,
            self.cached_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.cost_usd,
            self.latency_ms,
        )

    def attempt_row(self, time: TimeToSql) -> tuple[Any, ...]:
        """The row for the attempts table, in ATTEMPT_COLUMNS order."""
        return (
            self.item_id,
            self.job_id,
            self.run_id,
            self.number,
            time(self.started_at),
            time(self.ended_at),
            self.outcome,
            self.http_status,
            *self._details(),
        )

    def item_row(self, time: TimeToSql) -> tuple[Any, ...]:
        """The item's new values in ITEM_RESULT_COLUMNS order, then its id and this run's id
        (the update only applies while this run holds the item).

        Only a finished item gets `finished_at`: one handed back to pending is not done, and
        counting it would inflate the run's rate in `status`.
        """
        back_to_pending = self.item_state == PENDING
        return (
            self.item_state or RUNNING,
            None if back_to_pending else self.run_id,
            time(self.not_before) if back_to_pending else None,
            self.number,
            self.http_status,
            self.finish_reason,
            self.response,
            time(self.ended_at),
            time(self.ended_at) if self.item_state in FINISHED_STATES else None,
            *self._details(),
            self.item_id,
            self.run_id,
        )


# Column orders of AttemptRecord.attempt_row and .item_row (before its two key values).
DETAIL_COLUMNS = (
    "error_kind",
    "error_code",
    "error_message",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
)
ATTEMPT_COLUMNS = (
    "item_id",
    "job_id",
    "run_id",
    "number",
    "started_at",
    "ended_at",
    "outcome",
    "http_status",
    *DETAIL_COLUMNS,
)
ITEM_RESULT_COLUMNS = (
    "state",
    "run_id",
    "not_before",
    "attempts",
    "http_status",
    "finish_reason",
    "response",
    "updated_at",
    "finished_at",
    *DETAIL_COLUMNS,
)


@dataclass
class ModelTotals:
    """One model's share of a job: what `status` shows per model."""

    items: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
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
    reused: int = 0  # items that took an earlier job's answer (--reuse): no request, no cost
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    models: dict[str, ModelTotals] = field(default_factory=dict)

    @property
    def unpriced_models(self) -> list[str]:
        return sorted(name for name, totals in self.models.items() if totals.unpriced)


class QueriesMixin:
    """A group of ledger queries mixed into `Ledger`, which provides the transactions."""

    def _write(self, doing: str) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError
