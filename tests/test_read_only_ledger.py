"""The commands that only read (`status`, `export`) read a SQLite ledger they may not write:
a read-only file, a read-only folder (as on a read-only mount, or in another user's home), and
another user's ledger while its owner has it open. They change nothing and create nothing
(no -wal or -shm of theirs that could lock the owner out), and what they show is what the
owner recorded, including what is still only in the owner's -wal file.

The reader runs as a child process that may not write: as root (as here and in CI) it is root
without the capabilities that bypass file permissions (setpriv drops them), else the user
itself, for whom the file modes already apply."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchrunner.cli import cli
from batchrunner.fake import FakeServer
from tests.conftest import chat_line, write_jsonl

REPO = Path(__file__).resolve().parent.parent
# Dropped from root's bounding set: then file modes apply to it as to anyone.
DAC_CAPS = "-dac_override,-dac_read_search"
NOBODY = 65534


def unprivileged_prefix() -> list[str]:
    """The command prefix that runs a child which file permissions bind."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): no reader bound by modes")
    return [setpriv, f"--bounding-set={DAC_CAPS}", "--"]


@pytest.fixture(scope="module")
def as_reader(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The prefix, once proved: the child cannot write a file whose mode says no."""
    prefix = unprivileged_prefix()
    locked = tmp_path_factory.mktemp("probe") / "locked"
    locked.write_text("")
    locked.chmod(0o444)
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"import os; print(os.access({str(locked)!r}, os.W_OK))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot start a child without DAC capabilities: {probe.stderr.strip()}")
    if probe.stdout.strip() != "False":
        pytest.skip("the child may write a read-only file (setpriv had no effect here)")
    return prefix


def read_as_reader(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "batchrunner", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def invoke(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def finished_job(folder: Path, fake: FakeServer, name: str, count: int = 3) -> str:
    """A ledger in `folder` with one job whose items all succeeded; its URL."""
    folder.mkdir(exist_ok=True)
    url = f"sqlite:///{folder / 'ledger.db'}"
    job = write_jsonl(folder.parent / f"{name}.jsonl", [chat_line(i) for i in range(count)])
    invoke("submit", str(job), "--name", name, "--db", url, "--base-url", fake.base_url)
    return url


def snapshot(folder: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in sorted(folder.iterdir())}


@contextlib.contextmanager
def modes(*changes: tuple[Path, int]) -> Iterator[None]:
    """Set each path's mode for the block, then put the old ones back (so tmp_path can be
    cleaned)."""
    before = [(path, stat.S_IMODE(path.stat().st_mode)) for path, _ in changes]
    try:
        for path, mode in changes:
            path.chmod(mode)
        yield
    finally:
        for path, mode in reversed(before):
            path.chmod(mode)


def reads_everything(prefix: list[str], url: str, out: Path, names: list[str]) -> None:
    """status (text and JSON) and every export work and show the recorded jobs."""
    shown = read_as_reader(prefix, "status", "--json", "--db", url)
    assert shown.returncode == 0, shown.stderr
    jobs = json.loads(shown.stdout)["jobs"]
    assert [job["name"] for job in jobs] == names
    assert all(job["counts"]["succeeded"] == 3 for job in jobs)
    text = read_as_reader(prefix, "status", "--db", url)
    assert text.returncode == 0, text.stderr
    for what in ("results", "errors", "usage"):
        target = out / f"{what}.out"
        exported = read_as_reader(
            prefix, "export", what, "--job", names[-1], "--db", url, "-o", str(target)
        )
        assert exported.returncode == 0, (what, exported.stderr)
        assert target.exists()
    results = (out / "results.out").read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in results] == ["item-0", "item-1", "item-2"]


def test_a_read_only_ledger_file_is_read_and_nothing_is_created(
    tmp_path: Path, fake: FakeServer, as_reader: list[str]
) -> None:
    folder = tmp_path / "ledger"
    url = finished_job(folder, fake, "first")
    before = snapshot(folder)
    assert list(before) == ["ledger.db"]  # the owner's last close folded the -wal in
    out = tmp_path / "out"
    out.mkdir()
    with modes((folder / "ledger.db", 0o444)):
        reads_everything(as_reader, url, out, ["first"])
    assert snapshot(folder) == before  # no -wal, no -shm: the folder could take them


def test_a_ledger_in_a_read_only_folder_is_read_and_nothing_is_created(
    tmp_path: Path, fake: FakeServer, as_reader: list[str]
) -> None:
    folder = tmp_path / "mount"
    url = finished_job(folder, fake, "first")
    before = snapshot(folder)
    out = tmp_path / "out"
    out.mkdir()
    with modes((folder / "ledger.db", 0o444), (folder, 0o555)):
        reads_everything(as_reader, url, out, ["first"])
    assert snapshot(folder) == before


def test_a_ledger_its_owner_has_open_is_read_through_the_owners_wal(
    tmp_path: Path, fake: FakeServer, as_reader: list[str]
) -> None:
    """The owner holds a connection, so the second job is in the -wal file only; the reader,
    who may write neither the ledger, its -wal and -shm nor the folder, sees it anyway."""
    folder = tmp_path / "home"
    url = finished_job(folder, fake, "first")
    (folder / "ledger.db").chmod(0o644)  # shared for reading: its -wal and -shm take the mode
    if os.geteuid() == 0:  # the ledger becomes another user's (SQLite gives root's -wal and
        os.chown(folder, NOBODY, NOBODY)  # -shm the database file's owner)
        os.chown(folder / "ledger.db", NOBODY, NOBODY)
    holder = sqlite3.connect(folder / "ledger.db")
    try:
        holder.execute("SELECT count(*) FROM jobs").fetchone()  # opens the WAL, keeps it
        second = write_jsonl(
            tmp_path / "second.jsonl", [chat_line(i, f"again {i}") for i in range(3)]
        )
        invoke("submit", str(second), "--name", "second", "--db", url, "--base-url", fake.base_url)
        assert (folder / "ledger.db-wal").stat().st_size > 0  # not folded in: the owner is on
        before = snapshot(folder)
        out = tmp_path / "out"
        out.mkdir()
        with modes((folder, 0o555)):
            reads_everything(as_reader, url, out, ["first", "second"])
        after = snapshot(folder)
        if os.geteuid() != 0:  # the reader owns the -shm, and takes its read marks there
            del after["ledger.db-shm"], before["ledger.db-shm"]
        assert after == before
    finally:
        holder.close()


def test_a_read_only_ledger_behind_this_schema_is_one_clear_line_and_left_alone(
    tmp_path: Path, fake: FakeServer, as_reader: list[str]
) -> None:
    folder = tmp_path / "old"
    url = finished_job(folder, fake, "first")
    with contextlib.closing(sqlite3.connect(folder / "ledger.db")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0006'")
        conn.commit()
    before = snapshot(folder)
    with modes((folder / "ledger.db", 0o444), (folder, 0o555)):
        result = read_as_reader(as_reader, "status", "--db", url)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: the ledger at {url} has schema revision 0006, not this batchrunner's "
        f"{_schema_head()}, and is read-only here: open it once with a command that writes "
        "(batchrunner run) as a user who may write it, or read it with the batchrunner that "
        "wrote it (the ledger was not changed)\n"
    )
    assert snapshot(folder) == before


def _schema_head() -> str:
    from batchrunner.ledger.store import SCHEMA_HEAD

    return SCHEMA_HEAD
