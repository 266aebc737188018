"""What the ledger hands out and takes in: plain records, kept apart from the SQL in store.py.

Times are naive UTC throughout: both SQLite and PostgreSQL `timestamp without time zone` store
them as given, so a value read back compares with `utcnow()` whatever the server's time zone.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from batchrunner.ledger.models import FINISHED_STATES, PENDING, RUNNING


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

    def _usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
        }

    def _error(self) -> dict[str, Any]:
        return {
            "error_kind": self.error_kind,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }

    def attempt_row(self) -> dict[str, Any]:
        """The row for the attempts table."""
        return {
            "item_id": self.item_id,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "number": self.number,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "http_status": self.http_status,
            **self._error(),
            **self._usage(),
        }

    def item_row(self) -> dict[str, Any]:
        """The new values of the item; `b_id` and `b_run` select it (only if this run holds it).

        Only a finished item gets `finished_at`: one handed back to pending is not done, and
        counting it would inflate the run's rate in `status`.
        """
        back_to_pending = self.item_state == PENDING
        return {
            "b_id": self.item_id,
            "b_run": self.run_id,
            "state": self.item_state or RUNNING,
            "run_id": None if back_to_pending else self.run_id,
            "not_before": self.not_before if back_to_pending else None,
            "attempts": self.number,
            "http_status": self.http_status,
            "finish_reason": self.finish_reason,
            "response": self.response,
            "updated_at": self.ended_at,
            "finished_at": self.ended_at if self.item_state in FINISHED_STATES else None,
            **self._error(),
            **self._usage(),
        }


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
