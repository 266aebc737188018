"""The ledger: every job, item and attempt, in SQLite or PostgreSQL."""

from batchrunner.ledger.engine import database_url, describe
from batchrunner.ledger.store import AttemptRecord, ClaimedItem, JobSummary, Ledger

__all__ = ["AttemptRecord", "ClaimedItem", "JobSummary", "Ledger", "database_url", "describe"]
