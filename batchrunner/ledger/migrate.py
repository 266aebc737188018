"""Apply the Alembic migrations automatically, so no one ever runs one by hand.

A new SQLite ledger is the one case that skips Alembic: importing it and running 0001-0007
takes about a tenth of a second of `submit` (more than ingesting 10,000 lines). Such a ledger
is created from SQLITE_SCHEMA, the very statements a fresh Alembic upgrade leaves in
sqlite_master, in the same order, with the same alembic_version row; a test checks that the
two ledgers are identical. The shortcut is taken only while migrations/versions holds exactly
SQLITE_SCHEMA_REVISIONS: a new migration sends new ledgers through Alembic (correct, only
slower) until SQLITE_SCHEMA is captured again (`python -m batchrunner.ledger.migrate`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from batchrunner.errors import UsageError
from batchrunner.ledger.engine import READ_ONLY, open_engine

if TYPE_CHECKING:
    from alembic.config import Config

PACKAGE_DIR = Path(__file__).resolve().parent.parent
MIGRATION_LOCK = 0x62726C6564676572  # "brledger": a PostgreSQL advisory lock key


def migrations_dir() -> Path:
    """`batchrunner/_migrations` in an installed wheel, `migrations/` in a source checkout."""
    installed = PACKAGE_DIR / "_migrations"
    if installed.is_dir():
        return installed
    return PACKAGE_DIR.parent / "migrations"


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the ledger to `revision` unless it is there already (a cheap check first)."""
    if revision == "head" and _create_new_sqlite(engine):
        return
    alembic_upgrade(engine, revision)


def alembic_upgrade(engine: Engine, revision: str = "head") -> None:
    """`upgrade` through Alembic, whatever the ledger."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
        conn.rollback()
    if revision == "head" and current == set(script.get_heads()):
        return
    known = {each.revision for each in script.walk_revisions()}
    if current - known:
        raise UsageError(_from_a_newer_version(engine, current - known, script.get_heads()))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes opening a new ledger at once: the second waits here, then Alembic
            # finds the schema already current (on SQLite, BEGIN IMMEDIATE does the same).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _from_a_newer_version(engine: Engine, unknown: set[str], heads: Sequence[str]) -> str:
    """A ledger at a revision no migration here knows was written by a newer batchrunner:
    Alembic would fail with a traceback, and a downgrade could lose its data."""
    where = engine.url.render_as_string(hide_password=True)
    return (
        f"the ledger at {where} has schema revision {', '.join(sorted(unknown))}, newer than "
        f"this batchrunner knows (its newest is {', '.join(heads)}): it was written by a newer "
        "batchrunner; upgrade batchrunner (pip install -U batchrunner) to use it (the ledger "
        "was not changed)"
    )


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def revision_files() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in (migrations_dir() / "versions").glob("*.py")))


def _create_new_sqlite(engine: Engine) -> bool:
    """Create the schema of a new (empty) SQLite ledger from SQLITE_SCHEMA; False, touching
    nothing, for any other ledger or when the migrations are not the ones it was taken from."""
    if engine.dialect.name != "sqlite" or revision_files() != SQLITE_SCHEMA_REVISIONS:
        return False
    with engine.begin() as conn:  # BEGIN IMMEDIATE: a second process opening it waits here
        if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar():
            return False
        for statement in SQLITE_SCHEMA:
            conn.exec_driver_sql(statement)
    return True


def sqlite_schema(engine: Engine) -> tuple[tuple[object, ...], ...]:
    """What defines a SQLite ledger's schema: every sqlite_master entry (type, name, table,
    SQL) in creation order, then the alembic_version rows."""
    with engine.connect() as conn:
        master = conn.exec_driver_sql(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid"
        ).all()
        versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return tuple(tuple(row) for row in master) + tuple(tuple(row) for row in versions)


def _capture() -> str:
    """SQLITE_SCHEMA_REVISIONS and SQLITE_SCHEMA as Python, from a fresh Alembic upgrade."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        engine = open_engine(f"sqlite:///{folder}/ledger.db")
        alembic_upgrade(engine)
        with engine.connect() as conn:
            created = [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
                )
            ]
            (version,) = conn.exec_driver_sql("SELECT version_num FROM alembic_version").one()
        engine.dispose()
    created.append(f"INSERT INTO alembic_version (version_num) VALUES ('{version}')")
    lines = [f"SQLITE_SCHEMA_REVISIONS = {revision_files()!r}", "SQLITE_SCHEMA = ("]
    for statement in created:
        parts = []
        for line in statement.splitlines(keepends=True):
            while len(line) > 80:  # within the line length, at a ", " where there is one
                cut = line.rfind(", ", 0, 80) + 2
                cut = cut if cut > 2 else 80
                parts.append(line[:cut])
                line = line[cut:]
            parts.append(line)
        if len(parts) == 1:
            lines.append(f"    {json.dumps(parts[0])},")
        else:
            lines += ["    (", *(f"        {json.dumps(part)}" for part in parts), "    ),"]
    return "\n".join([*lines, ")"]) + "\n"


# Captured by `python -m batchrunner.ledger.migrate` (which prints them) from migrations 0001-0009.
SQLITE_SCHEMA_REVISIONS = (
    "0001_initial.py",
    "0002_not_before.py",
    "0003_batches.py",
    "0004_summary_index.py",
    "0005_reuse_without_index.py",
    "0006_retry_and_stop_reason.py",
    "0007_structured_outputs.py",
    "0008_prefix_groups.py",
    "0009_pauses.py",
)
SQLITE_SCHEMA = (
    (
        "CREATE TABLE alembic_version (\n"
        "\tversion_num VARCHAR(32) NOT NULL, \n"
        "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n"
        ")"
    ),
    (
        "CREATE TABLE jobs (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tname VARCHAR(200) NOT NULL, \n"
        "\tmode VARCHAR(20) NOT NULL, \n"
        "\tstate VARCHAR(20) NOT NULL, \n"
        "\tsimulated BOOLEAN NOT NULL, \n"
        "\tsource_path TEXT NOT NULL, \n"
        "\tsource_sha256 VARCHAR(64) NOT NULL, \n"
        "\titem_count INTEGER NOT NULL, \n"
        "\toptions JSON NOT NULL, \n"
        "\tcreated_at DATETIME NOT NULL, \n"
        "\tstarted_at DATETIME, \n"
        "\tfinished_at DATETIME, stop_reason TEXT, stopped_at DATETIME, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    "CREATE INDEX ix_jobs_source_sha256 ON jobs (source_sha256)",
    (
        "CREATE TABLE items (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tjob_id INTEGER NOT NULL, \n"
        "\tposition INTEGER NOT NULL, \n"
        "\tcustom_id TEXT NOT NULL, \n"
        "\turl VARCHAR(100) NOT NULL, \n"
        "\tmodel VARCHAR(200) NOT NULL, \n"
        "\tbody TEXT NOT NULL, \n"
        "\textra TEXT, \n"
        "\tstate VARCHAR(20) NOT NULL, \n"
        "\trun_id VARCHAR(36), \n"
        "\tattempts INTEGER NOT NULL, \n"
        "\terror_kind VARCHAR(40), \n"
        "\terror_code VARCHAR(100), \n"
        "\terror_message TEXT, \n"
        "\thttp_status INTEGER, \n"
        "\tfinish_reason VARCHAR(40), \n"
        "\tinput_tokens INTEGER, \n"
        "\tcached_tokens INTEGER, \n"
        "\toutput_tokens INTEGER, \n"
        "\treasoning_tokens INTEGER, \n"
        "\tcost_usd FLOAT, \n"
        "\tlatency_ms FLOAT, \n"
        "\tresponse TEXT, \n"
        "\tcreated_at DATETIME NOT NULL, \n"
        "\tupdated_at DATETIME, \n"
        "\tfinished_at DATETIME, not_before DATETIME, batch_id INTEGER, "
        "request_hash VARCHAR(64), reused BOOLEAN DEFAULT 0 NOT NULL, "
        "attempts_floor INTEGER DEFAULT 0 NOT NULL, output_valid BOOLEAN, "
        "invalid_reason TEXT, prefix_group VARCHAR(32), prefix_tokens INTEGER, \n"
        "\tPRIMARY KEY (id), \n"
        "\tCONSTRAINT uq_items_job_custom_id UNIQUE (job_id, custom_id), \n"
        "\tFOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE\n"
        ")"
    ),
    "CREATE INDEX ix_items_job_position ON items (job_id, position)",
    ("CREATE INDEX ix_items_pending ON items (job_id, position) WHERE state = 'pending'"),
    "CREATE INDEX ix_items_running ON items (job_id, run_id) WHERE state = 'running'",
    (
        "CREATE TABLE attempts (\n"
        "\tid INTEGER NOT NULL, \n"
        "\titem_id INTEGER NOT NULL, \n"
        "\tjob_id INTEGER NOT NULL, \n"
        "\trun_id VARCHAR(36), \n"
        "\tnumber INTEGER NOT NULL, \n"
        "\tstarted_at DATETIME NOT NULL, \n"
        "\tended_at DATETIME NOT NULL, \n"
        "\toutcome VARCHAR(20) NOT NULL, \n"
        "\thttp_status INTEGER, \n"
        "\terror_kind VARCHAR(40), \n"
        "\terror_code VARCHAR(100), \n"
        "\terror_message TEXT, \n"
        "\tinput_tokens INTEGER, \n"
        "\tcached_tokens INTEGER, \n"
        "\toutput_tokens INTEGER, \n"
        "\treasoning_tokens INTEGER, \n"
        "\tcost_usd FLOAT, \n"
        "\tlatency_ms FLOAT, output_valid BOOLEAN, invalid_reason TEXT, \n"
        "\tPRIMARY KEY (id), \n"
        "\tFOREIGN KEY(item_id) REFERENCES items (id) ON DELETE CASCADE, \n"
        "\tFOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE\n"
        ")"
    ),
    "CREATE INDEX ix_attempts_item ON attempts (item_id, number)",
    "CREATE INDEX ix_attempts_job_id ON attempts (job_id)",
    (
        "CREATE TABLE runs (\n"
        "\tid VARCHAR(36) NOT NULL, \n"
        "\tjob_id INTEGER NOT NULL, \n"
        "\thostname VARCHAR(255) NOT NULL, \n"
        "\tpid INTEGER NOT NULL, \n"
        "\tstarted_at DATETIME NOT NULL, \n"
        "\theartbeat_at DATETIME NOT NULL, \n"
        "\tended_at DATETIME, \n"
        "\tPRIMARY KEY (id), \n"
        "\tFOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE\n"
        ")"
    ),
    "CREATE INDEX ix_runs_job_id ON runs (job_id)",
    (
        "CREATE INDEX ix_items_deferred ON items (job_id, "
        "not_before) WHERE state = 'pending' AND not_before IS NOT NULL"
    ),
    (
        "CREATE TABLE batches (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tjob_id INTEGER NOT NULL, \n"
        "\ttoken VARCHAR(36) NOT NULL, \n"
        "\tstate VARCHAR(20) NOT NULL, \n"
        "\tendpoint VARCHAR(100) NOT NULL, \n"
        "\tmodel VARCHAR(200) NOT NULL, \n"
        "\trequest_count INTEGER NOT NULL, \n"
        "\tprompt_tokens INTEGER NOT NULL, \n"
        "\tremote_id VARCHAR(100), \n"
        "\tinput_file_id VARCHAR(100), \n"
        "\toutput_file_id VARCHAR(100), \n"
        "\terror_file_id VARCHAR(100), \n"
        "\tremote_status VARCHAR(20), \n"
        "\tcompleted INTEGER NOT NULL, \n"
        "\tfailed INTEGER NOT NULL, \n"
        "\terrors TEXT, \n"
        "\tusage TEXT, \n"
        "\tcreated_at DATETIME NOT NULL, \n"
        "\tupdated_at DATETIME, \n"
        "\tfinished_at DATETIME, \n"
        "\tPRIMARY KEY (id), \n"
        "\tFOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE, \n"
        "\tUNIQUE (token)\n"
        ")"
    ),
    "CREATE INDEX ix_batches_job_id ON batches (job_id)",
    "CREATE INDEX ix_items_batch_id ON items (batch_id)",
    (
        "CREATE INDEX ix_items_summary ON items (job_id, state, model, error_kind, "
        "finished_at, input_tokens, cached_tokens, output_tokens, reasoning_tokens, "
        "cost_usd, attempts, reused, finish_reason, output_valid)"
    ),
    (
        "CREATE TABLE pauses (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tjob_id INTEGER NOT NULL, \n"
        "\trun_id VARCHAR(36), \n"
        "\tstarted_at DATETIME NOT NULL, \n"
        "\tuntil_at DATETIME NOT NULL, \n"
        "\tPRIMARY KEY (id), \n"
        "\tFOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE\n"
        ")"
    ),
    "CREATE INDEX ix_pauses_job_id ON pauses (job_id)",
    "INSERT INTO alembic_version (version_num) VALUES ('0009')",
)

if __name__ == "__main__":
    sys.stdout.write(_capture())
