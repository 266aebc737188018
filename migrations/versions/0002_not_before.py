"""Deferred items: items.not_before, and a partial index to find the earliest one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

A plain ADD / DROP COLUMN on both backends (SQLite has dropped columns since 3.35). No batch
mode on purpose: it would rebuild `items` on SQLite, and with foreign keys on, dropping the old
table would cascade into `attempts`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Written out rather than imported from the models: a migration must not change with them.
DEFERRED = "state = 'pending' AND not_before IS NOT NULL"


def upgrade() -> None:
    op.add_column("items", sa.Column("not_before", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_items_deferred",
        "items",
        ["job_id", "not_before"],
        sqlite_where=sa.text(DEFERRED),
        postgresql_where=sa.text(DEFERRED),
    )


def downgrade() -> None:
    op.drop_index("ix_items_deferred", table_name="items")
    op.drop_column("items", "not_before")
