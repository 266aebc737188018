"""`--log-json` lines name their job, run and worker on every line (issue 18): attempts and
events alike, in both modes, so a fleet's logs can be told apart and joined with the ledger's
runs."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from batchrunner.fake import FakeServer
from batchrunner.logs import worker_name
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def run_ids(db_url: str) -> list[str]:
    with closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY started_at")]


def test_every_json_line_of_a_run_names_its_job_run_and_worker(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.models = ("gpt-4o-mini",)  # a missing model: a warning beside the attempts
    lines = [chat_line(i) for i in range(6)] + [chat_line(6, model="gpt-4o-typo")]
    job = write_jsonl(tmp_path / "j.jsonl", lines)
    result = invoke("submit", str(job), "--db", db_url, "--base-url", fake.base_url, "--log-json")
    assert result.exit_code == 1, result.output  # the missing model's item failed
    logged = json_lines(result.stderr)
    (run,) = run_ids(db_url)
    assert {line["logger"] for line in logged} == {"batchrunner", "batchrunner.attempts"}
    assert any("is missing here" in line.get("message", "") for line in logged)
    assert len([line for line in logged if line["logger"] == "batchrunner.attempts"]) == 7
    for line in logged:
        assert (line["job"], line["run"], line["worker"]) == (1, run, worker_name()), line


def test_a_batch_runs_json_lines_name_it_too(tmp_path: Path, db_url: str) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(3)])
    result = invoke(
        "submit", str(job), "--db", db_url, "--simulate", "--mode", "batch", "--log-json",
        "--poll-interval", "0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    logged = json_lines(result.stderr)
    (run,) = run_ids(db_url)
    assert any(line.get("message", "").startswith("batch ") for line in logged)
    for line in logged:
        assert (line["job"], line["run"], line["worker"]) == (1, run, worker_name()), line
