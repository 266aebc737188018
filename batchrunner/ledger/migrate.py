"""Apply the Alembic migrations automatically, so no one ever runs one by hand."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from batchrunner.ledger.engine import READ_ONLY

PACKAGE_DIR = Path(__file__).resolve().parent.parent
MIGRATION_LOCK = 0x62726C6564676572  # "brledger": a PostgreSQL advisory lock key


def migrations_dir() -> Path:
    """`batchrunner/_migrations` in an installed wheel, `migrations/` in a source checkout."""
    installed = PACKAGE_DIR / "_migrations"
    if installed.is_dir():
        return installed
    return PACKAGE_DIR.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the ledger to `revision` unless it is there already (a cheap check first)."""
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
        conn.rollback()
    if revision == "head" and current == set(script.get_heads()):
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes opening a new ledger at once: the second waits here, then Alembic
            # finds the schema already current (on SQLite, BEGIN IMMEDIATE does the same).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
