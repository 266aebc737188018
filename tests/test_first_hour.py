"""What a new user meets in the first hour (issue 19): the README's first command run twice, the
summary naming the next commands, `--json` summaries on stdout, a stopped job's rate, costs of
jobs that spent nothing, claimed vs in flight, the file checked before the key, `run
--simulate`, and the README's account of the fake server (its options, its markers)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from batchrunner import commands
from batchrunner.cli import cli
from batchrunner.fake import FakeServer
from batchrunner.fake.answers import BATCH_TRIGGERS, OUTPUT_TRIGGERS, TRANSPORT_TRIGGERS
from batchrunner.fake.faults import ERRORS
from batchrunner.ledger import Ledger
from batchrunner.ledger.models import SUCCEEDED, runs_t
from batchrunner.ledger.records import utcnow
from batchrunner.outcome import Outcome, Result
from batchrunner.progress import ProgressBar
from batchrunner.runner.limits import describe_limits
from batchrunner.status import format_job, job_status
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke, status_json

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def first_setup_command() -> list[str]:
    """The batchrunner part of the README's first code block (after its venv and install)."""
    found = re.search(r"```bash\n(.*?)\n```", README, re.S)
    assert found is not None, "the README has no bash block"
    last = found.group(1).split("&&")[-1].strip()
    program, *args = shlex.split(last)
    assert program == ".venv/bin/batchrunner", last
    return args


def test_the_readmes_first_command_works_twice_in_a_fresh_folder(tmp_path: Path) -> None:
    """The README's first set-up command, run twice in a folder with nothing but a clone's
    `jobs/`: both exit 0, the second says the job exists and in what state. The command's
    venv and `pip install .` are left out (they take minutes and the network): what follows
    them runs with this interpreter and this checkout (`python -m batchrunner` is the same
    entry point as `.venv/bin/batchrunner`), without a key or a ledger setting."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCHRUNNER_"))}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "batchrunner", *first_setup_command()]
    runs = [
        subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        for _ in range(2)
    ]
    first, second = runs
    assert first.returncode == 0, first.stderr
    assert "succeeded 30" in first.stderr and "cut by length" not in first.stderr
    assert "batchrunner export results --job 1 -o results.jsonl" in first.stderr
    assert "batchrunner status 1" in first.stderr
    assert second.returncode == 0, second.stderr
    assert "is already job 1 (completed, 0 of 30 items left" in second.stderr
    assert "nothing left to run" in second.stderr and "succeeded 30" in second.stderr
    assert (tmp_path / "batchrunner.db").exists()


def test_submit_again_runs_what_is_left_and_refuses_another_kind_of_job(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(3)])
    assert invoke("submit", str(job), "--simulate", "--detach", "--db", db_url).exit_code == 0
    again = invoke("submit", str(job), "--simulate", "--detach", "--db", db_url)
    assert again.exit_code == 0
    assert "is already job 1 (pending, 3 of 3 items left" in again.stderr
    assert "run it with: batchrunner run 1" in again.stderr
    real = invoke("submit", str(job), "--db", db_url, "--base-url", fake.base_url)
    assert real.exit_code == 2
    assert f"{job} is already job 1, a simulated one: pass --new" in real.stderr
    batch = invoke("submit", str(job), "--simulate", "--mode", "batch", "--db", db_url)
    assert batch.exit_code == 2 and "in concurrent mode: pass --new" in batch.stderr
    assert status_json(db_url)["jobs"][0]["counts"]["pending"] == 3  # nothing ran meanwhile

    result = invoke("submit", str(job), "--simulate", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert "3 of 3 items left; pass --new for a second job): running what is left" in (
        result.stderr
    )
    (status,) = status_json(db_url)["jobs"]  # the same job, no second one
    assert (status["id"], status["state"], status["counts"]["succeeded"]) == (1, "completed", 3)
    assert fake.total_requests == 0  # simulated: its own fake server answered


def test_submit_again_of_a_job_with_failures_shows_it_and_exits_1(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(0), chat_line(1, "[fake:400] no")])
    submit = ("submit", str(job), "--db", db_url, "--base-url", fake.base_url)
    assert invoke(*submit).exit_code == 1
    sent = fake.total_requests
    again = invoke(*submit)
    assert again.exit_code == 1 and "nothing left to run" in again.stderr
    assert "batchrunner run 1 --retry-failed" in again.stderr  # its next step
    assert fake.total_requests == sent


def test_json_summaries_go_to_stdout_and_the_rest_to_stderr(tmp_path: Path, db_url: str) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(4)])
    result = invoke("submit", str(job), "--simulate", "--json", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["exit_code"], summary["recorded"]) == (0, True)
    assert summary["estimate"]["requests"] == 4
    assert summary["job"]["id"] == 1 and summary["job"]["counts"]["succeeded"] == 4
    assert "recorded job 1" in result.stderr and "recorded job" not in result.stdout

    again = json.loads(invoke("submit", str(job), "--simulate", "--json", "--db", db_url).stdout)
    assert (again["exit_code"], again["recorded"], again["job"]["id"]) == (0, False, 1)

    other = write_jsonl(tmp_path / "k.jsonl", [chat_line(i) for i in range(2)])
    detached = invoke("submit", str(other), "--simulate", "--detach", "--json", "--db", db_url)
    assert json.loads(detached.stdout)["job"]["counts"]["pending"] == 2
    ran = invoke("run", "2", "--json", "--db", db_url)
    assert ran.exit_code == 0, ran.stderr
    record = json.loads(ran.stdout)
    assert record["exit_code"] == 0 and record["job"]["state"] == "completed"

    estimate = invoke("estimate", str(job), "--json")
    assert estimate.exit_code == 0 and json.loads(estimate.stdout)["requests"] == 4


def test_a_stopped_jobs_rate_is_its_rate_while_it_ran(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(12)] + [chat_line(12, "[fake:401]")]
    lines += [chat_line(i) for i in range(13, 20)]
    job = write_jsonl(tmp_path / "j.jsonl", lines)
    result = invoke(
        "submit", str(job), "--db", db_url, "--base-url", fake.base_url, "--concurrency", "1"
    )
    assert result.exit_code == 3
    ledger = Ledger(db_url, create=False)
    try:
        summary = ledger.summary(1)
    finally:
        ledger.close()
    assert summary.state == "stopped" and summary.counts["succeeded"] == 12
    now = utcnow()
    rates = [
        job_status(summary, now=now + timedelta(seconds=later))["rate_per_s"]
        for later in (0, 60, 3600)
    ]
    assert rates[0] is not None and rates[0] > 0
    assert rates == [rates[0]] * 3


def test_a_job_that_spent_nothing_costs_zero_not_unknown(tmp_path: Path, db_url: str) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(3)])
    submit = ("submit", str(job), "--detach", "--hosted-prices", "--db", db_url)
    assert invoke(*submit).exit_code == 0
    assert status_json(db_url)["jobs"][0]["cost_usd"] == 0.0
    text = invoke("status", "--db", db_url).stdout
    assert "cost: $0.00 (estimated $" in text and "unknown" not in text


def test_the_progress_bar_counts_cost_from_zero_and_unpriced_answers_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def answered(custom_id: str, cost: float | None) -> Outcome:
        now = utcnow()
        outcome = Outcome(
            job_id=1,
            custom_id=custom_id,
            state=SUCCEEDED,
            attempt_outcome="succeeded",
            started_at=now,
            ended_at=now,
        )
        outcome.result = Result(input_tokens=10, output_tokens=5, cost_usd=cost)
        return outcome

    bar = ProgressBar(3, 0, enabled=True)
    bar.on_outcomes([answered("a", 0.001), answered("b", None), answered("c", 0.0)])
    bar.close()
    shown = capsys.readouterr().err
    assert "cost $0.0010 + 1 unpriced" in shown and "n/a" not in shown


def test_an_unpriced_model_is_named_beside_the_priced_part_of_the_estimate(
    tmp_path: Path,
) -> None:
    lines = [chat_line(0), chat_line(1, model="my-own-model")]
    job = write_jsonl(tmp_path / "j.jsonl", lines)
    result = invoke("estimate", str(job), "--hosted-prices")
    assert result.exit_code == 0, result.stderr
    (total,) = [line for line in result.stdout.splitlines() if line.startswith("total")]
    assert total.startswith("total, priced models only") and "unknown" not in total
    assert "$" in total and "my-own-model" in result.stdout
    data = json.loads(invoke("estimate", str(job), "--hosted-prices", "--json").stdout)
    assert data["cost_concurrent_usd"] is None and data["priced_cost_concurrent_usd"] > 0
    assert data["unpriced_models"] == ["my-own-model"]
    local = invoke("estimate", str(job)).stdout.splitlines()  # a local server: none priced
    (total,) = [line for line in local if line.startswith("total")]
    assert total.split()[0] == "total" and total.split()[-2:] == ["unknown", "unknown"]


def test_the_limits_log_line_says_no_token_limit_instead_of_none(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    assert describe_limits(500, None) == "500 requests/min, no token limit"
    assert describe_limits(None, 2_000_000) == "no request limit, 2,000,000 tokens/min"
    fake.config.rpm_limit = 10_000  # reported in headers: the runner learns it, no token limit
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(3)])
    result = invoke("submit", str(job), "-v", "--db", db_url, "--base-url", fake.base_url)
    assert result.exit_code == 0, result.stderr
    limits = [line for line in result.stderr.splitlines() if "server limits" in line]
    assert limits and all("None" not in line for line in limits)
    assert "server limits: 10,000 requests/min, no token limit" in limits[0]


def test_status_shows_claimed_apart_from_what_can_be_in_flight(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """A live run claims a page of items and sends --concurrency of them at a time (its own
    --concurrency: the run's, not the one the job was submitted with)."""
    fake.config.latency_ms = 200
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(60)])
    args = ("--db", db_url, "--base-url", fake.base_url, "--concurrency", "8", "--detach")
    assert invoke("submit", str(job), *args).exit_code == 0
    runner, watcher = Ledger(db_url, create=False), Ledger(db_url, create=False)
    thread = threading.Thread(target=commands.run, args=(runner, 1, {"concurrency": 2}))
    thread.start()
    try:
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = watcher.runs_of(1)
            status = job_status(watcher.summary(1), workers=workers)
            if workers and status["counts"]["running"] > 2:
                break
            time.sleep(0.05)
        claimed = status["counts"]["running"]
        assert claimed > 2 and status["in_flight_at_most"] == 2
        assert f"claimed {claimed:,} (at --concurrency 2: up to 2 in flight, the rest queued)" in (
            format_job(status)
        )
        assert "running" not in format_job(status).splitlines()[1]
    finally:
        commands.cancel_job(watcher, 1)
        thread.join(timeout=60)
        runner.close()
        watcher.close()
    assert not thread.is_alive()


def test_claimed_items_of_a_run_that_ended_are_said_so(tmp_path: Path, db_url: str) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(5)])
    assert invoke("submit", str(job), "--detach", "--db", db_url).exit_code == 0
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    ledger = Ledger(db_url, create=False)
    try:
        run_id = ledger.start_run(1, max_attempts=5)
        assert len(ledger.claim_pending(1, run_id, 3)) == 3
        with ledger.engine.begin() as conn:  # a process that has exited held the run
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(pid=int(dead.stdout)))
    finally:
        ledger.close()
    text = invoke("status", "--db", db_url).stdout
    assert "claimed 3 by a run that ended (pending again at the next run)" in text


def test_export_usage_marks_simulated_records(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(3)]
    simulated = write_jsonl(tmp_path / "s.jsonl", lines)
    real = write_jsonl(tmp_path / "r.jsonl", lines[:2])
    assert invoke("submit", str(simulated), "--simulate", "--db", db_url).exit_code == 0
    assert invoke("submit", str(real), "--db", db_url, "--base-url", fake.base_url).exit_code == 0
    for job, marked in (("1", True), ("2", False)):
        out = invoke("export", "usage", "--job", job, "--format", "jsonl", "--db", db_url)
        records = [json.loads(line) for line in out.stdout.splitlines()]
        assert records and all(r["simulated"] is marked for r in records)
    csv_out = invoke("export", "usage", "--job", "1", "--db", db_url).stdout.splitlines()
    assert csv_out[0].split(",")[-1] == "simulated" and csv_out[1].endswith(",True")


def test_submit_names_a_missing_or_bad_file_before_a_missing_key(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")  # OpenAI itself: a key is required
    missing = tmp_path / "missing.jsonl"
    result = invoke("submit", str(missing), "--db", f"sqlite:///{db_path}")
    assert result.exit_code == 2 and f"{missing}: no such file" in result.stderr
    assert "OPENAI_API_KEY" not in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    result = invoke("submit", str(bad), "--db", f"sqlite:///{db_path}")
    assert result.exit_code == 2 and f"{bad}:1: invalid JSON" in result.stderr
    good = write_jsonl(tmp_path / "good.jsonl", [chat_line(0)])
    result = invoke("submit", str(good), "--db", f"sqlite:///{db_path}")
    assert result.exit_code == 2 and "OPENAI_API_KEY is not set" in result.stderr
    assert not db_path.exists()


def test_run_simulate_runs_a_simulated_job_and_refuses_a_real_one(
    tmp_path: Path, db_url: str, db_path: Path, fake: FakeServer
) -> None:
    rehearsal = write_jsonl(tmp_path / "s.jsonl", [chat_line(i) for i in range(3)])
    assert invoke("submit", str(rehearsal), "--simulate", "--detach", "--db", db_url).exit_code == 0
    result = invoke("run", "1", "--simulate", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert status_json(db_url, "1")["jobs"][0]["counts"]["succeeded"] == 3

    real = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(2)])
    submit = ("submit", str(real), "--detach", "--db", db_url, "--base-url", fake.base_url)
    assert invoke(*submit).exit_code == 0
    before = db_path.read_bytes()
    refused = invoke("run", "2", "--simulate", "--db", db_url)
    assert refused.exit_code == 2
    assert "job 2 is a real job: --simulate cannot run it" in refused.stderr
    assert db_path.read_bytes() == before and fake.total_requests == 0

    other = write_jsonl(tmp_path / "t.jsonl", [chat_line(9)])
    assert invoke("submit", str(other), "--simulate", "--detach", "--db", db_url).exit_code == 0
    plain = invoke("run", "3", "--db", db_url)  # a simulated job runs simulated, and says so
    assert plain.exit_code == 0 and "was recorded with --simulate" in plain.stderr
    assert fake.total_requests == 0


def _readme_table(header: str) -> list[str]:
    """The first cells of the README table whose header row starts with `header`."""
    start = README.index(header)
    rows = []
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    return rows


def test_the_readme_lists_every_fake_server_option() -> None:
    options = {opt for p in cli.commands["fake-server"].params for opt in p.opts}
    cells = _readme_table("| option | what it does |")
    listed = {name for cell in cells for name in re.findall(r"`(--[a-z0-9-]+)", cell)}
    assert listed == options
    synopsis = next(line for line in README.splitlines() if "batchrunner fake-server [" in line)
    start = README.index(synopsis)
    shown = set(re.findall(r"\[(--[a-z0-9-]+)", README[start : start + 300]))
    assert shown == options


def test_the_readmes_marker_table_names_every_marker_the_fake_knows() -> None:
    cells = _readme_table("| marker | the answer |")
    listed = {m for cell in cells for m in re.findall(r"`\[fake:([a-z0-9_]+)\]`", cell)}
    known = set(ERRORS) | set(OUTPUT_TRIGGERS) | set(TRANSPORT_TRIGGERS) | set(BATCH_TRIGGERS)
    assert listed == known
    assert any("[fake:NNN]" in cell for cell in cells)  # any other status code
