"""Alembic environment: batchrunner passes its own connection; by hand, BATCHRUNNER_DB is used."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from batchrunner.ledger.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("BATCHRUNNER_DB", "sqlite:///batchrunner.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=os.environ.get("BATCHRUNNER_DB", "sqlite:///batchrunner.db"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
