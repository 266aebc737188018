"""`run --retry-failed [--kind KIND ...]` (issue 15): failed items go back to pending with a
fresh allowance of attempts, in both modes; their attempts count and history stay, their spend
stays counted, nothing that succeeded is sent again.

Every test taking `ledger_url` runs on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrunner.commands import exit_code, retry_failed
from batchrunner.errors import UsageError
from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from tests import test_batch_mode, test_run
from tests.conftest import chat_line
from tests.test_cli import invoke, status_json
from tests.test_run import exported, run

# item-6 is refused once (a 400: fails at once); item-7 answers 500 three times (with
# max_attempts 2 it fails after two, and needs two more after a retry).
LINES = [chat_line(i) for i in range(6)]
LINES += [chat_line(6, "[fake:400x1] refused once"), chat_line(7, "[fake:500x3] down a while")]


def by_id(ledger: Ledger, job: int) -> dict[str, dict[str, Any]]:
    return {record["custom_id"]: record for record in exported(ledger, job)}


def attempt_outcomes(ledger: Ledger, job: int, custom_id: str) -> list[str]:
    (item,) = [row for row in ledger.iter_items(job) if row.custom_id == custom_id]
    return [attempt.outcome for attempt in ledger.attempts_of(item.id)]


def spent_by_attempts(ledger: Ledger, job: int) -> float:
    """What the job's attempt rows say was paid: the job's spend must be this."""
    return sum(
        attempt.result.cost_usd or 0.0
        for row in ledger.iter_items(job)
        for attempt in ledger.attempts_of(row.id)
    )


def test_failed_items_are_retried_by_kind_with_their_history_and_spend_kept(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, LINES, max_attempts=2)
    report = run(ledger, job)
    assert report.state == "completed" and exit_code(ledger, report) == 1
    summary = ledger.summary(job)
    assert summary.failures_by_kind == {"invalid_request": 1, "server_error": 1}
    first_spend = summary.cost_usd
    assert first_spend is not None and first_spend > 0
    answers = {cid: r["response"] for cid, r in by_id(ledger, job).items() if r["response"]}

    assert retry_failed(ledger, job, ["server_error"]) == 1  # only that kind
    status = status_json(ledger_url)["jobs"][0]
    assert status["counts"]["failed"] == 1 and status["counts"]["pending"] == 1
    report = run(ledger, job)
    assert report.state == "completed" and exit_code(ledger, report) == 1
    records = by_id(ledger, job)
    assert (records["item-7"]["status"], records["item-7"]["attempts"]) == ("succeeded", 4)
    assert attempt_outcomes(ledger, job, "item-7") == ["retry", "failed", "retry", "succeeded"]
    assert records["item-6"]["status"] == "failed"  # not of that kind: left alone
    assert fake.requests_by_id["item-6"] == 1

    assert retry_failed(ledger, job) == 1  # every failed item (the one left)
    assert run(ledger, job).state == "completed"
    records = by_id(ledger, job)
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert records["item-6"]["attempts"] == 2 and records["item-6"]["error"] is None
    assert attempt_outcomes(ledger, job, "item-6") == ["failed", "succeeded"]
    assert exit_code(ledger, run(ledger, job)) == 0
    # nothing answered is sent again, and every answer is the one first recorded
    assert {fake.requests_by_id[f"item-{i}"] for i in range(6)} == {1}
    assert {cid: records[cid]["response"] for cid in answers} == answers
    summary = ledger.summary(job)
    assert summary.cost_usd is not None and summary.cost_usd > first_spend
    assert summary.cost_usd == pytest.approx(spent_by_attempts(ledger, job))
    assert summary.attempts == 6 + 2 + 4


def test_the_cli_retries_failed_items_and_refuses_a_kind_that_does_not_exist(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, db_url, fake, LINES, max_attempts=2)
    assert exit_code(ledger, run(ledger, job)) == 1
    status = status_json(db_url)["jobs"][0]
    assert status["next_step"] == (
        f"batchrunner run {job} --retry-failed (failed: invalid_request 1, server_error 1; "
        "add --kind KIND to retry only those)"
    )

    wrong = invoke("run", str(job), "--retry-failed", "--kind", "servererror", "--db", db_url)
    assert wrong.exit_code == 2
    assert "'servererror' is not an error kind" in wrong.stderr
    assert "invalid_request" in wrong.stderr and "server_error" in wrong.stderr
    alone = invoke("run", str(job), "--kind", "server_error", "--db", db_url)
    assert alone.exit_code == 2 and "--retry-failed" in alone.stderr
    assert status_json(db_url)["jobs"][0]["counts"] == status["counts"]  # untouched
    assert fake.total_requests == 6 + 1 + 2

    done = invoke("run", str(job), "--retry-failed", "--db", db_url)
    assert done.exit_code == 0, done.stderr
    assert f"--retry-failed: 2 failed items of job {job} back to pending" in done.stderr
    status = status_json(db_url)["jobs"][0]
    assert status["counts"]["succeeded"] == 8 and status["next_step"] is None


def test_a_kill_right_after_the_retry_leaves_the_job_to_run(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """The retry is one committed statement: whatever happens next, the items are pending and
    the job says so (a completed job is stopped again), so a later `run` takes them."""
    ledger, job = test_run.submit(tmp_path, db_url, fake, LINES, max_attempts=2)
    run(ledger, job)
    assert retry_failed(ledger, job) == 2
    ledger.close()  # the process is gone

    ledger = Ledger(db_url)
    (status,) = status_json(db_url)["jobs"]
    assert status["state"] == "stopped" and status["counts"]["pending"] == 2
    assert status["stop_reason"] == "retried: 2 failed items back to pending"
    assert status["next_step"] == f"batchrunner run {job}"
    assert run(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 8}


def test_a_retry_while_another_worker_runs_the_job(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    """A live worker's items are not touched; the retried ones are claimed like any pending
    item (by that worker, here), and the job stays running."""
    lines = [chat_line(0, "[fake:400x1]"), chat_line(1, "[fake:400x1]")]
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines)
    run(ledger, job)
    assert ledger.summary(job).counts == {"failed": 2}
    other = ledger.start_run(job, max_attempts=5, shared=True)  # a worker that is live
    assert retry_failed(ledger, job, ["invalid_request"]) == 2
    assert ledger.job_state(job) == "running"
    claimed = ledger.claim_pending(job, other, 10)
    assert [(item.custom_id, item.attempts, item.attempts_floor) for item in claimed] == [
        ("item-0", 1, 1),
        ("item-1", 1, 1),
    ]
    assert ledger.end_run(job, other) == "stopped"  # it let them go: pending again
    assert run(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 2}


def test_retry_failed_refuses_a_wrong_kind_before_touching_anything(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, db_url, fake, LINES[6:7])
    run(ledger, job)
    with pytest.raises(UsageError, match="the kinds: rate_limit, quota, auth"):
        retry_failed(ledger, job, ["invalid_request", "nope"])
    assert ledger.summary(job).counts == {"failed": 1}


def test_batch_mode_retries_failed_lines_with_a_fresh_allowance(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:400x1] refused once")]
    lines.append(chat_line(2, "[fake:500x3] down a while"))
    ledger, job = test_batch_mode.submit(tmp_path, ledger_url, fake, lines, max_attempts=2)
    assert test_batch_mode.wait_for(ledger, job).state == "completed"
    assert ledger.summary(job).failures_by_kind == {"invalid_request": 1, "server_error": 1}
    spent = ledger.summary(job).cost_usd

    assert retry_failed(ledger, job) == 2
    report = test_batch_mode.wait_for(ledger, job)
    assert report.state == "completed" and exit_code(ledger, report) == 0
    records = by_id(ledger, job)
    assert [(r["status"], r["attempts"]) for r in records.values()] == [
        ("succeeded", 1),
        ("succeeded", 2),
        ("succeeded", 4),
    ]
    assert attempt_outcomes(ledger, job, "item-2") == ["retry", "failed", "retry", "succeeded"]
    assert fake.batch_api.lines_by_id["item-0"] == 1  # answered once, never packed again
    summary = ledger.summary(job)
    assert spent is not None and summary.cost_usd is not None and summary.cost_usd > spent
    assert summary.cost_usd == pytest.approx(spent_by_attempts(ledger, job))


def test_a_cancelled_jobs_failed_items_stay_failed(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, db_url, fake, LINES[6:7])
    run(ledger, job)
    ledger.update_job_state(job, "cancelled")
    with pytest.raises(UsageError, match="was cancelled"):
        retry_failed(ledger, job)
    assert ledger.summary(job).counts == {"failed": 1}
