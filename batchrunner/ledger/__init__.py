"""The ledger: every job, item and attempt, in SQLite or PostgreSQL. Rows come out as the typed
records of records.py; results go in as `outcome.Outcome`s."""

from batchrunner.ledger.engine import database_url, describe, writable
from batchrunner.ledger.records import (
    AttemptRow,
    BatchRow,
    ClaimedItem,
    ItemRow,
    JobSummary,
    PackedItem,
    WorkerStatus,
)
from batchrunner.ledger.store import Ledger

__all__ = [
    "AttemptRow",
    "BatchRow",
    "ClaimedItem",
    "ItemRow",
    "JobSummary",
    "Ledger",
    "PackedItem",
    "WorkerStatus",
    "database_url",
    "describe",
    "writable",
]
