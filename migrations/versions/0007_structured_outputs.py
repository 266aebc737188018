"""Structured outputs checked: items.output_valid / invalid_reason and the same on attempts,
and output_valid in the summary's covering index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

An answer to a request that asked for a JSON schema (or a JSON object) is checked: output_valid
is true or false (NULL: nothing was asked, or there was no answer), invalid_reason says what is
wrong with an invalid one. The attempts table keeps both, so a retried invalid answer shows why.

`status` counts the invalid answers next to the ones cut by length: output_valid joins
ix_items_summary last (read-only, as finish_reason in 0006), so the summary still reads the
index alone. invalid_reason stays out of the index: it is free text.

Plain ADD / DROP COLUMN on both backends, no batch mode (see 0002).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
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
    "finish_reason",
]


def upgrade() -> None:
    for table in ("items", "attempts"):
        op.add_column(table, sa.Column("output_valid", sa.Boolean(), nullable=True))
        op.add_column(table, sa.Column("invalid_reason", sa.Text(), nullable=True))
    op.drop_index("ix_items_summary", table_name="items")
    op.create_index("ix_items_summary", "items", [*SUMMARY_COLUMNS, "output_valid"])


def downgrade() -> None:
    op.drop_index("ix_items_summary", table_name="items")
    op.create_index("ix_items_summary", "items", SUMMARY_COLUMNS)
    for table in ("attempts", "items"):
        op.drop_column(table, "invalid_reason")
        op.drop_column(table, "output_valid")
