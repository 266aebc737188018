"""The command line as people use it: exit codes, status --json, exports, bad input, Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from batchrunner.cli import cli
from batchrunner.fake import FakeServer
from tests.conftest import TEST_KEY, chat_line, write_jsonl

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def status_json(db_url: str, *job: str) -> dict[str, Any]:
    result = invoke("status", *job, "--json", "--db", db_url)
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def exported_records(db_url: str) -> list[dict[str, Any]]:
    result = invoke("export", "results", "--db", db_url)
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_submit_status_and_both_export_formats(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(40)]
    lines[5]["metadata"] = {"row": 5}
    job = write_jsonl(tmp_path / "reviews.jsonl", lines)
    result = invoke(
        "submit", str(job), "--db", db_url, "--base-url", fake.base_url, "--hosted-prices"
    )
    assert result.exit_code == 0, result.output
    assert "recorded job 1" in result.stderr and "succeeded 40" in result.stderr

    (status,) = status_json(db_url)["jobs"]
    assert status["id"] == 1 and status["name"] == "reviews" and status["mode"] == "concurrent"
    assert status["state"] == "completed" and status["simulated"] is False
    assert status["counts"] == {
        "pending": 0,
        "running": 0,
        "succeeded": 40,
        "failed": 0,
        "cancelled": 0,
    }
    assert status["input_tokens"] > 0 and status["output_tokens"] > 0
    assert status["progress"] == 1.0 and status["created_at"].endswith("Z")
    per_item = [r["cost_usd"] for r in exported_records(db_url)]
    assert status["cost_usd"] == pytest.approx(sum(per_item)) and min(per_item) > 0

    out = tmp_path / "results.jsonl"
    assert invoke("export", "results", "--db", db_url, "-o", str(out)).exit_code == 0
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["custom_id"] for r in records] == [f"item-{i}" for i in range(40)]
    assert records[5]["metadata"] == {"row": 5}
    assert records[0]["response"]["object"] == "chat.completion"

    result = invoke("export", "results", "--job", "1", "--format", "csv", "--db", db_url)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 40 and rows[3]["output_text"] == "echo: question number 3"
    assert rows[3]["status"] == "succeeded" and int(rows[3]["input_tokens"]) > 0
    assert json.loads(rows[5]["extra"]) == {"metadata": {"row": 5}}


def test_failed_items_give_exit_1_and_export_errors_writes_a_job_file(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:400] bad"), chat_line(2)]
    lines[1]["metadata"] = {"why": "kept"}
    job = write_jsonl(tmp_path / "j.jsonl", lines)
    result = invoke("submit", str(job), "--db", db_url, "--base-url", fake.base_url)
    assert result.exit_code == 1
    assert "failures by kind: invalid_request 1" in result.stderr
    errors = invoke("export", "errors", "--db", db_url)
    (line,) = [orjson.loads(x) for x in errors.stdout.splitlines()]
    assert line == {**lines[1], "method": "POST"}
    again = tmp_path / "again.jsonl"
    again.write_text(errors.stdout)
    check = invoke("submit", str(again), "--detach", "--db", db_url)
    assert check.exit_code == 0  # the errors file is itself a valid job file


def test_bad_input_exits_2_and_leaves_the_ledger_byte_for_byte(
    tmp_path: Path, db_url: str, db_path: Path, fake: FakeServer
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [chat_line(i) for i in range(3)])
    assert invoke("submit", str(good), "--detach", "--db", db_url).exit_code == 0
    # The command closed its ledger: no connection is left whose later close (whenever it is
    # collected) would fold the write-ahead log into the file during the next command.
    before = {p.name: p.read_bytes() for p in tmp_path.glob("ledger.db*")}
    assert set(before) == {"ledger.db"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_line(1)) + "\n" + json.dumps(chat_line(1)) + "\n[]\n")
    result = invoke("submit", str(bad), "--db", db_url, "--base-url", fake.base_url)
    assert result.exit_code == 2
    assert f'{bad}:2: duplicate custom_id "item-1" (first on line 1)' in result.stderr
    assert f"{bad}:3: expected a JSON object, got an empty array" in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("ledger.db*")} == before
    assert fake.total_requests == 0


def test_bad_input_does_not_even_create_a_ledger(tmp_path: Path, db_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    result = invoke("submit", str(bad), "--db", f"sqlite:///{db_path}", "--simulate")
    assert result.exit_code == 2 and f"{bad}:1: invalid JSON" in result.stderr
    assert not db_path.exists()


def test_a_stopped_job_exits_3_and_run_finishes_it(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(20)])
    fake.config.force_status, fake.config.force_code = 429, "insufficient_quota"
    result = invoke("submit", str(job), "--db", db_url, "--base-url", fake.base_url)
    assert result.exit_code == 3
    assert "quota" in result.stderr and "resume with: batchrunner run 1" in result.stderr
    fake.config.force_status = fake.config.force_code = None
    assert invoke("run", "--db", db_url).exit_code == 0
    assert status_json(db_url, "1")["jobs"][0]["counts"]["succeeded"] == 20


def test_simulate_needs_no_key_and_is_marked_everywhere(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    result = invoke("submit", str(REPO / "jobs" / "example.jsonl"), "--simulate", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "[simulated]" in result.stderr
    (status,) = status_json(db_url)["jobs"]
    assert status["simulated"] is True and status["counts"]["succeeded"] == status["total"]
    assert status["cost_usd"] > 0  # the fake stands for the hosted API: its prices apply
    assert "[simulated]" in invoke("status", "--db", db_url).stdout
    records = invoke("export", "results", "--db", db_url).stdout.splitlines()
    assert all(orjson.loads(r)["simulated"] is True for r in records)


def test_without_a_key_submit_refuses_before_recording(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(0)])
    result = invoke("submit", str(job), "--db", f"sqlite:///{db_path}")
    assert result.exit_code == 2 and "OPENAI_API_KEY is not set" in result.stderr
    assert not db_path.exists()


def test_cancel_of_a_concurrent_job_needs_no_key(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent job has nothing remote to cancel: no key, no request."""
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(3)])
    assert invoke("submit", str(job), "--detach", "--db", db_url).exit_code == 0
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")  # OpenAI itself: where a key would be required
    result = invoke("cancel", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert "cancelled 3 pending items of job 1" in result.stderr
    status = status_json(db_url, "1")["jobs"][0]
    assert (status["state"], status["counts"]["cancelled"]) == ("cancelled", 3)


def test_unknown_job_is_a_usage_error(tmp_path: Path, db_url: str) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    assert invoke("submit", str(job), "--db", db_url, "--detach").exit_code == 0
    result = invoke("status", "42", "--db", db_url)
    assert result.exit_code == 2 and "no job '42'" in result.stderr


def test_verbose_logs_one_line_per_attempt_and_never_the_key(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(0), chat_line(1, "[fake:500x1]")])
    result = invoke("submit", str(job), "--db", db_url, "--base-url", fake.base_url, "--log-json")
    assert result.exit_code == 0
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    attempts = [x for x in lines if x["logger"] == "batchrunner.attempts"]
    assert sorted((a["custom_id"], a["attempt"], a["status"]) for a in attempts) == [
        ("item-0", 1, 200),
        ("item-1", 1, 500),
        ("item-1", 2, 200),
    ]
    assert all(a["job"] == 1 and "latency_ms" in a for a in attempts)
    assert TEST_KEY not in result.output and "question number" not in result.stderr


def test_ctrl_c_stops_cleanly_and_run_finishes_without_resending(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.latency_ms = 50.0
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(400)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "batchrunner", "submit", str(job), "--db", db_url]
    proc = subprocess.Popen(
        [*args, "--base-url", fake.base_url, "--concurrency", "8"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while fake.total_requests < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert "resume with: batchrunner run 1" in stderr
    counts = status_json(db_url)["jobs"][0]["counts"]
    assert counts["running"] == 0 and 0 < counts["succeeded"] < 400
    assert counts["pending"] == 400 - counts["succeeded"]

    fake.config.latency_ms = 0.0
    assert invoke("run", "1", "--db", db_url).exit_code == 0
    assert status_json(db_url)["jobs"][0]["counts"]["succeeded"] == 400
    assert sorted(set(fake.requests_by_id.values())) == [1]  # in-flight ones finished at Ctrl-C
