"""Open the ledger's database: SQLite tuned for one writer and many readers, or PostgreSQL.

SQLite gets WAL mode (readers never block the writer), a busy timeout (30 s, or the URL's
`?timeout=SECONDS`), and BEGIN IMMEDIATE for every write transaction: a deferred transaction
that reads and then writes fails at once with "database is locked" whatever the timeout, while
an immediate one waits its turn.

PostgreSQL (psycopg 3) keeps its default READ COMMITTED transactions and row locks, so it gets
no BEGIN listener; the READ_ONLY option means nothing there. Its pool is small and checked: a
run uses a few connections at once (claims, the result writer, the heartbeat), and a server
restart or an idle timeout must not fail the next query of a long job.

Only a command that records jobs (`submit`) creates a ledger (`create`): a new SQLite file is
made readable by its owner alone, as it holds prompts and answers (SQLite gives its -wal, -shm
and -journal files the database file's mode). Every other command opens an existing ledger and
touches nothing when there is none, so a mistyped --db is an error, not a new empty ledger.

The commands that only read (`status`, `export`) open SQLite read-only (`read_only`): a ledger
on a read-only mount, or another user's, can be read by whoever may read its file. A WAL
database is read through its -wal and -shm files; a reader that cannot write the file or its
folder must not create them (they would be its own, and could lock the owner's next run out),
so when they are absent (nobody has the ledger open for writing: everything is in the file)
it reads the file as immutable, and when they are there it reads through them (SQLite opens a
-shm it may not write read-only).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import urllib.parse
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url

from batchrunner.errors import UsageError

DEFAULT_DB = "sqlite:///batchrunner.db"
BUSY_TIMEOUT_S = 30.0
READ_ONLY = "batchrunner_read_only"  # execution option: begin a deferred (read) transaction
PG_POOL_SIZE = 5
PG_MAX_OVERFLOW = 5
PG_POOL_RECYCLE_S = 1800  # below the usual idle timeouts of proxies and managed servers
PG_CONNECT_TIMEOUT_S = 10


def database_url(explicit: str | None = None) -> str:
    """`--db`, else BATCHRUNNER_DB, else a file in the current folder."""
    return explicit or os.environ.get("BATCHRUNNER_DB") or DEFAULT_DB


def describe(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def open_engine(url: str, *, create: bool = True, read_only: bool = False) -> Engine:
    """An engine on the ledger's database; without `create`, a SQLite file that is not there
    is a UsageError and nothing is created. `read_only` opens a SQLite file read-only (and
    creates nothing); it means nothing to PostgreSQL, whose reads need no write access."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return _open_postgres(parsed)
    if backend != "sqlite":
        raise UsageError(
            f"unsupported ledger database {describe(url)}: use sqlite:///FILE or "
            "postgresql+psycopg://USER@HOST/DB"
        )
    on_disk = bool(parsed.database) and parsed.database != ":memory:"
    if on_disk:
        _sqlite_file(str(parsed.database), create and not read_only)
    timeout = _busy_timeout(parsed)
    if read_only and on_disk:
        uri = _read_only_uri(str(parsed.database))
        engine = create_engine(url, creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout))
    else:
        engine = create_engine(url, connect_args={"timeout": timeout})
    tune = functools.partial(_tune_sqlite, timeout, create and not read_only, read_only)
    event.listen(engine, "connect", tune)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def _sqlite_file(path: str, create: bool) -> None:
    """Make a new ledger file (and its folder), 0600; leave an existing one as it is."""
    if os.path.exists(path):
        return
    if not create:
        raise UsageError(
            f"no ledger at {os.path.abspath(path)} (submit a job first, or check --db)"
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another process opening it made it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _read_only_uri(path: str) -> str:
    """The SQLite URI that reads `path` without writing anything: `mode=ro`, plus `immutable=1`
    when the file has no -wal beside it and the reader could not create one (see above)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    if not os.path.exists(path + "-wal") and not writable_file(path):
        uri += "&immutable=1"
    return uri


def writable_file(path: str) -> bool:
    """Whether this process may write a SQLite file and create its -wal and -shm beside it
    (False on a read-only mount, for another user's file or folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(folder, os.W_OK)


def writable(url: str) -> bool:
    """Whether the ledger at `url` can be written from here: a SQLite file as `writable_file`
    says; PostgreSQL, as far as can be told without asking the server, always."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return writable_file(str(parsed.database))


def _open_postgres(url: URL) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # SQLAlchemy's default is psycopg2
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "batchrunner"
    try:
        return create_engine(
            url,
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_MAX_OVERFLOW,
            pool_recycle=PG_POOL_RECYCLE_S,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
    except ImportError as exc:  # the driver is imported here, before any connection
        raise UsageError(_missing_driver(url, exc)) from None


def _missing_driver(url: URL, exc: ImportError) -> str:
    """One line: what to install (psycopg's own reasons, such as no libpq, span several)."""
    driver, reason = url.get_driver_name(), (str(exc).splitlines() or [type(exc).__name__])[0]
    if driver == "psycopg":
        return (
            f"PostgreSQL needs its driver, psycopg, which could not be imported ({reason}): "
            "pip install 'batchrunner[postgres]'"
        )
    return (
        f"the PostgreSQL driver {driver} could not be imported ({reason}): use "
        "postgresql+psycopg://USER@HOST/DB, with pip install 'batchrunner[postgres]'"
    )


def _busy_timeout(url: URL) -> float:
    value = url.query.get("timeout", BUSY_TIMEOUT_S)
    try:
        return float(value if isinstance(value, (str, float)) else value[0])
    except ValueError:
        raise UsageError(f"the ledger URL's timeout must be seconds, got {value!r}") from None


def _tune_sqlite(
    timeout: float, create: bool, read_only: bool, dbapi_connection: Any, _record: Any
) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    # Switching to WAL writes: not to a file with no ledger, nor to one opened read-only (a
    # ledger is in WAL mode from its first write on).
    if create or (not read_only and _has_schema(cursor)):
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against process kills in WAL mode
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    cursor.close()


def _has_schema(cursor: Any) -> bool:
    cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'")
    return cursor.fetchone() is not None


def _begin_sqlite(conn: Connection) -> None:
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
