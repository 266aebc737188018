"""`status` tells the story (issue 15): why each job stopped and when (`stop_reason`,
`stopped_at`), what to do next (`next_step`), the budget in force, and the answers cut by
`length` or a content filter counted apart from plain successes.

Tests taking `ledger_url` run on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from batchrunner.commands import run_batch_job
from batchrunner.fake import FakeServer
from batchrunner.stops import next_step
from tests import test_batch_mode, test_run
from tests.conftest import chat_line, free_port, write_jsonl
from tests.test_cli import invoke, status_json
from tests.test_crash import batchrunner, wait_for
from tests.test_run import run


def job_status(db_url: str, job: int = 1) -> dict[str, Any]:
    (status,) = [s for s in status_json(db_url)["jobs"] if s["id"] == job]
    found: dict[str, Any] = status
    return found


def status_text(db_url: str, job: int = 1) -> str:
    shown = invoke("status", str(job), "--db", db_url)
    assert shown.exit_code == 0, shown.output
    return shown.stdout


def test_a_bad_key_says_set_a_valid_key_and_a_good_run_clears_the_story(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, [chat_line(i) for i in range(20)])
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    assert run(ledger, job).state == "stopped"
    status = job_status(ledger_url, job)
    assert status["state"] == "stopped"
    assert status["stop_reason"].startswith("auth: Incorrect API key provided")
    assert status["stopped_at"] is not None and status["stopped_at"].endswith("Z")
    assert status["next_step"] == f"set a valid OPENAI_API_KEY, then batchrunner run {job}"
    text = status_text(ledger_url, job)
    assert f"  stopped: auth: Incorrect API key provided. (at {status['stopped_at']})" in text
    assert f"  next: set a valid OPENAI_API_KEY, then batchrunner run {job}" in text

    fake.config.force_status = fake.config.force_code = None
    assert run(ledger, job).state == "completed"
    status = job_status(ledger_url, job)
    assert (status["state"], status["stop_reason"], status["next_step"]) == (
        "completed",
        None,
        None,
    )
    assert "stopped:" not in status_text(ledger_url, job)


def test_no_quota_says_add_credit(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    ledger, job = test_run.submit(tmp_path, db_url, fake, [chat_line(i) for i in range(10)])
    fake.config.force_status, fake.config.force_code = 429, "insufficient_quota"
    assert run(ledger, job).state == "stopped"
    status = job_status(db_url, job)
    assert status["stop_reason"].startswith("quota: You exceeded your current quota")
    assert status["next_step"] == (
        f"add credit (or raise the account's limit), then batchrunner run {job}"
    )


def test_a_budget_stop_says_raise_it_and_status_shows_the_budget_in_force(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i, max_tokens=200) for i in range(100)]  # at most about $0.00012 each
    path = write_jsonl(tmp_path / "j.jsonl", lines)
    args = ("--db", db_url, "--base-url", fake.base_url, "--hosted-prices")
    assert invoke("submit", str(path), *args, "--budget", "0.003").exit_code == 3
    status = job_status(db_url)
    assert status["stop_reason"].startswith("budget: $0.00")
    assert status["budget_usd"] == 0.003
    raised = math.ceil(status["estimate_usd"] * 1.25 * 100) / 100  # above twice the budget
    assert raised > 0.006
    assert status["next_step"] == f"raise it: batchrunner run 1 --budget {raised:.2f}"
    assert "budget $0.0030" in status_text(db_url)

    assert invoke("run", "1", *args, "--budget", "1").exit_code == 0
    status = job_status(db_url)
    assert status["budget_usd"] == 1 and status["state"] == "completed"
    assert status["stop_reason"] is None and status["next_step"] is None
    assert "budget $1.00" in status_text(db_url)


def test_an_unreachable_endpoint_says_check_it(tmp_path: Path, db_url: str) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    base = f"http://127.0.0.1:{free_port()}/v1"
    result = invoke(
        "submit", str(path), "--db", db_url, "--base-url", base, "--unreachable-wait", "0"
    )
    assert result.exit_code == 3, result.stderr
    status = job_status(db_url)
    assert status["stop_reason"].startswith("unreachable: ")
    assert status["next_step"] == (
        "check the endpoint (--base-url) and the proxy, then batchrunner run 1"
    )
    assert "  next: check the endpoint" in status_text(db_url)


def test_ctrl_c_says_run_it_again(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    fake.config.latency_ms = 50.0
    path = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(400)])
    args = ("--db", db_url, "--base-url", fake.base_url, "--concurrency", "2")
    assert invoke("submit", str(path), *args, "--detach").exit_code == 0
    child = batchrunner("run", "1", *args)
    try:
        assert wait_for(lambda: fake.total_requests >= 5, timeout=60)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 3
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    status = job_status(db_url)
    assert status["state"] == "stopped" and status["stop_reason"] == "interrupted"
    assert status["next_step"] == "batchrunner run 1"
    assert "  stopped: interrupted (at " in status_text(db_url)


def test_a_killed_run_says_so_and_to_run_it_again(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.latency_ms = 50.0
    path = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(400)])
    args = ("--db", db_url, "--base-url", fake.base_url, "--concurrency", "2")
    assert invoke("submit", str(path), *args, "--detach").exit_code == 0
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    assert invoke("run", "1", *args).exit_code == 3  # a stop with a reason first
    assert job_status(db_url)["stop_reason"].startswith("auth:")
    fake.config.force_status = fake.config.force_code = None
    child = batchrunner("run", "1", *args)
    try:
        assert wait_for(lambda: fake.status_counts[200] >= 5, timeout=60)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 30
    while job_status(db_url)["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)  # its process is gone: the next look sees its run dead
    status = job_status(db_url)  # the earlier run's reason is not this one's
    assert status["state"] == "stopped" and status["stop_reason"] is None
    assert status["next_step"] == "batchrunner run 1"
    assert "  stopped: its run ended without saying why (killed" in status_text(db_url)


@pytest.mark.parametrize(
    ("reason", "step"),
    [
        ("permission: Country, region, or territory not supported.", "check what the key may use"),
        ("not_found: POST http://h/v1/files: HTTP 404: Invalid URL", "the server answered 404"),
        ("server_error: no Files/Batch API call went through for 120s", "wait until the API"),
        ("auth: the proxy wants credentials it was not given (407 Proxy", "give the proxy"),
        ("batch refused by the API: too many lines", "fix what the API refused"),
        ("terminated", "batchrunner run 7"),
        ("something new: a cause no table row names yet", "batchrunner run 7"),
    ],
)
def test_every_stop_reason_the_runners_give_has_a_next_step(reason: str, step: str) -> None:
    """The runners' other words for a stop (their wording in runner/concurrent.py, batch.py)."""
    counts = {"pending": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    job = {"id": 7, "state": "stopped", "stop_reason": reason, "counts": counts, "options": {}}
    found = next_step(job)
    assert found is not None and found.startswith(step) and found.endswith("batchrunner run 7")


def test_answers_cut_by_length_or_a_content_filter_are_counted_apart(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(6)]
    lines += [chat_line(6, "[fake:length] a long story"), chat_line(7, "[fake:content_filter]")]
    lines.append(chat_line(8, "a question whose answer the cap cuts " * 8, max_tokens=3))
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines)
    assert run(ledger, job).state == "completed"
    status = job_status(ledger_url, job)
    assert status["counts"]["succeeded"] == 9
    assert status["flagged"] == {"length": 2, "content_filter": 1}
    assert status["next_step"] is None
    assert "succeeded 9 (2 cut by length, 1 stopped by a content filter)" in status_text(
        ledger_url, job
    )


def test_batch_mode_stores_its_stop_and_counts_flagged_answers(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:length] a long story")]
    ledger, job = test_batch_mode.submit(tmp_path, db_url, fake, lines)
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    report = test_batch_mode.wait_for(ledger, job)
    assert report.state == "stopped" and report.stop_reason is not None
    status = job_status(db_url, job)
    assert status["stop_reason"] == report.stop_reason and status["stop_reason"].startswith("auth")
    assert status["next_step"] == f"set a valid OPENAI_API_KEY, then batchrunner run {job}"

    fake.config.force_status = fake.config.force_code = None
    assert test_batch_mode.wait_for(ledger, job).state == "completed"
    status = job_status(db_url, job)
    assert status["stop_reason"] is None and status["flagged"] == {"length": 1}


def test_a_batch_job_with_batches_out_says_follow_them(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_in_progress_s = 30.0  # still at the API while status looks
    ledger, job = test_batch_mode.submit(tmp_path, db_url, fake, [chat_line(0), chat_line(1)])
    assert run_batch_job(ledger, job, test_batch_mode.FAST, wait=False).state == "submitted"
    status = job_status(db_url, job)
    assert status["stop_reason"] is None
    assert status["next_step"] == f"follow its batches: batchrunner run {job} --wait"
    assert "its batches are at the API" in status_text(db_url, job)
