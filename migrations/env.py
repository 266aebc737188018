"""Alembic environment: batchrunner passes its own connection; by hand, BATCHRUNNER_DB is used
(SQLite or PostgreSQL), opened the way batchrunner opens it (see batchrunner/ledger/engine.py).
"""

from __future__ import annotations

from alembic import context

from batchrunner.ledger.engine import database_url, open_engine
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
    engine = open_engine(database_url())
    try:
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
