"""Open the ledger's database: SQLite tuned for one writer and many readers, or PostgreSQL.

SQLite gets WAL mode (readers never block the writer), a busy timeout, and BEGIN IMMEDIATE for
every write transaction: a deferred transaction that reads and then writes fails at once with
"database is locked" whatever the timeout, while an immediate one waits its turn.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

DEFAULT_DB = "sqlite:///batchrunner.db"
BUSY_TIMEOUT_S = 30.0
READ_ONLY = "batchrunner_read_only"  # execution option: begin a deferred (read) transaction


def database_url(explicit: str | None = None) -> str:
    """`--db`, else BATCHRUNNER_DB, else a file in the current folder."""
    return explicit or os.environ.get("BATCHRUNNER_DB") or DEFAULT_DB


def describe(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def open_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        folder = os.path.dirname(os.path.abspath(parsed.database))
        os.makedirs(folder, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _tune_sqlite)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against process kills in WAL mode
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _begin_sqlite(conn: Connection) -> None:
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
