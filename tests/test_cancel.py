"""`batchrunner cancel` stops a job that is running, in both modes and on every worker: the run
sees the job cancelled within seconds, sends nothing more, lets its requests in flight finish
and records them, cancels what it held unsent, and ends quietly (exit 0)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from batchrunner.commands import cancel_job, run_batch_job, submit_job
from batchrunner.fake import FakeConfig, FakeServer
from batchrunner.jobfile import JobDefaults
from batchrunner.ledger import Ledger
from batchrunner.runner.report import RunReport
from batchrunner.settings import RunSettings
from tests.conftest import chat_line, write_jsonl
from tests.test_crash import invoke, wait_for

REPO = Path(__file__).resolve().parent.parent
ITEMS = 100
CONCURRENCY = 4
# Each request takes longer than a run waits between two looks at its job's state, so a worker
# that had just finished one when the job was cancelled starts at most one more before its run
# sees the cancel: at most CONCURRENCY requests per run start after it.
LATENCY_MS = 1500.0
STOPS_WITHIN_S = 30.0  # generous: the run sees the cancel within a second or two


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrunner", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def stopped(*processes: subprocess.Popen[bytes]) -> list[int]:
    """Each process's exit code, waiting at most STOPS_WITHIN_S in all; killed if it is late."""
    deadline = time.monotonic() + STOPS_WITHIN_S
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def cancel_without_a_key(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    result = invoke("cancel", "--db", db)
    assert result.exit_code == 0, result.stderr


def assert_answered_recorded_and_the_rest_cancelled(db: str, fake: FakeServer) -> None:
    """Every request that was sent was answered and its answer recorded, once; everything
    else is cancelled; nothing is left pending or running."""
    ledger = Ledger(db)
    try:
        assert ledger.job_state(1) == "cancelled"
        items = list(ledger.iter_items(1))
        succeeded = {item.custom_id for item in items if item.state == "succeeded"}
        assert succeeded == set(fake.requests_by_id) and succeeded
        assert set(fake.requests_by_id.values()) == {1}
        assert {item.state for item in items} == {"succeeded", "cancelled"}
    finally:
        ledger.close()


def test_cancel_stops_a_running_concurrent_job_and_keeps_every_answer(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.config.latency_ms = LATENCY_MS
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    assert invoke("submit", str(job), "--detach", "--db", db_url).exit_code == 0
    common = ("--db", db_url, "--base-url", fake.base_url, "--concurrency", str(CONCURRENCY))
    run = start("run", *common, log=tmp_path / "run.err")
    try:
        assert wait_for(lambda: fake.total_requests >= 2 * CONCURRENCY, timeout=60)
    finally:
        sent_before = fake.total_requests
        cancel_without_a_key(db_url, monkeypatch)  # nothing remote: no key needed
    assert stopped(run) == [0]
    stderr = (tmp_path / "run.err").read_text()
    assert "job 1 was cancelled; what had finished stays" in stderr
    assert "Traceback" not in stderr
    assert fake.total_requests - sent_before <= CONCURRENCY
    assert_answered_recorded_and_the_rest_cancelled(db_url, fake)


@pytest.mark.postgres
def test_cancel_stops_every_worker(
    tmp_path: Path, pg_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.config.latency_ms = LATENCY_MS
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    assert invoke("submit", str(job), "--detach", "--db", pg_url).exit_code == 0
    common = ("--db", pg_url, "--base-url", fake.base_url, "--concurrency", str(CONCURRENCY))
    logs = [tmp_path / f"w{n}.err" for n in range(2)]
    workers = [start("worker", "--job", "1", *common, log=log) for log in logs]
    ledger = Ledger(pg_url)
    try:
        both = lambda: len(ledger.runs_of(1)) == 2 and fake.total_requests >= 3 * CONCURRENCY  # noqa: E731
        assert wait_for(both, timeout=60, step=0.05)
    finally:
        ledger.close()
        sent_before = fake.total_requests
        cancel_without_a_key(pg_url, monkeypatch)
    assert stopped(*workers) == [0, 0]
    assert all("Traceback" not in log.read_text() for log in logs)
    assert fake.total_requests - sent_before <= 2 * CONCURRENCY  # one per worker's slot
    assert_answered_recorded_and_the_rest_cancelled(pg_url, fake)


def test_cancel_stops_a_waiting_batch_run_which_settles_what_the_batch_returned(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_in_progress_s = 6.0  # the batch answers its lines over 6 s
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    common = ("--db", db_url, "--base-url", fake.base_url)
    assert invoke("submit", str(job), "--mode", "batch", "--detach", *common).exit_code == 0
    # Polls a minute apart: the run looks at its job between polls, and sees the cancel.
    run = start("run", "--wait", "--poll-interval", "60", *common, log=tmp_path / "run.err")
    try:
        assert wait_for(lambda: fake.batch_api.batches_created == 1, timeout=60)
        time.sleep(2.0)  # a third or so of its lines answered
    finally:
        result = invoke("cancel", "--db", db_url)  # a remote batch: the key is needed
    assert result.exit_code == 0, result.stderr
    assert stopped(run) == [0]
    stderr = (tmp_path / "run.err").read_text()
    assert "job 1 was cancelled" in stderr and "Traceback" not in stderr
    (remote,) = fake.batch_api.batches.values()
    assert remote.cancelled_at is not None and fake.batch_api.batches_created == 1
    ledger = Ledger(db_url)
    counts = ledger.summary(1).counts
    ledger.close()
    assert set(counts) == {"succeeded", "cancelled"}, counts  # its answers kept, the rest not
    assert counts["succeeded"] + counts["cancelled"] == ITEMS


def test_a_simulated_batch_job_is_cancelled_without_a_key_by_the_run_that_holds_its_batches(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A simulated job's batches live in the fake server of the process running it: `cancel`
    cannot reach them, the run sees the job cancelled and cancels them itself."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    defaults, settings = JobDefaults(), RunSettings()
    ledger, submitted = submit_job(
        db_url, str(job), defaults=defaults, settings=settings, mode="batch", simulated=True
    )
    slow = FakeConfig(batch_validating_s=0.1, batch_in_progress_s=6.0, batch_finalizing_s=0.1)
    reports: list[RunReport] = []

    def run() -> None:
        reports.append(
            run_batch_job(ledger, submitted.job_id, wait=True, poll_s=0.1, fake_config=slow)
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    in_progress = lambda: any(b.remote_id for b in ledger.batches_of(submitted.job_id))  # noqa: E731
    assert wait_for(in_progress, timeout=60, step=0.05)
    time.sleep(1.5)  # some of its lines answered
    monkeypatch.delenv("OPENAI_API_KEY")
    other = Ledger(db_url)  # as from another process
    cancel_job(other, submitted.job_id)
    other.close()
    thread.join(timeout=STOPS_WITHIN_S)
    assert not thread.is_alive()
    assert reports[0].state == "cancelled"
    (batch,) = ledger.batches_of(submitted.job_id, ("settled",))
    assert batch.remote_status == "cancelled"  # the run cancelled it
    counts = ledger.summary(submitted.job_id).counts
    assert set(counts) == {"succeeded", "cancelled"}, counts
    assert counts["succeeded"] + counts["cancelled"] == ITEMS
    ledger.close()
