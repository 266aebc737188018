"""Batch API mode end to end: the real openai SDK against the fake Files and Batch API."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from batchrunner import RunReport
from batchrunner.backends.base import RemoteBatch
from batchrunner.backends.openai_batches import OpenAIBatches
from batchrunner.commands import cancel_job, exit_code, run_batch_job, submit_job
from batchrunner.dialects import openai
from batchrunner.fake import FakeServer
from batchrunner.jobfile import JobDefaults
from batchrunner.ledger import Ledger
from batchrunner.runner.batch import BatchRunner
from batchrunner.settings import RunSettings
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke, status_json
from tests.test_run import exported, run

POLL_S = 0.05
POLL_ARGS = ("--wait", "--poll-interval", str(POLL_S))
FAST: dict[str, Any] = {"batch_hold_s": 0.2}


def submit(
    tmp_path: Path, db_url: str, fake: FakeServer, lines: list[dict[str, Any]], **settings: Any
) -> tuple[Ledger, int]:
    path = write_jsonl(tmp_path / f"job{len(list(tmp_path.iterdir()))}.jsonl", lines)
    options = RunSettings(base_url=fake.base_url, hosted_prices=True, **settings)
    ledger, submitted = submit_job(
        db_url, str(path), defaults=JobDefaults(), settings=options, mode="batch", new=True
    )
    return ledger, submitted.job_id


def wait_for(ledger: Ledger, job: int, **overrides: Any) -> RunReport:
    started = time.monotonic()
    report = run_batch_job(ledger, job, {**FAST, **overrides}, wait=True, poll_s=POLL_S)
    assert time.monotonic() - started < 60
    return report


def comparable(record: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree between a batch and a concurrent run of the same file."""
    message = record["response"]["choices"][0]["message"]["content"]
    return (
        record["custom_id"],
        record["status"],
        message,
        record["input_tokens"],
        record["output_tokens"],
        record["metadata"],
    )


def test_1200_items_become_3_batches_and_export_like_a_concurrent_run(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [{**chat_line(i), "metadata": {"row": i}} for i in range(1200)]
    ledger, job = submit(tmp_path, db_url, fake, lines, batch_max_requests=500)
    assert wait_for(ledger, job).state == "completed"
    assert fake.batch_api.batches_created == 3
    assert sorted(b.request_count for b in ledger.batches_of(job, ("settled",))) == [
        200,
        500,
        500,
    ]
    (status,) = [s for s in status_json(db_url)["jobs"] if s["id"] == job]
    assert [b["remote_status"] for b in status["batches"]] == ["completed"] * 3
    reported = [b["usage"] for b in status["batches"]]  # the API's own count, kept beside ours
    assert sum(u["input_tokens"] for u in reported) == status["input_tokens"]
    assert sum(u["output_tokens"] for u in reported) == status["output_tokens"]
    assert "batches: 3 (completed 3)" in invoke("status", str(job), "--db", db_url).stdout
    in_batches = exported(ledger, job)
    concurrent_ledger, concurrent_job = submit_concurrent(tmp_path, db_url, fake, lines)
    in_concurrent = exported(concurrent_ledger, concurrent_job)
    assert [comparable(r) for r in in_batches] == [comparable(r) for r in in_concurrent]
    assert set(fake.batch_api.lines_by_id.values()) == {1}
    for batch_record, concurrent_record in zip(in_batches, in_concurrent, strict=True):
        assert batch_record["cost_usd"] == pytest.approx(concurrent_record["cost_usd"] / 2)


def submit_concurrent(
    tmp_path: Path, db_url: str, fake: FakeServer, lines: list[dict[str, Any]]
) -> tuple[Ledger, int]:
    path = write_jsonl(tmp_path / "concurrent.jsonl", lines)
    options = RunSettings(base_url=fake.base_url, hosted_prices=True)
    ledger, submitted = submit_job(
        db_url, str(path), defaults=JobDefaults(), settings=options, new=True
    )
    assert run(ledger, submitted.job_id).state == "completed"
    return ledger, submitted.job_id


def test_an_expired_batch_is_resubmitted_and_nothing_is_answered_twice(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_expire_after = 50  # every batch answers 50 lines, then expires
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(100)])
    assert wait_for(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 100}
    assert fake.batch_api.batches_created == 2
    assert set(fake.batch_api.lines_by_id.values()) == {1}
    statuses = [b.remote_status for b in ledger.batches_of(job, ("settled",))]
    assert statuses == ["expired", "completed"]


def test_expired_leftovers_can_be_finished_concurrently(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_expire_after = 30
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(60)])
    assert wait_for(ledger, job, finish="concurrent").state == "completed"
    assert fake.batch_api.batches_created == 1
    assert fake.total_requests == 30  # the other 30 were answered by the batch
    records = exported(ledger, job)
    assert {r["status"] for r in records} == {"succeeded"}


def test_a_validation_failure_lands_on_the_right_items(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(10)]
    lines[3] = chat_line(3, "[fake:batch_invalid]")
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert wait_for(ledger, job).state == "completed"
    records = {r["custom_id"]: r for r in exported(ledger, job)}
    bad = records.pop("item-3")
    assert bad["status"] == "failed" and "rejected on purpose" in bad["error"]["message"]
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert fake.batch_api.batches_created == 2  # the rest went again, without the bad line


def test_a_failed_line_fails_its_item_with_the_apis_error(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:context_length]")]
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert wait_for(ledger, job).state == "completed"
    failed = exported(ledger, job)[1]
    assert failed["status"] == "failed" and failed["error"]["code"] == "context_length_exceeded"


def test_cancel_keeps_what_finished(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    fake.config.batch_in_progress_s = 1.0
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(100)])
    assert run_batch_job(ledger, job, FAST, wait=False).state == "submitted"
    time.sleep(0.5)  # about half done
    cancel_job(ledger, job)
    report = wait_for(ledger, job)
    assert report.state == "cancelled" and exit_code(ledger, report) == 0
    counts = ledger.summary(job).counts
    assert counts.get("succeeded", 0) > 0 and counts.get("cancelled", 0) > 0
    assert counts["succeeded"] + counts["cancelled"] == 100
    assert fake.batch_api.batches_created == 1


def test_the_token_cap_holds_batches_until_earlier_ones_finish(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_token_limit = 1000  # the account's cap; about 11 tokens an item
    lines = [chat_line(i) for i in range(300)]
    ledger, job = submit(
        tmp_path, db_url, fake, lines, batch_max_requests=60, batch_token_limit=1000
    )
    assert wait_for(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 300}
    assert fake.batch_api.batches_created == 5  # one at a time, never refused


def test_a_refused_batch_over_the_token_cap_waits_and_goes_again(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_token_limit = 1000  # unknown to batchrunner
    lines = [chat_line(i) for i in range(120)]
    ledger, job = submit(tmp_path, db_url, fake, lines, batch_max_requests=60)
    assert wait_for(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 120}
    refused = [b for b in ledger.batches_of(job, ("settled",)) if b.remote_status == "failed"]
    assert refused and all("token_limit_exceeded" in (b.errors or "") for b in refused)
    assert set(fake.batch_api.lines_by_id.values()) == {1}


class DiesAfterCreate(OpenAIBatches):
    """The process is killed right after the API created the batch, before the ledger knew."""

    def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        super().create(input_file_id, endpoint, metadata)
        raise SystemExit("killed")


class DiesBeforeCreate(OpenAIBatches):
    def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        raise SystemExit("killed")


@pytest.mark.parametrize("crash", [DiesAfterCreate, DiesBeforeCreate])
def test_a_kill_around_create_never_makes_a_duplicate_batch(
    tmp_path: Path, db_url: str, fake: FakeServer, crash: type[OpenAIBatches]
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(20)])
    settings = RunSettings(base_url=fake.base_url)
    with pytest.raises(SystemExit):
        BatchRunner(ledger, job, settings, crash(fake.base_url, "sk-x"), openai).run(wait=False)
    assert [b.state for b in ledger.batches_of(job)] == ["uploaded"]
    assert wait_for(Ledger(db_url), job).state == "completed"
    assert fake.batch_api.batches_created == 1
    assert set(fake.batch_api.lines_by_id.values()) == {1}


def test_the_budget_bounds_the_worst_case_of_the_batches_submitted(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i, max_tokens=100) for i in range(300)]  # about $0.0015 per 50 at worst
    ledger, job = submit(tmp_path, db_url, fake, lines, batch_max_requests=50, budget=0.005)
    report = wait_for(ledger, job)
    assert report.state == "stopped" and (report.stop_reason or "").startswith("budget:")
    assert fake.batch_api.batches_created == 3
    summary = ledger.summary(job)
    assert summary.counts == {"succeeded": 150, "pending": 150}
    assert summary.cost_usd is not None and summary.cost_usd <= 0.005
    assert wait_for(ledger, job, budget=1.0).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 300}


def test_status_polls_the_remote_batches_without_settling_them(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(40)])
    assert run_batch_job(ledger, job, FAST, wait=False).state == "submitted"
    assert [b.remote_status for b in ledger.batches_of(job)] == ["validating"]
    time.sleep(0.6)  # the fake batch has ended by now
    (status,) = [s for s in status_json(db_url)["jobs"] if s["id"] == job]
    assert [(b["remote_status"], b["completed"]) for b in status["batches"]] == [("completed", 40)]
    assert status["counts"]["running"] == 40  # only `run` writes results
    assert wait_for(ledger, job).state == "completed"


def test_a_batch_the_api_refuses_for_good_stops_the_job_instead_of_retrying(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.batch_api.max_lines = 10  # an account or endpoint with a lower limit
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(20)])
    report = wait_for(ledger, job)
    assert report.state == "stopped" and "refused" in (report.stop_reason or "")
    assert ledger.summary(job).counts == {"pending": 20}
    assert wait_for(ledger, job, batch_max_requests=10).state == "completed"
    assert fake.batch_api.batches_created == 2


def test_cancel_after_a_kill_right_after_create_cancels_the_unrecorded_batch(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_in_progress_s = 5.0
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(20)])
    settings = RunSettings(base_url=fake.base_url)
    with pytest.raises(SystemExit):
        BatchRunner(ledger, job, settings, DiesAfterCreate(fake.base_url, "sk-x"), openai).run(
            False
        )
    cancel_job(ledger, job)
    (remote,) = fake.batch_api.batches.values()
    assert remote.cancelled_at is not None  # the batch the ledger had not recorded
    assert wait_for(ledger, job).state == "cancelled"
    assert ledger.summary(job).counts == {"cancelled": 20}


def test_a_retryable_line_goes_again_in_the_next_batch_up_to_max_attempts(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """A batch output line is judged by the same table as an online answer: a 500 is worth
    another try (in the next batch, as an attempt), a 400 is not."""
    lines = [chat_line(0), chat_line(1, "[fake:500x1] once"), chat_line(2, "[fake:500] always")]
    lines.append(chat_line(3, "[fake:400] refused"))
    ledger, job = submit(tmp_path, db_url, fake, lines, max_attempts=3)
    assert wait_for(ledger, job).state == "completed"
    records = {r["custom_id"]: r for r in exported(ledger, job)}
    assert [(r["status"], r["attempts"]) for r in records.values()] == [
        ("succeeded", 1),
        ("succeeded", 2),
        ("failed", 3),
        ("failed", 1),
    ]
    assert records["item-2"]["error"]["kind"] == "server_error"
    assert records["item-3"]["error"]["kind"] == "invalid_request"
    assert fake.batch_api.batches_created == 3  # all four, then items 1 and 2, then item 2
    item_ids = {row.custom_id: row.id for row in ledger.iter_items(job)}
    flaky = ledger.attempts_of(item_ids["item-1"])
    assert [(a.outcome, a.result.http_status) for a in flaky] == [
        ("retry", 500),
        ("succeeded", 200),
    ]
    always = ledger.attempts_of(item_ids["item-2"])  # the last allowed attempt fails it
    assert [a.outcome for a in always] == ["retry", "retry", "failed"]


def test_a_line_on_its_last_attempt_fails_when_its_batch_is_settled(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Not one `run` later: the pass that settles the batch finishes the job (exit 1)."""
    lines = [chat_line(0), chat_line(1, "[fake:500] always")]
    ledger, job = submit(tmp_path, db_url, fake, lines, max_attempts=1)
    assert run_batch_job(ledger, job, FAST, wait=False).state == "submitted"
    deadline = time.monotonic() + 30
    report = run_batch_job(ledger, job, FAST, wait=False)
    while report.state == "submitted" and time.monotonic() < deadline:
        time.sleep(POLL_S)
        report = run_batch_job(ledger, job, FAST, wait=False)
    assert report.state == "completed" and exit_code(ledger, report) == 1
    assert ledger.summary(job).counts == {"succeeded": 1, "failed": 1}
    assert fake.batch_api.batches_created == 1


def test_a_key_refused_while_polling_stops_the_job_instead_of_warning_forever(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_in_progress_s = 5.0
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(5)])
    assert run_batch_job(ledger, job, FAST, wait=False).state == "submitted"
    fake.config.api_key = "sk-another-key-0000000000000000"  # ours is revoked
    started = time.monotonic()
    report = wait_for(ledger, job)
    assert time.monotonic() - started < 10
    assert report.state == "stopped"
    assert re.match(r"auth: GET \S+/v1/batches/\S+: HTTP 401", report.stop_reason or "")
    assert ledger.summary(job).counts == {"running": 5}  # the batch still holds them


def test_cancel_cancels_the_pending_items_even_when_the_api_refuses_a_batch(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.batch_in_progress_s = 5.0
    lines = [chat_line(i) for i in range(5)]  # about 15 prompt tokens each
    ledger, job = submit(tmp_path, db_url, fake, lines, batch_max_requests=3, batch_token_limit=50)
    assert run_batch_job(ledger, job, FAST, wait=False).state == "submitted"
    assert ledger.summary(job).counts == {"running": 3, "pending": 2}  # 2 held by the cap
    fake.config.api_key = "sk-another-key-0000000000000000"  # the remote cancel is refused
    result = invoke("cancel", str(job), "--db", db_url)
    assert result.exit_code == 3, result.stderr
    assert "cancelled 2 pending items, but 1 remote batch(es) could not be" in result.stderr
    assert ledger.job_state(job) == "cancelled"
    assert ledger.summary(job).counts == {"running": 3, "cancelled": 2}


def test_embeddings_files_hold_no_more_inputs_than_the_api_counts_per_batch(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI caps a batch at 50,000 embedding inputs, not requests: lowered to 10 here."""
    monkeypatch.setattr(openai, "BATCH_MAX_INPUTS", 10)
    lines = [
        {
            "custom_id": f"doc-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": [f"text {i}.{j}" for j in range(4)],
            },
        }
        for i in range(6)
    ]
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert wait_for(ledger, job).state == "completed"
    assert sorted(b.request_count for b in ledger.batches_of(job, ("settled",))) == [2, 2, 2]


def test_a_model_without_a_batch_api_is_refused_in_batch_mode_before_anything_is_recorded(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """chatgpt-4o-latest and the realtime models have no Batch API: a batch job naming them
    would be refused by the API after the upload (and was priced at an assumed 50% off), so
    submit refuses their lines, by file and line, exit 2, no ledger made; concurrent mode
    takes the same file."""
    lines = [
        chat_line(0),
        chat_line(1, model="chatgpt-4o-latest"),
        chat_line(2),
        chat_line(3, model="gpt-realtime"),
    ]
    path = write_jsonl(tmp_path / "live-only.jsonl", lines)
    common = ("--db", db_url, "--base-url", fake.base_url)
    refused = invoke("submit", str(path), "--mode", "batch", *common)
    assert refused.exit_code == 2
    assert refused.stderr.splitlines() == [
        f'error: {path}:2: model "chatgpt-4o-latest" has no Batch API (ChatGPT\'s own model, '
        "served live only): send it in concurrent mode (--mode concurrent)",
        f'{path}:4: model "gpt-realtime" has no Batch API (a Realtime API model): send it in '
        "concurrent mode (--mode concurrent)",
    ]
    assert not Path(db_url.removeprefix("sqlite:///")).exists()
    assert fake.batch_api.total_calls == 0  # nothing uploaded
    taken = invoke("submit", str(path), "--detach", *common)
    assert taken.exit_code == 0, taken.stderr
    estimate = invoke("estimate", str(path), "--hosted-prices")
    assert estimate.exit_code == 0
    assert (
        "no Batch API for chatgpt-4o-latest: no batch price, and batch mode refuses them"
        in estimate.stdout
    )


def test_a_batchs_files_are_deleted_once_reconciled_and_kept_with_keep_files(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Two batches, one with an error file: after the run the fake holds none of their five
    files and the ledger names none; with keep_files all stay, and the ledger names them."""
    lines = [chat_line(i) for i in range(30)] + [chat_line(30, "[fake:400] refused")]
    ledger, job = submit(tmp_path, db_url, fake, lines, batch_max_requests=20)
    wait_for(ledger, job)
    assert ledger.summary(job).counts == {"succeeded": 30, "failed": 1}
    assert fake.batch_api.files == {}
    assert fake.batch_api.calls["delete"] == 5  # 2 inputs, 2 outputs, 1 error file
    settled = ledger.batches_of(job, ("settled",))
    assert len(settled) == 2
    assert {(b.input_file_id, b.output_file_id, b.error_file_id) for b in settled} == {
        (None, None, None)
    }

    kept_lines = [chat_line(i, f"kept {i}") for i in range(30)]
    ledger, kept = submit(
        tmp_path, db_url, fake, kept_lines, batch_max_requests=20, keep_files=True
    )
    assert wait_for(ledger, kept).state == "completed"
    named = {
        file_id
        for b in ledger.batches_of(kept, ("settled",))
        for file_id in (b.input_file_id, b.output_file_id, b.error_file_id)
        if file_id
    }
    assert len(named) == 4 and set(fake.batch_api.files) == named
    assert fake.batch_api.calls["delete"] == 5  # none more


def test_kept_files_are_deleted_by_a_later_run_that_says_so_and_a_refused_delete_fails_nothing(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(10)])
    common = ("--db", db_url, "--base-url", fake.base_url, *POLL_ARGS)
    kept = invoke("submit", str(path), "--mode", "batch", "--keep-files", *common)
    assert kept.exit_code == 0, kept.stderr
    assert len(fake.batch_api.files) == 2  # its input and output files
    again = invoke("run", "1", *common)  # the job keeps its files: nothing deleted
    assert again.exit_code == 0 and len(fake.batch_api.files) == 2
    fake.batch_api.refuse = {"delete": 403}  # a key that may not delete files
    refused = invoke("run", "1", "--delete-files", *common)
    assert refused.exit_code == 0, refused.stderr  # the job is done all the same
    assert refused.stderr.count("not deleted (the next run tries again): DELETE ") == 2
    assert refused.stderr.count(": HTTP 403: ") == 2
    assert len(fake.batch_api.files) == 2
    fake.batch_api.refuse = {}
    deleted = invoke("run", "1", *common)  # --delete-files stays with the job
    assert deleted.exit_code == 0, deleted.stderr
    assert fake.batch_api.files == {}
    assert invoke("status", "1", "--db", db_url).exit_code == 0
