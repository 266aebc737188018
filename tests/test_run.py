"""The concurrent runner end to end, through the real ledger and the fake server over HTTP."""

from __future__ import annotations

import gc
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from batchrunner import RunReport, commands
from batchrunner.commands import run_job, submit_job
from batchrunner.export import write_results
from batchrunner.fake import FakeServer
from batchrunner.jobfile import JobDefaults
from batchrunner.ledger import Ledger
from batchrunner.runner import writer
from batchrunner.settings import RunSettings
from tests.conftest import chat_line, write_jsonl


def submit(
    tmp_path: Path, db_url: str, fake: FakeServer, lines: list[dict[str, Any]], **settings: Any
) -> tuple[Ledger, int]:
    path = write_jsonl(tmp_path / "job.jsonl", lines)
    # the fake on 127.0.0.1 stands for OpenAI's hosted API: its prices apply
    options = RunSettings(base_url=fake.base_url, **{"hosted_prices": True, **settings})
    ledger, submitted = submit_job(db_url, str(path), defaults=JobDefaults(), settings=options)
    return ledger, submitted.job_id


def run(ledger: Ledger, job_id: int, **overrides: Any) -> RunReport:
    async def go() -> RunReport:
        with anyio.fail_after(60):
            return await run_job(ledger, job_id, overrides)

    return anyio.run(go)


def exported(ledger: Ledger, job_id: int) -> list[dict[str, Any]]:
    out = io.BytesIO()
    write_results(ledger, job_id, out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_two_thousand_items_each_answered_once_and_matched_to_its_request(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(2000)])
    report = run(ledger, job)
    assert report.state == "completed"
    records = exported(ledger, job)
    assert [r["custom_id"] for r in records] == [f"item-{i}" for i in range(2000)]
    for i, record in enumerate(records):
        assert record["status"] == "succeeded"
        content = record["response"]["choices"][0]["message"]["content"]
        assert content == f"echo: question number {i}"
        assert record["attempts"] == 1
        assert record["input_tokens"] == record["response"]["usage"]["prompt_tokens"] > 0
    assert fake.total_requests == 2000
    assert set(fake.requests_by_id.values()) == {1}
    summary = ledger.summary(job)
    assert summary.counts == {"succeeded": 2000} and summary.state == "completed"


def test_transient_errors_are_retried_and_every_attempt_is_recorded(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [
        chat_line(0, "fine"),
        chat_line(1, "[fake:500x2] flaky"),
        chat_line(2, "[fake:dropx1] dropped"),
        chat_line(3, "[fake:429x1] limited"),
        chat_line(4, "[fake:hangx1] slow"),
    ]
    fake.config.hang_seconds = 5.0
    ledger, job = submit(tmp_path, db_url, fake, lines, timeout=1.0)
    assert run(ledger, job).state == "completed"
    records = {r["custom_id"]: r for r in exported(ledger, job)}
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert [records[f"item-{i}"]["attempts"] for i in range(5)] == [1, 3, 2, 2, 2]
    assert [fake.requests_by_id[f"item-{i}"] for i in range(5)] == [1, 3, 2, 2, 2]
    item_ids = {row.custom_id: row.id for row in ledger.iter_items(job)}
    flaky = ledger.attempts_of(item_ids["item-1"])
    assert [(a.outcome, a.result.http_status) for a in flaky] == [
        ("retry", 500),
        ("retry", 500),
        ("succeeded", 200),
    ]
    (first_slow, _) = ledger.attempts_of(item_ids["item-4"])
    assert first_slow.result.error_kind == "timeout" and "possibly billed" in (
        first_slow.result.error_message or ""
    )
    (first_dropped, _) = ledger.attempts_of(item_ids["item-2"])
    assert (
        first_dropped.result.error_kind == "connection" and first_dropped.result.http_status is None
    )


class GatewayThenAnswer(BaseHTTPRequestHandler):
    """A proxy whose first answer is an error page in Latin-1 (not UTF-8), then the API's."""

    answered = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).answered += 1
        if type(self).answered == 1:
            status, body = 502, "<html>Passerelle indisponible: réessayez</html>".encode("latin-1")
        else:
            answer = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
            status, body = 200, orjson.dumps({**answer, "usage": {"prompt_tokens": 3}})
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


def test_an_error_page_that_is_not_utf8_is_retried_like_any_5xx(
    tmp_path: Path, db_url: str
) -> None:
    """Only an answer that parsed as JSON is kept as text; a gateway's page in another
    encoding is a server error to retry, not a crash of the run."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatewayThenAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
        options = RunSettings(base_url=f"http://127.0.0.1:{server.server_port}/v1")
        ledger, submitted = submit_job(db_url, str(path), defaults=JobDefaults(), settings=options)
        assert run(ledger, submitted.job_id).state == "completed"
    finally:
        server.shutdown()
        thread.join(timeout=10)
    (record,) = exported(ledger, submitted.job_id)
    assert (record["status"], record["attempts"]) == ("succeeded", 2)
    item_id = next(ledger.iter_items(submitted.job_id)).id
    first, _ = ledger.attempts_of(item_id)
    assert (first.outcome, first.result.http_status) == ("retry", 502)
    assert first.result.error_kind == "server_error"


def test_fatal_errors_fail_the_item_after_one_request(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:context_length]"), chat_line(2, "[fake:422]")]
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert run(ledger, job).state == "completed"
    records = {r["custom_id"]: r for r in exported(ledger, job)}
    assert records["item-0"]["status"] == "succeeded"
    too_long = records["item-1"]
    assert too_long["status"] == "failed" and too_long["attempts"] == 1
    assert too_long["error"]["code"] == "context_length_exceeded"
    assert "maximum context length" in too_long["error"]["message"]
    assert records["item-2"]["status"] == "failed"
    assert fake.requests_by_id["item-1"] == 1 and fake.requests_by_id["item-2"] == 1


def test_no_item_exceeds_max_attempts(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    lines = [chat_line(i, "[fake:503] always down") for i in range(4)]
    ledger, job = submit(tmp_path, db_url, fake, lines, max_attempts=3)
    assert run(ledger, job).state == "completed"
    for record in exported(ledger, job):
        assert record["status"] == "failed" and record["attempts"] == 3
        assert record["error"]["kind"] == "server_error"
    assert set(fake.requests_by_id.values()) == {3}


def test_a_bad_key_stops_the_job_and_run_resumes_it(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(300)], concurrency=4)
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    report = run(ledger, job)
    assert report.state == "stopped" and report.stop_reason is not None
    assert report.stop_reason.startswith("auth:")
    assert fake.total_requests <= 4  # only what was already in flight
    assert ledger.summary(job).counts == {"pending": 300}
    fake.config.force_status = fake.config.force_code = None
    assert run(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 300}


def test_resume_sends_only_what_is_unfinished(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(50)])
    assert run(ledger, job).state == "completed"
    assert run(ledger, job).state == "completed"  # nothing left: sends nothing
    assert fake.total_requests == 50


def test_a_run_collects_cycles_less_often_and_gives_the_setting_back() -> None:
    seen: list[int] = []

    async def work() -> None:
        seen.append(gc.get_threshold()[0])

    async def fail() -> None:
        raise ValueError("the run failed")

    before = gc.get_threshold()
    commands.run_async(work)
    assert seen == [commands.GC_THRESHOLD] != [before[0]]
    assert gc.get_threshold() == before
    with pytest.raises(ValueError, match="the run failed"):
        commands.run_async(fail)
    assert gc.get_threshold() == before


def test_the_last_outcomes_are_committed_at_once_not_after_the_gather_window(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-run a commit waits up to GATHER_S for more outcomes; at the end nothing more is
    coming, and the run waiting for its last commit cuts that wait short."""
    monkeypatch.setattr(writer, "GATHER_S", 10.0)
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(2)])
    started = time.monotonic()
    assert run(ledger, job).state == "completed"
    assert time.monotonic() - started < 5.0
    assert ledger.summary(job).counts == {"succeeded": 2}
