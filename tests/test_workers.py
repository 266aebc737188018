"""Several worker processes on one job in a real PostgreSQL ledger, against the fake server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from batchrunner.ledger.models import attempts_t, items_t
from tests.conftest import chat_line, write_jsonl

pytestmark = pytest.mark.postgres

ITEMS = 5000
RPM = 36_000  # 600 requests/s for all workers together
CONCURRENCY = 16
LEASE_S = 2.0


def start_worker(db: str, fake: FakeServer, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "batchrunner", "worker", "--job", "1", "--db", db]
    command += ["--base-url", fake.base_url, "--rpm", str(RPM)]
    command += ["--concurrency", str(CONCURRENCY), "--lease", str(LEASE_S)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def test_four_workers_share_a_job_and_finish_a_killed_ones_items(
    tmp_path: Path, pg_url: str, fake: FakeServer
) -> None:
    fake.config.latency_ms, fake.config.latency_jitter_ms = 5.0, 10.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    submitted = subprocess.run(
        [sys.executable, "-m", "batchrunner", "submit", str(job), "--detach", "--db", pg_url],
        capture_output=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    workers = [start_worker(pg_url, fake, tmp_path / f"w{n}.log") for n in range(4)]
    deadline = time.monotonic() + 120
    try:
        while fake.total_requests < ITEMS // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=10)  # reaped: its pid is gone, as on a real machine
        killed_at = fake.total_requests
        codes = [w.wait(timeout=max(1.0, deadline - time.monotonic())) for w in workers[1:]]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    logs = "\n".join((tmp_path / f"w{n}.log").read_text() for n in range(1, 4))
    assert codes == [0, 0, 0], logs
    assert 0 < killed_at < ITEMS

    ledger = Ledger(pg_url)
    assert ledger.summary(1).counts == {"succeeded": ITEMS}
    with ledger.engine.connect() as conn:
        successes = conn.execute(
            select(attempts_t.c.item_id, func.count())
            .where(attempts_t.c.outcome == "succeeded")
            .group_by(attempts_t.c.item_id)
        ).all()
    assert len(successes) == ITEMS and {n for _, n in successes} == {1}  # exactly once each
    resent = [cid for cid, n in fake.requests_by_id.items() if n > 1]
    assert len(resent) <= CONCURRENCY  # only what the killed worker had in flight
    assert fake.first_request_at is not None and fake.last_request_at is not None
    rate_per_minute = fake.total_requests / (fake.last_request_at - fake.first_request_at) * 60
    print(f"combined rate {rate_per_minute:.0f}/min")
    assert rate_per_minute <= RPM, rate_per_minute
    workers_seen = {row.run_id for row in ledger.iter_items(1)}
    assert len(workers_seen) >= 3  # the work really was shared


@pytest.mark.parametrize("count", [2, 3])
def test_workers_leave_within_moments_of_the_jobs_last_commit(
    tmp_path: Path, pg_url: str, fake: FakeServer, count: int
) -> None:
    """A worker with nothing left to claim used to wait a quarter lease (15 s at the default
    60 s lease) before it looked again at what the others held: the whole fleet lingered
    long after the last answer was recorded."""
    fake.config.latency_ms = 20.0
    items = 600
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(items)])
    submit = [sys.executable, "-m", "batchrunner", "submit", str(job), "--detach", "--db", pg_url]
    assert subprocess.run(submit, capture_output=True, timeout=120).returncode == 0
    command = [sys.executable, "-m", "batchrunner", "worker", "--job", "1", "--db", pg_url]
    command += ["--base-url", fake.base_url, "--concurrency", "8"]  # the default 60 s lease
    workers = [subprocess.Popen(command, stderr=subprocess.DEVNULL) for _ in range(count)]
    exited_at: dict[int, datetime] = {}
    deadline = time.monotonic() + 120
    try:
        while len(exited_at) < count and time.monotonic() < deadline:
            for n, worker in enumerate(workers):
                if n not in exited_at and worker.poll() is not None:
                    exited_at[n] = datetime.now(UTC).replace(tzinfo=None)
            time.sleep(0.02)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert [w.returncode for w in workers] == [0] * count
    ledger = Ledger(pg_url)
    assert ledger.summary(1).counts == {"succeeded": items}
    with ledger.engine.connect() as conn:
        last_commit = conn.execute(select(func.max(items_t.c.finished_at))).scalar_one()
    ledger.close()
    lingered = (max(exited_at.values()) - last_commit).total_seconds()
    print(f"{count} workers: the last left {lingered:.2f} s after the last commit")
    assert lingered < 1.0  # about 0.3 s measured on 2 cores; it was over 15 s
