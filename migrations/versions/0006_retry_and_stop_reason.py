"""Retrying failed items and telling why a job stopped: items.attempts_floor, jobs.stop_reason
and jobs.stopped_at, and finish_reason in the summary's covering index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

`run --retry-failed` puts failed items back to pending with attempts_floor = attempts: an item
has used up its attempts when attempts - attempts_floor reaches max_attempts, so a retried item
gets a fresh allowance while its attempts count and history stay whole.

A run that stops early records its reason with the job (stop_reason, stopped_at), which
`status` turns into what to do next; the next run clears them.

`status` counts the answers cut by `length` or `content_filter` apart from plain successes:
finish_reason joins ix_items_summary (last, as a read-only column: it changes nothing in where a
finishing item lands in the index), so the summary still reads the index alone.

Plain ADD / DROP COLUMN on both backends, no batch mode (see 0002).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# Written out rather than imported from the models: a migration must not change with them.
SUMMARY_COLUMNS = [
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
]


def upgrade() -> None:
    op.add_column(
        "items",
        sa.Column("attempts_floor", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("jobs", sa.Column("stop_reason", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("stopped_at", sa.DateTime(), nullable=True))
    op.drop_index("ix_items_summary", table_name="items")
    op.create_index("ix_items_summary", "items", [*SUMMARY_COLUMNS, "finish_reason"])


def downgrade() -> None:
    op.drop_index("ix_items_summary", table_name="items")
    op.create_index("ix_items_summary", "items", SUMMARY_COLUMNS)
    op.drop_column("jobs", "stopped_at")
    op.drop_column("jobs", "stop_reason")
    op.drop_column("items", "attempts_floor")
