"""Crash safety of concurrent mode, with real processes: SIGKILL at random moments, two runs at
once, the same file submitted twice, a locked ledger, a full disk and a read-only ledger.

The fake server runs in a thread of the test process and counts requests per custom_id; the
`batchrunner` processes under test are children that the test kills. After each kill the test
takes two snapshots (what the ledger recorded, what the server had seen), and at the end every
extra request the server saw must be explained by an item that was in flight at some kill.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batchrunner.cli import cli
from batchrunner.fake import FakeServer
from tests.conftest import chat_line, write_jsonl

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 16
SETTLE_S = 0.3  # after a kill: requests already on the wire reach the server's counter
LEDGER_REFUSED = re.compile(
    r"error: could not [a-z ]+ the ledger at (?P<url>\S+): (?P<reason>.+?)\. Nothing already "
    r"recorded is lost; fix the cause and resume with `batchrunner run`\."
)


def batchrunner(*args: str, stderr: Path | None = None) -> subprocess.Popen[bytes]:
    """The real CLI in a child process; its stderr goes to a file (a pipe could fill up)."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrunner", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb") if stderr else subprocess.DEVNULL,
    )


def finish(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrunner", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def invoke(*args: str) -> Result:
    """The CLI in this process: for the steps around the one under test (faster to start)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the ledger as any outsider would, with the stdlib; nothing if it is not there yet."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:  # killed before the schema was committed
            assert "no such table" in str(exc)
            return []


def succeeded_ids(db: Path) -> set[str]:
    return {str(row[0]) for row in query(db, "SELECT custom_id FROM items WHERE state='succeeded'")}


def assert_each_item_succeeded_once(db: Path, count: int) -> None:
    assert query(db, "SELECT count(*), sum(state = 'succeeded') FROM items") == [(count, count)]
    per_item = query(
        db,
        "SELECT count(a.id), sum(a.outcome = 'succeeded') FROM items i "
        "LEFT JOIN attempts a ON a.item_id = i.id GROUP BY i.id",
    )
    assert set(per_item) == {(1, 1)}  # one recorded request per item, and it succeeded
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


@dataclass
class Kill:
    recorded: set[str]  # the items the ledger held a result for when the process died
    seen: Counter[str]  # what the server had counted by then


def kill_at_random(
    proc: subprocess.Popen[bytes], fake: FakeServer, rng: random.Random, db: Path
) -> Kill | None:
    """SIGKILL `proc` once the server has seen a random number of further requests (plus a
    random few milliseconds, to land anywhere: mid-request, mid-commit, mid-claim); None if
    the process finished first."""
    target = fake.total_requests + rng.randint(150, 500)
    wait_for(lambda: fake.total_requests >= target or proc.poll() is not None, timeout=60)
    time.sleep(rng.uniform(0, 0.03))
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)  # reaped: its pid no longer exists, so the next run sees it is dead
    time.sleep(SETTLE_S)
    return Kill(succeeded_ids(db), Counter(fake.requests_by_id))


def test_sigkill_at_random_moments_loses_nothing_and_resends_only_what_was_in_flight(
    tmp_path: Path, fake: FakeServer
) -> None:
    rng = random.Random(20261123)
    fake.config.latency_ms, fake.config.latency_jitter_ms = 4.0, 16.0
    total = 3000
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(total)])
    db = tmp_path / "ledger.db"
    common = ("--db", f"sqlite:///{db}", "--base-url", fake.base_url)
    submit = ("submit", str(job), *common, "--concurrency", str(CONCURRENCY))
    run = ("run", *common, "--concurrency", str(CONCURRENCY))

    # A kill during start-up or ingest: the job is recorded whole, or not at all.
    early = batchrunner(*submit)
    time.sleep(rng.uniform(0.2, 1.2))
    early.send_signal(signal.SIGKILL)
    early.wait(timeout=10)
    time.sleep(SETTLE_S)
    recorded = query(db, "SELECT item_count, (SELECT count(*) FROM items) FROM jobs")
    assert recorded in ([], [(total, total)])
    kills = [Kill(succeeded_ids(db), Counter(fake.requests_by_id))]

    for round_ in range(4):
        command = run if (recorded or round_ > 0) else submit
        kill = kill_at_random(batchrunner(*command), fake, rng, db)
        if kill is None:
            break
        kills.append(kill)
    assert len(kills) >= 4, "the job finished before it could be killed often enough"
    done = invoke(*run)
    assert done.exit_code == 0, done.stderr
    assert query(db, "SELECT count(*), min(state) FROM jobs") == [(1, "completed")]
    assert_each_item_succeeded_once(db, total)

    final = fake.requests_by_id
    assert set(final) == {f"item-{i}" for i in range(total)}
    before: Counter[str] = Counter()
    in_flight_at: list[set[str]] = []
    for kill in kills:
        # Never sent again once recorded: each recorded item's count froze at that kill.
        assert {cid: final[cid] for cid in kill.recorded} == {
            cid: kill.seen[cid] for cid in kill.recorded
        }
        # In flight = sent since the previous kill, but not recorded by this one.
        sent = {cid for cid, n in kill.seen.items() if n > before[cid]}
        in_flight = sent - kill.recorded
        # Sent and not yet answered or waiting to be handed to the ledger writer (at most
        # one per worker), or queued for the writer or being committed (at most its backlog,
        # the concurrency): the README's bound, twice the concurrency.
        assert len(in_flight) <= 2 * CONCURRENCY
        in_flight_at.append(in_flight)
        before = kill.seen
    # Every extra request is one item re-sent after a kill caught it in flight.
    extra = {cid: n - 1 for cid, n in final.items() if n > 1}
    explained = Counter(cid for in_flight in in_flight_at for cid in in_flight)
    assert extra == dict(explained)


def test_a_second_run_of_a_running_job_is_refused(tmp_path: Path, fake: FakeServer) -> None:
    fake.config.latency_ms = 100.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(200)])
    db = tmp_path / "ledger.db"
    common = ("--db", f"sqlite:///{db}", "--base-url", fake.base_url)
    assert invoke("submit", str(job), *common, "--detach").exit_code == 0
    first = batchrunner("run", *common, "--concurrency", "4", stderr=tmp_path / "first.err")
    try:
        assert wait_for(lambda: fake.total_requests >= 8, timeout=30)
        second = finish("run", *common, "--concurrency", "4")
        assert second.returncode == 2
        assert f"error: job 1 is already running in process {first.pid} on " in second.stderr
        assert "wait for it to finish or stop it first" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
    assert first.returncode == 3  # stopped by Ctrl-C, resumable
    fake.config.latency_ms = 0.0
    assert invoke("run", *common).exit_code == 0
    assert_each_item_succeeded_once(db, 200)
    assert set(fake.requests_by_id.values()) == {1}  # Ctrl-C let the in-flight requests finish


def test_the_same_file_again_is_the_same_job_unless_new(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert invoke("submit", str(job), "--db", db, "--detach").exit_code == 0
    again = invoke("submit", str(job), "--db", db, "--detach")
    assert again.exit_code == 0  # taken up again, not recorded twice (test_first_hour.py)
    assert again.stderr == (
        f"{job} is already job 1 (pending, 3 of 3 items left; pass --new for a second job); "
        "run it with: batchrunner run 1\n"
    )
    assert query(tmp_path / "ledger.db", "SELECT id, item_count FROM jobs") == [(1, 3)]
    second = invoke("submit", str(job), "--db", db, "--detach", "--new")
    assert second.exit_code == 0 and "recorded job 2" in second.stderr
    assert query(tmp_path / "ledger.db", "SELECT id, item_count FROM jobs") == [(1, 3), (2, 3)]


def assert_refused_clearly(result: subprocess.CompletedProcess[str], url: str, reason: str) -> None:
    """Exit 3 (resumable), one error naming the ledger and why, no traceback."""
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    match = LEDGER_REFUSED.search(result.stderr)
    assert match is not None, result.stderr
    assert match["url"] == url and reason in match["reason"]


def assert_resumes_resending_only_what_was_in_flight(
    url: str, db: Path, fake: FakeServer, count: int, sent_before: Counter[str]
) -> None:
    """`run` (concurrency 8) after a refused one: every item succeeds once, and only what the
    refused run had in flight is sent again."""
    assert invoke("run", "--db", url, "--base-url", fake.base_url).exit_code == 0
    assert_each_item_succeeded_once(db, count)
    resent = [cid for cid, n in fake.requests_by_id.items() if n > 1]
    # At most the 8 requests in flight and the 8 answers queued for the writer.
    assert len(resent) <= 2 * 8 and all(sent_before[cid] == 1 for cid in resent)


def test_a_locked_ledger_stops_the_run_clearly_and_the_job_resumes(
    tmp_path: Path, fake: FakeServer
) -> None:
    fake.config.latency_ms = 10.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(400)])
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    assert invoke("submit", str(job), "--db", url, "--detach").exit_code == 0
    impatient = f"{url}?timeout=0.3"  # the busy timeout, 30 s by default
    args = ("run", "--db", impatient, "--base-url", fake.base_url, "--concurrency", "8")
    proc = batchrunner(*args, "--db-wait", "1", stderr=tmp_path / "run.err")
    assert wait_for(lambda: fake.total_requests >= 50, timeout=30)
    with contextlib.closing(sqlite3.connect(db, timeout=10, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock ...
        try:
            proc.wait(timeout=30)  # ... longer than the run's busy timeout and --db-wait
        finally:
            other.execute("ROLLBACK")
    stderr = (tmp_path / "run.err").read_text()
    result = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    assert_refused_clearly(result, impatient, "database is locked")
    assert "waited 1s for it (--db-wait)" in stderr
    sent_before = Counter(fake.requests_by_id)

    assert_resumes_resending_only_what_was_in_flight(url, db, fake, 400, sent_before)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small filesystem of its own, to fill up or make read-only; needs mount rights."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_the_run_clearly_and_the_job_resumes(
    tmp_path: Path, tmpfs: Path, fake: FakeServer
) -> None:
    fake.config.latency_ms = 5.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(1000)])
    db = tmpfs / "ledger.db"
    url = f"sqlite:///{db}"
    assert invoke("submit", str(job), "--db", url, "--detach").exit_code == 0
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler = tmpfs / "filler"
    filler.write_bytes(bytes(free - 400 * 1024))  # room for the run to start, not to finish
    result = finish("run", "--db", url, "--base-url", fake.base_url, "--concurrency", "8")
    assert_refused_clearly(result, url, "database or disk is full")
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    sent_before = Counter(fake.requests_by_id)

    filler.unlink()
    assert_resumes_resending_only_what_was_in_flight(url, db, fake, 1000, sent_before)


def test_a_read_only_ledger_is_refused_clearly_and_the_job_resumes(
    tmp_path: Path, tmpfs: Path, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(50)])
    db = tmpfs / "ledger.db"
    url = f"sqlite:///{db}"
    submitted = finish("submit", str(job), "--db", url, "--detach")  # keeps no file open
    assert submitted.returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    result = finish("run", "--db", url, "--base-url", fake.base_url)
    assert_refused_clearly(result, url, "unable to open database file")
    assert fake.total_requests == 0
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert invoke("run", "--db", url, "--base-url", fake.base_url).exit_code == 0
    assert_each_item_succeeded_once(db, 50)


def not_a_database(folder: Path) -> Path:
    (folder / "notes.txt").write_text("these are notes, not a ledger\n" * 200)
    return folder / "notes.txt"


# (A ledger under a file: `status` finds no ledger there, test_ledger_open.py; `submit` cannot
# make its folder and says that nothing was recorded, ibid.)
@pytest.mark.parametrize(("make", "reason"), [(not_a_database, "file is not a database")])
def test_a_ledger_that_cannot_be_opened_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    url = f"sqlite:///{make(tmp_path)}"
    result = invoke("status", "--db", url)
    assert_refused_clearly(
        subprocess.CompletedProcess([], result.exit_code, "", result.stderr), url, reason
    )
