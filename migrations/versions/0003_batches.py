"""Batch API mode and reuse: the batches table, items.batch_id, request_hash and reused.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Plain ADD / DROP COLUMN on both backends, as in 0002 (no batch mode: it would rebuild `items`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

SUCCEEDED = "state = 'succeeded'"  # written out: a migration must not change with the models


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("token", sa.String(36), nullable=False, unique=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("remote_id", sa.String(100), nullable=True),
        sa.Column("input_file_id", sa.String(100), nullable=True),
        sa.Column("output_file_id", sa.String(100), nullable=True),
        sa.Column("error_file_id", sa.String(100), nullable=True),
        sa.Column("remote_status", sa.String(20), nullable=True),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Text(), nullable=True),
        sa.Column("usage", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_batches_job_id", "batches", ["job_id"])
    op.add_column("items", sa.Column("batch_id", sa.Integer(), nullable=True))
    op.add_column("items", sa.Column("request_hash", sa.String(64), nullable=True))
    op.add_column(
        "items", sa.Column("reused", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index("ix_items_batch_id", "items", ["batch_id"])
    op.create_index(  # reuse looks only for answers that succeeded
        "ix_items_request_hash",
        "items",
        ["request_hash"],
        sqlite_where=sa.text(SUCCEEDED),
        postgresql_where=sa.text(SUCCEEDED),
    )


def downgrade() -> None:
    op.drop_index("ix_items_request_hash", table_name="items")
    op.drop_index("ix_items_batch_id", table_name="items")
    op.drop_column("items", "reused")
    op.drop_column("items", "request_hash")
    op.drop_column("items", "batch_id")
    op.drop_index("ix_batches_job_id", table_name="batches")
    op.drop_table("batches")
