"""A ledger database that goes away mid-run: a real PostgreSQL server restarted under running
workers (a throwaway cluster of the test's own), and a SQLite file locked by another process,
past the busy timeout or until the run is killed.

The PostgreSQL test needs the server's binaries (/usr/lib/postgresql/*/bin, or
BATCHRUNNER_TEST_PG_BIN, which .ci/run sets): without them it skips loudly, and fails under CI.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from batchrunner.errors import LedgerUnavailable
from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from batchrunner.ledger.models import runs_t
from batchrunner.ledger.records import utcnow
from batchrunner.ledger.results import write_outcomes
from batchrunner.ledger.store import HINTS, claim_statement, claimed_before
from tests.conftest import chat_line, free_port, postgres_required, write_jsonl
from tests.lossy_proxy import lossy_proxy
from tests.test_crash import (
    SETTLE_S,
    assert_each_item_succeeded_once,
    batchrunner,
    invoke,
    query,
    succeeded_ids,
    wait_for,
)
from tests.test_ledger import new_job, record

PG_BIN_ENV = "BATCHRUNNER_TEST_PG_BIN"


def pg_bin() -> str | None:
    """The bin folder of an installed PostgreSQL server, 15 preferred (as .ci/run picks it)."""
    given = os.environ.get(PG_BIN_ENV, "").strip()
    if given:
        return given
    if os.access("/usr/lib/postgresql/15/bin/initdb", os.X_OK):
        return "/usr/lib/postgresql/15/bin"
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return os.path.dirname(found[-1]) if found else None


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in path.split("/")[4].split(".") if part.isdigit())


class Cluster:
    """A PostgreSQL cluster in a temp folder, on 127.0.0.1 and a free port, run as the postgres
    user when the tests run as root (the server refuses root)."""

    def __init__(self, bin_dir: str, folder: Path) -> None:
        self.bin_dir, self.folder, self.data = bin_dir, folder, folder / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def command(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [os.path.join(self.bin_dir, program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, cwd=self.folder, capture_output=True, text=True, timeout=60, check=False
        )

    def initdb(self) -> None:
        made = self.command(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"
        )
        assert made.returncode == 0, made.stderr

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -F -c full_page_writes=off"
        log = str(self.folder / "server.log")
        started = self.command(
            "pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "30", "start", "-o", options
        )
        assert started.returncode == 0, started.stderr + (self.folder / "server.log").read_text()

    def stop(self) -> None:
        """An immediate stop: every backend killed, as in a crash or a failover."""
        stopped = self.command("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        assert stopped.returncode == 0, stopped.stderr


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bin_dir = pg_bin()
    if bin_dir is None:
        how = f"install PostgreSQL's server (initdb, pg_ctl) or set {PG_BIN_ENV}"
        if postgres_required():
            pytest.fail(f"the database restart test cannot run, and CI requires it: {how}")
        pytest.skip(f"database restart test skipped: {how}")
    folder = Path(tempfile.mkdtemp(prefix="batchrunner-pg-"))  # tmp_path: postgres may not enter
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = Cluster(bin_dir, folder)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.command("pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


ITEMS = 600
WORKERS = 2
CONCURRENCY = 8
LEASE_S = 3.0
DOWN_S = 5.0  # longer than the lease: no worker may be taken for dead meanwhile


def test_workers_ride_out_a_postgresql_restart(
    tmp_path: Path, cluster: Cluster, fake: FakeServer
) -> None:
    fake.config.latency_ms = 100.0  # 600 items over 2 x 8 requests in flight: about 4 s of work
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    assert invoke("submit", str(job), "--db", cluster.url, "--detach").exit_code == 0
    logs = [tmp_path / f"worker{n}.log" for n in range(WORKERS)]
    common = ("--db", cluster.url, "--base-url", fake.base_url, "--lease", str(LEASE_S))
    options = (*common, "--concurrency", str(CONCURRENCY), "--db-wait", "30")
    workers = [batchrunner("worker", "--job", "1", *options, stderr=log) for log in logs]
    try:
        assert wait_for(lambda: fake.total_requests >= ITEMS // 6, timeout=30)
        cluster.stop()
        stopped_at = fake.total_requests
        time.sleep(DOWN_S)
        assert all(w.poll() is None for w in workers), "a worker gave up on the database"
        cluster.start()
        codes = [w.wait(timeout=40) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    told = "\n".join(log.read_text() for log in logs)
    assert codes == [0] * WORKERS, told
    assert stopped_at < ITEMS  # the restart came mid-run
    assert "waiting up to 30s for it (--db-wait)" in told
    assert "the ledger answers again" in told
    assert "taken for dead" not in told

    # Every item succeeded, each sent exactly once (no worker lost its items to another), and
    # the ledger holds one attempt for every request the server saw.
    assert set(fake.requests_by_id.values()) == {1} and len(fake.requests_by_id) == ITEMS
    ledger = Ledger(cluster.url)
    try:
        assert ledger.summary(1).counts == {"succeeded": ITEMS}
        assert ledger.summary(1).attempts == fake.total_requests
        assert len({row.run_id for row in ledger.iter_items(1)}) == WORKERS  # both worked
    finally:
        ledger.close()


def hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another process's exclusive transaction on the ledger: every write waits for it."""
    other = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    return other


def quiet(fake: FakeServer, for_s: float = 0.5, timeout: float = 15.0) -> bool:
    """Wait until the server has seen no new request for `for_s` (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = fake.total_requests
        time.sleep(for_s)
        if fake.total_requests == before:
            return True
    return False


def test_a_ledger_locked_past_the_busy_timeout_is_waited_for(
    tmp_path: Path, fake: FakeServer
) -> None:
    fake.config.latency_ms = 10.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(300)])
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    assert invoke("submit", str(job), "--db", url, "--detach").exit_code == 0
    impatient = f"{url}?timeout=0.3"  # each write gives up after 0.3 s, the run after 30 s
    args = ("run", "--db", impatient, "--base-url", fake.base_url, "--concurrency", "8")
    proc = batchrunner(*args, "--db-wait", "30", stderr=tmp_path / "run.err")
    try:
        assert wait_for(lambda: fake.total_requests >= 50, timeout=30)
        with contextlib.closing(hold_write_lock(db)) as other:
            assert quiet(fake)  # the run waits for the ledger, sending nothing more
            time.sleep(1.0)  # several busy timeouts
            assert proc.poll() is None
            other.execute("ROLLBACK")
        assert proc.wait(timeout=60) == 0, (tmp_path / "run.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "database is locked" in (tmp_path / "run.err").read_text()
    assert_each_item_succeeded_once(db, 300)
    assert set(fake.requests_by_id.values()) == {1}


def test_a_run_killed_while_the_ledger_is_locked_resends_at_most_twice_the_concurrency(
    tmp_path: Path, fake: FakeServer
) -> None:
    concurrency = 8
    fake.config.latency_ms = 20.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(400)])
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    assert invoke("submit", str(job), "--db", url, "--detach").exit_code == 0
    args = ("run", "--db", url, "--base-url", fake.base_url, "--concurrency", str(concurrency))
    proc = batchrunner(*args, stderr=tmp_path / "run.err")
    try:
        assert wait_for(lambda: fake.total_requests >= 50, timeout=30)
        with contextlib.closing(hold_write_lock(db)) as other:
            # Answers keep coming while no result can be written: the run sends until the
            # answers waiting for the ledger fill its backlog, then stops sending.
            assert quiet(fake)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            other.execute("ROLLBACK")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(SETTLE_S)
    recorded, sent_before = succeeded_ids(db), Counter(fake.requests_by_id)
    assert 0 < len(recorded) < 400

    assert invoke("run", "--db", url, "--base-url", fake.base_url).exit_code == 0
    assert_each_item_succeeded_once(db, 400)
    resent = {cid for cid, n in fake.requests_by_id.items() if n > 1}
    assert resent and not resent & recorded  # only answers the ledger never got
    assert all(sent_before[cid] == 1 for cid in resent)
    assert len(resent) <= 2 * concurrency, len(resent)
    assert query(db, "SELECT count(*) FROM attempts") == [(fake.total_requests - len(resent),)]


# -- the ledger's side, on both backends ------------------------------------------------------


def test_a_repeated_write_records_each_attempt_once(ledger_url: str) -> None:
    """A write repeated after a lost connection (whose commit landed after all) doubles
    nothing: the item keeps its result and each attempt has one row."""
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 2)
    run = ledger.start_run(job, max_attempts=5)
    a, b = ledger.claim_pending(job, run, 2)
    batch = [record(a.id, job, run, 1, None), record(b.id, job, run, 1, "succeeded")]
    ledger.record_outcomes(batch)
    with ledger.engine.begin() as conn:  # the same batch again, as a repeat does
        write_outcomes(conn, batch, "run_id", again=True)
    assert [(x.number, x.outcome) for x in ledger.attempts_of(a.id)] == [(1, "retry")]
    assert [(x.number, x.outcome) for x in ledger.attempts_of(b.id)] == [(1, "succeeded")]
    assert ledger.summary(job).counts == {"running": 1, "succeeded": 1}
    ledger.close()


def test_a_repeated_claim_finds_what_the_lost_try_claimed(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 5)
    run = ledger.start_run(job, max_attempts=5)
    ledger.claim_pending(job, run, 1)  # an earlier claim of the same run
    at = utcnow()
    with ledger.engine.begin() as conn:  # a claim whose commit landed, its answer lost
        dialect = conn.dialect.name
        lost = [row.position for row in conn.execute(claim_statement(dialect, job, run, 2, at))]
    with ledger.engine.connect() as conn:
        found = [row.position for row in conn.execute(claimed_before(job, run, at))]
    assert sorted(found) == sorted(lost) == [2, 3]  # those two, not the earlier claim's
    ledger.close()


def test_a_run_taken_for_dead_lives_again_at_its_next_heartbeat(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 4)
    cut_off = ledger.start_run(job, max_attempts=5, shared=True)
    other = ledger.start_run(job, max_attempts=5, shared=True)
    ledger.claim_pending(job, cut_off, 2)
    with ledger.engine.begin() as conn:  # its machine went quiet past the lease
        conn.execute(
            update(runs_t)
            .where(runs_t.c.id == cut_off)
            .values(hostname="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=30))
        )
    assert ledger.reclaim(job, lease_s=10) == 1  # the other took it for dead
    assert ledger.summary(job).counts == {"pending": 4}
    assert ledger.heartbeat(cut_off) is True  # it comes back, told its items went to others
    assert ledger.heartbeat(cut_off) is False  # an ordinary beat from then on
    assert sorted(w.id for w in ledger.runs_of(job, lease_s=10)) == sorted([cut_off, other])
    assert len(ledger.claim_pending(job, cut_off, 2)) == 2
    assert ledger.reclaim(job, lease_s=10) == 2  # and its new items stay its own
    assert ledger.summary(job).counts == {"pending": 2, "running": 2}
    ledger.close()


def test_silence_while_the_ledger_was_locked_does_not_count_against_a_lease(
    db_path: Path,
) -> None:
    """A process that waited for its ledger takes no run for dead until every run had a lease
    to beat again."""
    ledger = Ledger(f"sqlite:///{db_path}?timeout=0.1")
    job = new_job(ledger, 2)
    quiet_one = ledger.start_run(job, max_attempts=5, shared=True)
    waiting = ledger.start_run(job, max_attempts=5, shared=True)
    with ledger.engine.begin() as conn:  # its last heartbeat, before a long outage
        conn.execute(
            update(runs_t)
            .where(runs_t.c.id == quiet_one)
            .values(hostname="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=30))
        )
    ledger.wait_for_database(10)
    other = hold_write_lock(db_path)
    release = threading.Timer(0.5, other.execute, ("ROLLBACK",))
    release.start()
    try:
        ledger.heartbeat(waiting)  # waits past several busy timeouts, then gets through
    finally:
        release.join()
        other.close()
    assert ledger.reclaim(job, lease_s=10) == 2  # its silence counts from the ledger's return
    ledger.wait_for_database(0)
    ledger.close()


def test_a_ledger_that_stays_away_stops_the_call_after_the_wait(db_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{db_path}?timeout=0.1")
    job = new_job(ledger, 1)
    run = ledger.start_run(job, max_attempts=5)
    ledger.wait_for_database(0.5)
    with contextlib.closing(hold_write_lock(db_path)) as other:
        with pytest.raises(LedgerUnavailable) as refused:
            ledger.heartbeat(run)
        other.execute("ROLLBACK")
    assert str(refused.value) == (
        f"could not update the heartbeat in the ledger at sqlite:///{db_path}?timeout=0.1: "
        f"database is locked{HINTS['database is locked']}; waited 1s for it (--db-wait). "
        "Nothing already recorded is lost; fix the cause and resume with `batchrunner run`."
    )
    ledger.heartbeat(run)
    ledger.close()


def test_a_postgresql_ledger_that_is_not_there_is_named_without_its_password() -> None:
    url = f"postgresql+psycopg://batch:s3cret-pw@127.0.0.1:{free_port()}/ledger"
    with pytest.raises(LedgerUnavailable) as refused:
        Ledger(url)
    message = str(refused.value)
    assert message.startswith(
        "could not open the ledger at postgresql+psycopg://batch:***@127.0.0.1:"
    )
    assert "s3cret-pw" not in message and "\n" not in message
    assert "Connection refused" in message


def test_a_second_ctrl_c_gives_up_on_a_ledger_that_is_away(
    tmp_path: Path, fake: FakeServer
) -> None:
    fake.config.latency_ms = 10.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(300)])
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    assert invoke("submit", str(job), "--db", url, "--detach").exit_code == 0
    args = ("run", "--db", f"{url}?timeout=0.3", "--base-url", fake.base_url)
    proc = batchrunner(*args, "--concurrency", "8", "--db-wait", "600", stderr=tmp_path / "err")
    try:
        assert wait_for(lambda: fake.total_requests >= 50, timeout=30)
        with contextlib.closing(hold_write_lock(db)) as other:
            assert quiet(fake)
            proc.send_signal(signal.SIGINT)  # waits for the answers to be recorded ...
            assert not wait_for(lambda: proc.poll() is not None, timeout=1.0)
            proc.send_signal(signal.SIGINT)  # ... until told not to
            assert wait_for(lambda: proc.poll() is not None, timeout=15)
            other.execute("ROLLBACK")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "err").read_text()
    assert proc.returncode == 3, stderr  # resumable
    assert "database is locked" in stderr and "for it (then a second Ctrl-C)" in stderr
    assert invoke("run", "--db", url, "--base-url", fake.base_url).exit_code == 0
    assert_each_item_succeeded_once(db, 300)
    assert len({cid for cid, n in fake.requests_by_id.items() if n > 1}) <= 2 * 8


@pytest.mark.postgres
def test_writes_whose_commit_answer_was_lost_are_repeated_safely(pg_url: str) -> None:
    """The COMMIT lands but its answer never comes back (the connection dies on the way): each
    write is repeated, and the repeat finds what the lost try did instead of doing it twice."""
    given = make_url(pg_url)
    with lossy_proxy(given.host or "127.0.0.1", given.port or 5432) as proxy:
        ledger = Ledger(given.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
        ledger.wait_for_database(30)
        job = new_job(ledger, 5)

        proxy.commits_to_lose = 1
        run = ledger.start_run(job, max_attempts=5)  # alone: its own lost run is no rival
        proxy.commits_to_lose = 1
        claimed = ledger.claim_pending(job, run, 3)
        assert [item.position for item in claimed] == [1, 2, 3]
        assert ledger.summary(job).counts == {"running": 3, "pending": 2}  # none orphaned

        proxy.commits_to_lose = 1
        ledger.record_outcomes([record(item.id, job, run, 1, "succeeded") for item in claimed])
        for item in claimed:
            assert [(a.number, a.outcome) for a in ledger.attempts_of(item.id)] == [
                (1, "succeeded")
            ]
        proxy.commits_to_lose = 1
        ledger.heartbeat(run)
        proxy.commits_to_lose = 1
        assert ledger.end_run(job, run) == "stopped"
        assert ledger.summary(job).counts == {"succeeded": 3, "pending": 2}
        assert proxy.lost == 5
        ledger.close()
