"""Ctrl-C at any moment of the real CLI: one short line and exit 3, never a traceback, and the
job resumable with nothing lost (the first Ctrl-C of a run stops it gracefully, a second one at
once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from batchrunner.demand import token_demand
from batchrunner.fake import FakeServer
from batchrunner.runner.budget import worst_case_of
from tests.conftest import chat_line, write_jsonl
from tests.test_crash import assert_each_item_succeeded_once, invoke, query, wait_for

CHAT = "/v1/chat/completions"

REPO = Path(__file__).resolve().parent.parent
ITEMS = 60
# `python -m batchrunner ARGS`, from the first line of batchrunner's entry point (`main` in
# batchrunner/__main__.py): a SIGINT in the few milliseconds before it (Python's own start-up,
# its site module, finding and importing the package, whose __init__ imports nothing) is
# Python's to report, with a traceback of its own that no program can prevent.
LAUNCH = (
    "import sys, batchrunner.__main__ as entry; sys.stderr.write('started\\n'); "
    "sys.stderr.flush(); sys.argv = ['batchrunner', *sys.argv[1:]]; entry.main()"
)


def interrupted(
    args: list[str],
    after_s: list[float],
    ready: float = 0.0,
    fake: FakeServer | None = None,
    until: Callable[[], bool] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Start the CLI, send SIGINT after each delay in turn (counted from when `fake` has seen
    `ready` more requests, or `until` holds, else from when the interpreter has started), and
    wait for it to end."""
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None and process.stderr.readline() == "started\n"
        if fake is not None:
            wanted = fake.total_requests + ready
            assert wait_for(lambda: fake.total_requests >= wanted, timeout=60)
        if until is not None:
            assert wait_for(until, timeout=60)
        for delay in after_s:
            time.sleep(delay)
            process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_stopped_quietly(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 3 with one short line about it, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 3, result.stderr
    assert "interrupted" in result.stderr, result.stderr


def test_ctrl_c_at_any_moment_of_start_up_is_one_line_and_exit_3(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.latency_ms = 200.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    assert invoke("submit", str(job), "--detach", "--db", db_url).exit_code == 0
    run = ["run", "--db", db_url, "--base-url", fake.base_url, "--concurrency", "4"]
    # At once, in the imports, opening the ledger, starting the run, running.
    for delay in (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.2):
        assert_stopped_quietly(interrupted(run, [delay]))
    fake.config.latency_ms = 0.0
    assert invoke("run", "--db", db_url, "--base-url", fake.base_url).exit_code == 0
    assert_each_item_succeeded_once(Path(db_url.removeprefix("sqlite:///")), ITEMS)


def test_a_second_ctrl_c_mid_run_stops_at_once_exit_3_and_the_job_resumes(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.latency_ms = 300.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    assert invoke("submit", str(job), "--detach", "--db", db_url).exit_code == 0
    run = ["run", "--db", db_url, "--base-url", fake.base_url, "--concurrency", "4"]
    # The second one while the requests in flight are awaited, as they come back, and once
    # the run is ending (its items being released, its summary printed).
    for second in (0.05, 0.25, 0.3, 0.35, 0.4, 0.5):
        result = interrupted(run, [0.0, second], ready=4, fake=fake)
        assert_stopped_quietly(result)
        assert "resume with: batchrunner run 1" in result.stderr
    fake.config.latency_ms = 0.0
    assert invoke("run", "--db", db_url, "--base-url", fake.base_url).exit_code == 0
    assert_succeeded_once_besides_the_abandoned(Path(db_url.removeprefix("sqlite:///")), ITEMS)


def assert_succeeded_once_besides_the_abandoned(db: Path, count: int) -> int:
    """Each item succeeded with one recorded request, besides requests abandoned in flight
    (outcome unknown), which the job counts as possibly billed; how many those were."""
    per_item = query(
        db,
        "SELECT i.state, sum(a.outcome = 'succeeded'), sum(a.outcome = 'unknown'), count(a.id), "
        "i.attempts FROM items i LEFT JOIN attempts a ON a.item_id = i.id GROUP BY i.id",
    )
    assert len(per_item) == count
    abandoned = 0
    for state, succeeded, unknown, attempts, counted in per_item:
        assert (state, succeeded, counted) == ("succeeded", 1, attempts)
        assert isinstance(unknown, int) and 1 + unknown == attempts
        abandoned += unknown
    (options,) = query(db, "SELECT options FROM jobs")
    assert orjson.loads(str(options[0])).get("possibly_billed_requests", 0) == abandoned
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    return abandoned


def test_requests_abandoned_by_a_second_ctrl_c_are_possibly_billed_attempts_the_budget_counts(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Four requests in flight (the server answers after 30 s) when a second Ctrl-C comes: each
    is recorded as an attempt of unknown outcome at its worst-case cost, which the job's spend
    counts (and so its budget); the items stay pending, and a later run sends them."""
    fake.config.latency_ms = 30_000.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i, max_tokens=100) for i in range(8)])
    common = ["--db", db_url, "--base-url", fake.base_url]
    assert invoke("submit", str(job), "--detach", "--hosted-prices", *common).exit_code == 0
    run = ["run", *common, "--concurrency", "4"]
    result = interrupted(run, [0.1, 0.1], ready=4, fake=fake)
    assert_stopped_quietly(result)
    assert "4 requests abandoned in flight: recorded as possibly billed" in result.stderr
    db = Path(db_url.removeprefix("sqlite:///"))
    worst = worst_case_of(
        "gpt-4o-mini", token_demand(CHAT, chat_line(0, max_tokens=100)["body"]), None
    )
    assert worst is not None and worst > 0
    abandoned = query(db, "SELECT item_id, number, outcome, cost_usd, error_message FROM attempts")
    assert len(abandoned) == 4
    for _, number, outcome, cost, message in abandoned:
        assert (number, outcome) == (1, "unknown")
        assert cost == pytest.approx(worst)
        assert isinstance(message, str) and "may have answered and billed it" in message
    items = query(db, "SELECT state, attempts FROM items ORDER BY position")
    assert sorted(items) == [("pending", 0)] * 4 + [("pending", 1)] * 4  # all resumable
    told = orjson.loads(invoke("status", "1", "--json", "--db", db_url).stdout)["jobs"][0]
    assert told["possibly_billed_requests"] == 4 and told["attempts"] == 4
    assert told["cost_usd"] == pytest.approx(4 * worst)
    assert told["possibly_billed_usd"] == pytest.approx(4 * worst)
    text = invoke("status", "1", "--db", db_url).stdout
    assert "for 4 requests abandoned in flight (possibly billed" in text

    fake.config.latency_ms = 0.0
    seen = fake.total_requests
    held = invoke("run", *common, "--budget", f"{4 * worst * 1.5:.8f}")  # spent: 4 worst cases
    assert held.exit_code == 3 and "budget" in held.stderr, held.stderr
    # Room for two more worst cases beside the four possibly billed (six without them).
    assert 1 <= fake.total_requests - seen <= 2
    done = invoke("run", *common, "--budget", "1")
    assert done.exit_code == 0, done.stderr
    assert assert_succeeded_once_besides_the_abandoned(db, 8) == 4


def test_ctrl_c_twice_while_a_batch_run_waits_exits_3_and_the_batches_go_on(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_in_progress_s = 3.0
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(ITEMS)])
    common = ["--db", db_url, "--base-url", fake.base_url]
    assert invoke("submit", str(job), "--mode", "batch", "--detach", *common).exit_code == 0
    run = ["run", "--wait", "--poll-interval", "0.2", *common]
    created = lambda: fake.batch_api.batches_created >= 1  # noqa: E731 - the run is waiting
    result = interrupted(run, [0.5, 0.05], until=created)
    assert_stopped_quietly(result)
    assert "resume with: batchrunner run 1" in result.stderr
    told = invoke("status", "1", "--json", "--db", db_url)
    assert orjson.loads(told.stdout)["jobs"][0]["stop_reason"] == "interrupted"
    assert invoke("run", "--wait", "--poll-interval", "0.2", *common).exit_code == 0
    assert fake.batch_api.batches_created == 1  # the batch went on, and was settled later
    assert_each_item_succeeded_once(Path(db_url.removeprefix("sqlite:///")), ITEMS)
