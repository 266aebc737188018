"""Rate-limit pauses: when a run held every request back after a 429, and until when.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

A 429 pauses every worker of a run until the server's time (runner/limits.py). The attempts
table keeps the 429 answers but not the waits they caused; `report` plots those from here. A run
writes its pauses in a batch at each heartbeat and at its end (a pause extended by further 429s
is one row), so there are few rows: no index beyond the job's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pauses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("until_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_pauses_job_id", "pauses", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_pauses_job_id", table_name="pauses")
    op.drop_table("pauses")
