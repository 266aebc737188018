"""Opening a ledger, through the real CLI: only `submit` creates one (its file readable by its
owner alone), every other command needs one there and creates nothing; a ledger of a newer
batchrunner, a missing PostgreSQL driver and a submit refused before its job was recorded each
give one clear line and leave the ledger as it was."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from batchrunner.cli import cli
from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger, describe
from batchrunner.ledger.store import SCHEMA_HEAD
from tests.conftest import chat_line, write_jsonl

REPO = Path(__file__).resolve().parent.parent
FUTURE = "0099"  # a schema revision no migration of this batchrunner knows

# Every command that reads or changes jobs already recorded: none may create a ledger.
EXISTING_LEDGER_COMMANDS = [
    ("status",),
    ("status", "1", "--json"),
    ("export", "results"),
    ("export", "errors"),
    ("export", "usage", "-o", "usage.csv"),
    ("cancel",),
    ("run",),
    ("worker", "--all"),
]
COMMAND_IDS = [" ".join(args) for args in EXISTING_LEDGER_COMMANDS]


def invoke(*args: str) -> Result:
    """The CLI in this process; an exception that escapes it (a traceback) fails the test."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def batchrunner(*args: str, prelude: str = "", umask: int = -1) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, after `prelude` (Python run before it starts) and
    with `umask` (-1: this process's)."""
    script = f"{prelude}\nimport runpy\nrunpy.run_module('batchrunner', run_name='__main__')\n"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
    )


def sqlite_file(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def everything_in(url: str) -> list[tuple[str, list[tuple[object, ...]]]]:
    """Every table of the database and all its rows, as an outsider reads them."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [
                (
                    name,
                    sorted(
                        (tuple(row) for row in conn.execute(text(f"SELECT * FROM {name}"))),
                        key=repr,
                    ),
                )
                for name in sorted(inspect(conn).get_table_names())
            ]
    finally:
        engine.dispose()


def set_schema_revision(url: str, revision: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def submitted(tmp_path: Path, url: str, name: str = "job", count: int = 3) -> Path:
    job = write_jsonl(tmp_path / f"{name}.jsonl", [chat_line(i) for i in range(count)])
    result = invoke("submit", str(job), "--db", url, "--detach")
    assert result.exit_code == 0, result.stderr
    return job


# -- a ledger written by a newer batchrunner -------------------------------------------------


def test_a_ledger_from_a_newer_version_is_one_clear_line_on_every_command(
    tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    submitted(tmp_path, ledger_url)
    set_schema_revision(ledger_url, FUTURE)
    before = everything_in(ledger_url)
    file = sqlite_file(ledger_url)
    file_before = file.read_bytes() if file else b""
    another = write_jsonl(tmp_path / "another.jsonl", [chat_line(9)])

    expected = (
        f"error: the ledger at {describe(ledger_url)} has schema revision {FUTURE}, newer than "
        f"this batchrunner knows (its newest is {SCHEMA_HEAD}): it was written by a newer "
        "batchrunner; upgrade batchrunner (pip install -U batchrunner) to use it (the ledger "
        "was not changed)\n"
    )
    submit = ("submit", str(another), "--detach")
    for args in [submit, *EXISTING_LEDGER_COMMANDS]:
        result = invoke(*args, "--db", ledger_url)
        assert (result.exit_code, result.stderr) == (2, expected), args

    assert everything_in(ledger_url) == before  # alembic_version still says FUTURE
    assert ("alembic_version", [(FUTURE,)]) in before
    if file:
        assert file.read_bytes() == file_before
    assert not (tmp_path / "usage.csv").exists()


def test_a_ledger_from_a_newer_version_exits_2_without_a_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    submitted(tmp_path, url)
    set_schema_revision(url, FUTURE)
    result = batchrunner("status", "--db", url)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"schema revision {FUTURE}" in result.stderr and "upgrade batchrunner" in result.stderr


# -- commands on a ledger that is not there --------------------------------------------------


@pytest.mark.parametrize("args", EXISTING_LEDGER_COMMANDS, ids=COMMAND_IDS)
def test_a_missing_sqlite_ledger_is_an_error_and_nothing_is_created(
    tmp_path: Path, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    result = invoke(*args, "--db", f"sqlite:///{missing}")
    assert result.exit_code == 2
    assert result.stderr == (f"error: no ledger at {missing} (submit a job first, or check --db)\n")
    assert not (tmp_path / "no").exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_the_default_ledger_is_not_created_by_status(tmp_path: Path) -> None:
    """No --db: $BATCHRUNNER_DB (the conftest points it into tmp_path), else ./batchrunner.db."""
    result = invoke("status")
    default = tmp_path / "default.db"
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: no ledger at {default} (submit a job first, or check --db)\n",
    )
    assert not default.exists()


def test_a_file_that_holds_no_ledger_is_neither_migrated_nor_touched(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")  # someone else's database
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()
    other_before = other.read_bytes()
    for file in (empty, other):
        for args in EXISTING_LEDGER_COMMANDS:
            result = invoke(*args, "--db", f"sqlite:///{file}")
            assert (result.exit_code, result.stderr) == (
                2,
                f"error: no ledger in sqlite:///{file}: it holds no batchrunner tables (submit "
                "a job first, or check --db)\n",
            ), args
    assert empty.read_bytes() == b""  # not even switched to WAL mode
    assert other.read_bytes() == other_before
    assert sorted(os.listdir(tmp_path)) == ["empty.db", "other.db"]


@pytest.mark.postgres
def test_a_postgres_database_without_a_ledger_is_not_migrated_by_reading_commands(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = (
        f"error: no ledger in {describe(pg_url)}: it holds no batchrunner tables (submit a job "
        "first, or check --db)\n"
    )
    for args in EXISTING_LEDGER_COMMANDS:
        result = invoke(*args, "--db", pg_url)
        assert (result.exit_code, result.stderr) == (2, expected), args
    assert everything_in(pg_url) == []  # no table created

    submitted(tmp_path, pg_url)  # submit creates the ledger; then the others find it
    assert invoke("status", "--db", pg_url).exit_code == 0
    assert invoke("export", "results", "--db", pg_url).exit_code == 0


# -- a PostgreSQL URL without the driver -----------------------------------------------------

# Python run before the CLI: psycopg cannot be imported, as where it is not installed.
WITHOUT_PSYCOPG = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "psycopg":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""
NO_DRIVER = (
    "error: PostgreSQL needs its driver, psycopg, which could not be imported (No module "
    "named 'psycopg'): pip install 'batchrunner[postgres]'\n"
)


def test_the_install_hint_names_the_extra_that_holds_the_driver() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["postgres"]
    assert any(requirement.startswith("psycopg") for requirement in extra)
    assert "batchrunner[postgres]" in NO_DRIVER


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "postgresql"])
def test_a_postgres_url_without_its_driver_is_a_one_line_install_hint(
    tmp_path: Path, scheme: str
) -> None:
    url = f"{scheme}://someone@127.0.0.1:1/ledger"  # never reached: the driver comes first
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    for args in [("status",), ("submit", str(job), "--detach"), ("export", "results")]:
        result = batchrunner(*args, "--db", url, prelude=WITHOUT_PSYCOPG)
        assert (result.returncode, result.stderr) == (2, NO_DRIVER), args

    with_driver = batchrunner("status", "--db", url)  # the same, psycopg importable
    assert with_driver.returncode == 3 and "could not open the ledger" in with_driver.stderr


# -- new ledger files are the owner's alone --------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_ledger_and_its_companion_files_are_readable_by_their_owner_alone(
    tmp_path: Path,
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    db = tmp_path / "new" / "ledger.db"
    done = batchrunner("submit", str(job), "--detach", "--db", f"sqlite:///{db}", umask=0o022)
    assert done.returncode == 0, done.stderr
    assert mode_of(db) == 0o600  # the umask alone would have given 0644

    previous = os.umask(0o022)
    try:
        ledger = Ledger(f"sqlite:///{db}", create=False)
        try:
            with ledger.engine.begin() as conn:  # a write: the -wal and -shm files are there
                conn.execute(text("UPDATE jobs SET name = name"))
                assert {mode_of(Path(f"{db}-wal")), mode_of(Path(f"{db}-shm"))} == {0o600}
        finally:
            ledger.close()
        # In rollback-journal mode (a copy of the ledger opened by another tool, say) SQLite's
        # -journal file takes the database's mode too.
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            assert conn.execute("PRAGMA journal_mode=DELETE").fetchall() == [("delete",)]
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE scratch (x INTEGER)")
            assert mode_of(Path(f"{db}-journal")) == 0o600
            conn.execute("ROLLBACK")
            conn.execute("PRAGMA journal_mode=WAL")
    finally:
        os.umask(previous)


def test_an_existing_ledger_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    submitted(tmp_path, url)
    db.chmod(0o640)  # its owner shares it with a group on purpose
    submitted(tmp_path, url, name="second", count=4)
    assert invoke("status", "--db", url).exit_code == 0
    assert mode_of(db) == 0o640


# -- the hint after a refused submit ---------------------------------------------------------

NOT_RECORDED = "No job was recorded; fix the cause and submit it again."
RESUME = "Nothing already recorded is lost; fix the cause and resume with `batchrunner run`."


def jobs_in(db: Path) -> list[tuple[object, ...]]:
    """The ledger's jobs, read with the stdlib; none while it has no tables yet."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            return conn.execute("SELECT id, item_count FROM jobs ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:
            assert "no such table" in str(exc)
            return []


def test_a_submit_refused_by_a_locked_ledger_says_that_nothing_was_recorded(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    submitted(tmp_path, url)
    impatient = f"{url}?timeout=0.2"  # the busy timeout, 30 s by default
    second = write_jsonl(tmp_path / "second.jsonl", [chat_line(i) for i in range(5)])
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock throughout
        try:
            refused = invoke("submit", str(second), "--db", impatient, "--detach")
        finally:
            other.execute("ROLLBACK")
    assert refused.exit_code == 3
    assert refused.stderr == (
        f"error: could not record the job in the ledger at {impatient}: database is locked "
        "(another process held the write lock past the busy timeout; raise it with "
        f"?timeout=SECONDS on the URL). {NOT_RECORDED}\n"
    )
    assert jobs_in(db) == [(1, 3)]  # indeed nothing: the first job alone

    again = invoke("submit", str(second), "--db", url, "--detach")  # what the hint says works
    assert again.exit_code == 0 and "recorded job 2" in again.stderr


def not_a_database(folder: Path) -> Path:
    (folder / "notes.txt").write_text("these are notes, not a ledger\n" * 200)
    return folder / "notes.txt"


def under_a_file(folder: Path) -> Path:
    (folder / "file").write_text("")
    return folder / "file" / "ledger.db"


@pytest.mark.parametrize(
    ("make", "reason"),
    [(not_a_database, "file is not a database"), (under_a_file, "File exists")],
)
def test_a_submit_into_a_ledger_that_cannot_be_opened_says_that_nothing_was_recorded(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    url = f"sqlite:///{make(tmp_path)}"
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    result = invoke("submit", str(job), "--db", url, "--detach")
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: could not open the ledger at {url}: ")
    assert reason in result.stderr and result.stderr.endswith(f". {NOT_RECORDED}\n")
    assert "resume" not in result.stderr


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_submit_refused_after_its_job_was_recorded_says_to_resume(
    tmp_path: Path, fake: FakeServer
) -> None:
    fake.config.latency_ms = 5000.0  # the run is still on its first answers when the lock comes
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(4)])
    db = tmp_path / "ledger.db"
    impatient = f"sqlite:///{db}?timeout=0.3"
    args = ["submit", str(job), "--db", impatient, "--base-url", fake.base_url, "--db-wait", "1"]
    stderr = tmp_path / "submit.err"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrunner", *args],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        assert wait_for(lambda: db.exists() and bool(jobs_in(db)), timeout=60)
        with contextlib.closing(sqlite3.connect(db, timeout=10, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # the ledger locked once the job is in it
            try:
                proc.wait(timeout=60)
            finally:
                other.execute("ROLLBACK")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 3
    message = stderr.read_text()
    assert "Traceback" not in message and RESUME in message and NOT_RECORDED not in message
    assert jobs_in(db) == [(1, 4)]

    fake.config.latency_ms = 0.0
    resumed = invoke("run", "--db", f"sqlite:///{db}", "--base-url", fake.base_url)
    assert resumed.exit_code == 0, resumed.stderr
