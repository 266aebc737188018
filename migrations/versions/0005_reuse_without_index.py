"""Drop ix_items_request_hash: every answered item paid for it, for the sake of `--reuse`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

The partial index on request_hash took one random B-tree insert per answered item; at
thousands of results a second it was the most expensive of the item indexes (about a tenth of
a run's CPU per item on SQLite). Only `submit --reuse` reads request_hash, once per job: it now
finds earlier answers in one pass over the ledger's succeeded items (a hash lookup into the new
job's hashes), which costs a few seconds on a ledger of millions, once, and only when asked.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_items_request_hash", table_name="items")


def downgrade() -> None:
    op.create_index(
        "ix_items_request_hash",
        "items",
        ["request_hash"],
        sqlite_where=text("state = 'succeeded'"),
        postgresql_where=text("state = 'succeeded'"),
    )
