"""Prefix groups: items.prefix_group and prefix_tokens, for cache-aware runs (issue 17).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

At submit each item gets the hash of the part of its request that other items can share (tools,
the structured output's schema, system and developer messages, every message but the last) and
that part's length in tokens: the provider's prompt cache can serve that part to every request
of the group after the first. NULL for a request with nothing to share (a lone message, an
embedding). The runners read both with the claimed item; nothing queries by them, so no index.

Plain ADD / DROP COLUMN on both backends, no batch mode (see 0002).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("items", sa.Column("prefix_group", sa.String(32), nullable=True))
    op.add_column("items", sa.Column("prefix_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("items", "prefix_tokens")
    op.drop_column("items", "prefix_group")
