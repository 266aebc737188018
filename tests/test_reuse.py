"""`--reuse`: an item whose request (url and body, as canonical JSON) already succeeded in an
earlier job takes that answer without a request and at no cost, marked as reused."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import anyio
import orjson
from click.testing import CliRunner

from batchrunner.cli import cli
from batchrunner.commands import run_job, submit_job
from batchrunner.export import write_results
from batchrunner.fake import FakeServer
from batchrunner.items import request_hash
from batchrunner.jobfile import JobDefaults
from batchrunner.ledger import Ledger
from batchrunner.settings import RunSettings
from tests.conftest import chat_line, write_jsonl


def submit(
    path: Path, ledger_url: str, fake: FakeServer, *, reuse: bool = False, simulated: bool = False
) -> tuple[Ledger, int, int]:
    """(ledger, job id, items reused)."""
    ledger, submitted = submit_job(
        ledger_url,
        str(path),
        defaults=JobDefaults(),
        settings=RunSettings(base_url=fake.base_url),
        simulated=simulated,
        new=True,
        reuse=reuse,
    )
    return ledger, submitted.job_id, submitted.reused


def run(ledger: Ledger, job_id: int) -> None:
    async def go() -> None:
        with anyio.fail_after(60):
            await run_job(ledger, job_id)

    anyio.run(go)


def exported(ledger: Ledger, job_id: int) -> dict[str, dict[str, Any]]:
    out = io.BytesIO()
    write_results(ledger, job_id, out)
    return {r["custom_id"]: r for r in map(orjson.loads, out.getvalue().splitlines())}


def first_job(tmp_path: Path) -> Path:
    """Ten requests; the fourth fails (a failure is never reused)."""
    lines = [chat_line(i) for i in range(10)]
    lines[3] = chat_line(3, "[fake:400] rejected")
    return write_jsonl(tmp_path / "first.jsonl", lines)


def second_job(tmp_path: Path) -> Path:
    """The same ten requests under other ids, keys in another order, plus five new ones and one
    that differs only in its temperature."""
    lines = []
    for i in range(15):
        line = chat_line(i, "[fake:400] rejected" if i == 3 else None)
        body = dict(reversed(list(line["body"].items())))  # same request, other key order
        lines.append({"body": body, "url": line["url"], "custom_id": f"again-{i}"})
    lines.append({"custom_id": "warmer", "body": {**chat_line(0)["body"], "temperature": 0.7}})
    return write_jsonl(tmp_path / "second.jsonl", lines)


def test_reuse_takes_earlier_answers_without_a_request(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    ledger, first, _ = submit(first_job(tmp_path), ledger_url, fake)
    run(ledger, first)
    before = exported(ledger, first)
    fake.reset_counts()

    ledger, second, reused = submit(second_job(tmp_path), ledger_url, fake, reuse=True)
    assert reused == 9
    summary = ledger.summary(second)
    assert summary.reused == 9 and summary.counts == {"succeeded": 9, "pending": 7}
    run(ledger, second)
    expected = {"again-3", "warmer", *(f"again-{i}" for i in range(10, 15))}
    assert set(fake.requests_by_id) == expected  # nothing else was sent
    assert set(fake.requests_by_id.values()) == {1}

    after = exported(ledger, second)
    for i in range(15):
        record = after[f"again-{i}"]
        if i < 10 and i != 3:
            earlier = before[f"item-{i}"]
            assert record["reused"] is True and record["status"] == "succeeded"
            assert record["response"] == earlier["response"]  # the very same answer
            assert record["cost_usd"] == 0.0 and record["attempts"] == 0
            assert record["input_tokens"] == earlier["input_tokens"]
            assert record["output_tokens"] == earlier["output_tokens"]
        else:
            assert record["reused"] is False and record["attempts"] == 1
    assert after["warmer"]["reused"] is False
    assert ledger.attempts_of(ledger_item_id(ledger, second, "again-0")) == []  # no request
    total = ledger.summary(second)
    assert total.reused == 9 and total.counts == {"succeeded": 15, "failed": 1}


def ledger_item_id(ledger: Ledger, job_id: int, custom_id: str) -> int:
    return next(int(r.id) for r in ledger.iter_items(job_id) if r.custom_id == custom_id)


def test_reuse_is_off_by_default(tmp_path: Path, ledger_url: str, fake: FakeServer) -> None:
    ledger, first, _ = submit(first_job(tmp_path), ledger_url, fake)
    run(ledger, first)
    ledger, second, reused = submit(second_job(tmp_path), ledger_url, fake)
    assert reused == 0 and ledger.summary(second).reused == 0
    assert ledger.summary(second).counts == {"pending": 16}


def test_simulated_answers_serve_only_simulated_jobs(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    ledger, rehearsal, _ = submit(first_job(tmp_path), ledger_url, fake, simulated=True)
    run(ledger, rehearsal)
    # The fake server's answers are no answers for a real job ...
    assert submit(second_job(tmp_path), ledger_url, fake, reuse=True)[2] == 0
    # ... but serve another rehearsal.
    assert submit(second_job(tmp_path), ledger_url, fake, reuse=True, simulated=True)[2] == 9


def test_reuse_on_the_command_line_shows_in_status_and_exports(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, [*args, "--db", db_url], catch_exceptions=False)

    base = ("--base-url", fake.base_url)
    assert invoke("submit", str(first_job(tmp_path)), *base).exit_code == 1  # one failed
    result = invoke("submit", str(second_job(tmp_path)), *base, "--reuse")
    assert result.exit_code == 1
    assert "--reuse: 9 answered by earlier jobs (no request, no cost)" in result.stderr
    assert "succeeded 15, failed 1 (9 reused from earlier jobs, at no cost)" in result.stderr
    (status,) = json.loads(invoke("status", "2", "--json").stdout)["jobs"]
    assert status["reused"] == 9
    rows = list(csv.DictReader(io.StringIO(invoke("export", "results", "--format", "csv").stdout)))
    assert sum(row["reused"] == "True" for row in rows) == 9


def test_the_request_hash_ignores_key_order_and_spacing_only() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1}'
    same = b'{"n":1,"messages":[{"content":"hi","role":"user"}],"model":"m"}'
    chat, embeddings = "/v1/chat/completions", "/v1/embeddings"
    assert request_hash(chat, body) == request_hash(chat, same)
    assert request_hash(chat, body) != request_hash(embeddings, body)
    assert request_hash(chat, body) != request_hash(chat, body.replace(b"hi", b"hi "))
