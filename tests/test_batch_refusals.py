"""Batch mode never reports success it does not have: a refused or unreachable Files/Batch API
is an error naming the call, exit 3, the items back to pending; `run --wait` gives up after a
bounded time; nothing is submitted twice when the API comes back. The real openai SDK against
the fake's Batch API on 127.0.0.1."""

from __future__ import annotations

import re
import time
from pathlib import Path

from batchrunner.commands import exit_code, run_batch_job
from batchrunner.fake import FakeServer
from tests.conftest import chat_line, free_port, write_jsonl
from tests.test_batch_mode import FAST, POLL_S, submit, wait_for
from tests.test_cli import invoke


def test_a_refused_upload_stops_the_pass_with_the_call_named_and_the_items_pending(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.batch_api.refuse = {"upload": 500}
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(12)])
    report = run_batch_job(ledger, job, FAST, wait=False)
    assert report.state == "stopped", report
    assert re.match(
        rf"server_error: POST {fake.base_url}/files: HTTP 500", report.stop_reason or ""
    )
    assert exit_code(ledger, report) == 3
    assert ledger.summary(job).counts == {"pending": 12}
    assert fake.batch_api.batches_created == 0
    fake.batch_api.refuse = {}
    assert wait_for(ledger, job).state == "completed"
    assert fake.batch_api.batches_created == 1
    assert ledger.summary(job).counts == {"succeeded": 12}


def test_a_create_that_keeps_failing_gives_up_in_bounded_time_and_never_doubles_a_batch(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """The upload goes through, every create is refused with a 503: `--wait` retries for
    `unreachable_wait`, then stops; the uploaded batch is looked up (none has its token) and
    its items go back to pending; when the API recovers, one batch is created, not two."""
    fake.batch_api.refuse = {"create": 503}
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(8)])
    started = time.monotonic()
    report = run_batch_job(ledger, job, {**FAST, "unreachable_wait": 1.0}, wait=True, poll_s=POLL_S)
    assert time.monotonic() - started < 30
    assert report.state == "stopped", report
    reason = report.stop_reason or ""
    assert reason.startswith("server_error: no Files/Batch API call went through for 1s: ")
    assert f"POST {fake.base_url}/batches: HTTP 503" in reason
    assert fake.batch_api.calls["create"] >= 2  # it did retry, and then it stopped
    assert ledger.summary(job).counts == {"pending": 8}
    fake.batch_api.refuse = {}
    assert wait_for(ledger, job).state == "completed"
    assert fake.batch_api.batches_created == 1
    assert ledger.summary(job).counts == {"succeeded": 8}


def test_a_server_without_the_batch_api_stops_the_job_naming_the_address(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.batch_api.refuse = {"upload": 404}
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(3)])
    report = wait_for(ledger, job)
    assert report.state == "stopped"
    assert (report.stop_reason or "").startswith(f"not_found: POST {fake.base_url}/files: HTTP 404")
    assert fake.batch_api.calls["upload"] == 1  # one proof is enough: no retries
    assert ledger.summary(job).counts == {"pending": 3}


def test_an_unreachable_endpoint_is_exit_3_and_never_batches_in_progress(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Through the CLI, as a user meets it: `run --wait` against a closed port stops within
    its --unreachable-wait, says why, and the items wait for the next run."""
    job_file = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": dead}
    submitted = invoke(
        "submit", str(job_file), "--db", db_url, "--mode", "batch", "--detach", env=env
    )
    assert submitted.exit_code == 0, submitted.output
    once = invoke("run", "--db", db_url, env=env)
    assert once.exit_code == 3, once.output
    assert "batches in progress" not in once.output
    assert f"unreachable: POST {dead}/files: cannot connect" in once.output
    waited = invoke("run", "--db", db_url, "--wait", "--unreachable-wait", "1", env=env)
    assert waited.exit_code == 3, waited.output
    assert "no Files/Batch API call went through for 1s" in waited.output
    env["OPENAI_BASE_URL"] = fake.base_url
    resumed = invoke("run", "--db", db_url, "--wait", "--poll-interval", "0.05", env=env)
    assert resumed.exit_code == 0, resumed.output
    assert fake.batch_api.batches_created == 1
