"""The ledger's tables: jobs, their items, every attempt sent, and the runs that sent them.

Alembic migrations in `migrations/` create these; a test checks that the migrated schema and
these models agree. Times are UTC. JSON payloads are stored as text exactly as sent or received.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

CONCURRENT = "concurrent"  # a job's mode: one request per item
BATCH = "batch"  # a job's mode: Batch API files
MODES = (CONCURRENT, BATCH)
PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
ITEM_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
# The pending items that wait for a time: few, and looked up only to know how long to sleep.
DEFERRED = "state = 'pending' AND not_before IS NOT NULL"


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One submitted job file and the options it runs with."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(20))  # concurrent | batch
    state: Mapped[str] = mapped_column(String(20))  # pending | running | stopped | completed
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    source_path: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64), index=True)
    item_count: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Why the job's last run stopped early ("auth: ...", "budget: ...", "interrupted") and
    # when; cleared when a run starts. `status` tells the user what to do next from it.
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Item(Base):
    """One request of a job: what to send, where it stands, and what came back."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "custom_id", name="uq_items_job_custom_id"),
        Index("ix_items_job_position", "job_id", "position"),
        Index(
            "ix_items_pending",
            "job_id",
            "position",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
        Index(
            "ix_items_running",
            "job_id",
            "run_id",
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
        Index(
            "ix_items_deferred",
            "job_id",
            "not_before",
            sqlite_where=text(DEFERRED),
            postgresql_where=text(DEFERRED),
        ),
        # Every column `Ledger.summary` reads: `status` counts and sums from the index alone.
        # finished_at before the sums: a finishing item is appended, not scattered (0004);
        # finish_reason and output_valid last, only read (flagged answers, 0006 and 0007).
        Index(
            "ix_items_summary",
            "job_id",
            "state",
            "model",
            "error_kind",
            "finished_at",
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cost_usd",
            "attempts",
            "reused",
            "finish_reason",
            "output_valid",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    extra: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(20), default=PENDING)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The attempts already used when `run --retry-failed` put the item back to pending: it
    # gets max_attempts more from there (attempts stays cumulative, its history is kept).
    attempts_floor: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cached_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A structured answer checked against what its request asked (a JSON schema, a JSON
    # object): true or false, NULL when nothing was asked; why an invalid one is (0007).
    output_valid: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    invalid_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # A pending item is not claimed before this time (a deferred retry); NULL: claim at once.
    not_before: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The Batch API batch (batches.id) that holds the item while it is running in batch mode.
    batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # sha256 of the canonical url and body: finds an earlier paid-for answer (--reuse). Not
    # indexed: an index cost every answered item a random insert; --reuse scans instead (0005).
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reused: Mapped[bool] = mapped_column(Boolean, default=False)
    # The part of the request other items can share, hashed, and its length in tokens: the
    # provider's prompt cache serves it to the group's later requests (prefixes.py; 0008).
    prefix_group: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prefix_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Attempt(Base):
    """One request sent for an item: so paid retries are visible and costs explainable."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_item", "item_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime] = mapped_column(DateTime)
    # succeeded | retry | failed | stopped | unknown (abandoned in flight: possibly billed)
    outcome: Mapped[str] = mapped_column(String(20))
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cached_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_valid: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    invalid_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Run(Base):
    """One process working on a job; its heartbeat tells a live run from a dead one."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Pause(Base):
    """A run holding every request back after a 429, from when until when (0009)."""

    __tablename__ = "pauses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    until_at: Mapped[datetime] = mapped_column(DateTime)


class RemoteBatch(Base):
    """One Batch API batch of a job, recorded before it exists remotely.

    state: packing (items assigned, nothing uploaded) -> uploaded (input file known) ->
    submitted (remote batch known) -> settled (output reconciled into the items), or abandoned
    (never created: its items went back to pending). `token` goes into the remote batch's
    metadata, so a batch created by a process that died before recording it is found again.
    """

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(36), unique=True)
    state: Mapped[str] = mapped_column(String(20))
    endpoint: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(200))
    request_count: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    remote_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    input_file_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    remote_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: errors.data
    usage: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: the API's batch usage
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# Core table handles for the query modules (store, runs, batches): one place for the casts.
jobs_t = cast(Table, Job.__table__)
items_t = cast(Table, Item.__table__)
attempts_t = cast(Table, Attempt.__table__)
runs_t = cast(Table, Run.__table__)
batches_t = cast(Table, RemoteBatch.__table__)
pauses_t = cast(Table, Pause.__table__)
