"""Running at the limit without tripping it, and every error handled by its kind, end to end
against the fake server, which enforces its limits like the real API (with its headers)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from batchrunner import RunReport
from batchrunner.fake import FakeServer
from batchrunner.runner import concurrent
from tests.conftest import chat_line
from tests.test_run import exported, run, submit

LIMIT_RPM = 3000  # 50 requests/s
WINDOW_S = 2.0  # the server enforces its per-minute limit over 2 s, as the real one may


def timed_run(*args: object, **kwargs: object) -> tuple[RunReport, float]:
    started = time.monotonic()
    report = run(*args, **kwargs)  # type: ignore[arg-type]
    return report, time.monotonic() - started


def test_at_the_servers_limit_the_job_runs_at_full_rate_without_429s(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.rpm_limit, fake.config.rate_window_s = LIMIT_RPM, WINDOW_S
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(400)], rpm=LIMIT_RPM)
    report, elapsed = timed_run(ledger, job)
    assert report.state == "completed"
    achieved_rpm = 400 / elapsed * 60
    assert achieved_rpm >= 0.97 * LIMIT_RPM
    assert fake.status_counts[429] <= 4  # <= 1%
    assert ledger.summary(job).counts == {"succeeded": 400}


def test_a_configured_limit_above_the_servers_is_learned_from_its_headers(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.rpm_limit, fake.config.rate_window_s = LIMIT_RPM // 2, WINDOW_S
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(300)], rpm=LIMIT_RPM)
    report, elapsed = timed_run(ledger, job)
    assert report.state == "completed"
    assert fake.status_counts[429] <= 15  # a few while learning; no retry storm
    assert max(fake.requests_by_id.values()) <= 3
    assert 300 / elapsed * 60 >= 0.8 * LIMIT_RPM // 2
    assert ledger.summary(job).counts == {"succeeded": 300}


def test_token_limits_from_the_server_are_honoured_with_nothing_configured(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.tpm_limit, fake.config.rate_window_s = 120_000, WINDOW_S  # 2,000 tokens/s
    lines = [chat_line(i, max_tokens=100) for i in range(120)]  # about 110 tokens each
    ledger, job = submit(tmp_path, db_url, fake, lines, concurrency=16)  # a first wave that fits
    report, elapsed = timed_run(ledger, job)
    assert report.state == "completed"
    assert fake.status_counts[429] <= 12
    assert elapsed >= 3.0  # 13,000 tokens at 2,000/s after a 4,000-token burst
    assert ledger.summary(job).counts == {"succeeded": 120}


def test_a_fault_mix_ends_with_every_item_succeeded_and_every_attempt_recorded(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.error_rate_5xx, fake.config.drop_rate = 0.10, 0.02
    fake.config.hang_rate, fake.config.hang_seconds = 0.01, 3.0
    ledger, job = submit(
        tmp_path, db_url, fake, [chat_line(i) for i in range(500)], timeout=1.0, max_attempts=8
    )
    assert run(ledger, job).state == "completed"
    records = exported(ledger, job)
    assert {r["status"] for r in records} == {"succeeded"}
    assert sum(r["attempts"] for r in records) == fake.total_requests > 500
    assert fake.status_counts[0] > 0 and fake.status_counts[500] + fake.status_counts[503] > 0
    timeouts = [
        a
        for row in ledger.iter_items(job)
        if row.attempts > 1
        for a in ledger.attempts_of(row.id)
        if a.result.error_kind == "timeout"
    ]
    assert timeouts and all("possibly billed" in (a.result.error_message or "") for a in timeouts)


def test_insufficient_quota_stops_within_a_handful_and_run_finishes_later(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(200)], concurrency=8)
    fake.config.force_status, fake.config.force_code = 429, "insufficient_quota"
    report = run(ledger, job)
    assert report.state == "stopped" and report.stop_reason is not None
    assert report.stop_reason.startswith("quota:")
    assert fake.total_requests <= 8
    assert ledger.summary(job).counts == {"pending": 200}
    fake.config.force_status = fake.config.force_code = None
    assert run(ledger, job).state == "completed"
    assert ledger.summary(job).counts == {"succeeded": 200}


def test_a_deferral_among_the_last_items_is_waited_for_not_left_for_the_next_run(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Every item is claimed before the last ones answer: when one of them comes back with a
    long Retry-After, the run still waits for it and sends it again, instead of stopping."""
    lines = [chat_line(i) for i in range(3)] + [chat_line(3, "[fake:retry_laterx1] later")]
    ledger, job = submit(tmp_path, db_url, fake, lines, concurrency=2, max_retry_wait=0.5)
    report = run(ledger, job)
    assert report.state == "completed" and ledger.summary(job).counts == {"succeeded": 4}, (
        report,
        ledger.summary(job).counts,
    )
    ids = {row.custom_id: row.id for row in ledger.iter_items(job)}
    assert [a.outcome for a in ledger.attempts_of(ids["item-3"])] == ["retry", "succeeded"]


def test_truncated_and_filtered_answers_are_flagged_results_never_retried(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0, "[fake:length] long story"), chat_line(1, "[fake:content_filter]")]
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert run(ledger, job).state == "completed"
    records = exported(ledger, job)
    assert [(r["status"], r["finish_reason"], r["attempts"]) for r in records] == [
        ("succeeded", "length", 1),
        ("succeeded", "content_filter", 1),
    ]
    assert records[0]["output_tokens"] > 0  # billed, so kept
    assert fake.total_requests == 2


def test_a_long_retry_after_defers_the_item_instead_of_holding_a_worker(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0, "[fake:retry_laterx1] come back later")]
    lines += [chat_line(i) for i in range(1, 6)]
    ledger, job = submit(tmp_path, db_url, fake, lines, concurrency=1, max_retry_wait=0.5)
    report = run(ledger, job)
    assert report.state == "completed" and ledger.summary(job).counts == {"succeeded": 6}
    ids = {row.custom_id: row.id for row in ledger.iter_items(job)}
    first, second = ledger.attempts_of(ids["item-0"])
    assert (first.outcome, first.result.http_status, second.outcome) == ("retry", 503, "succeeded")
    assert (second.started_at - first.ended_at).total_seconds() >= 1.4  # the server's 1.5 s
    others_done = max(ledger.attempts_of(ids[f"item-{i}"])[0].ended_at for i in range(1, 6))
    assert others_done < second.started_at  # the one worker went on with the others


def test_workers_start_at_the_ramp_rate_not_all_in_one_loop_pass(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(concurrent, "WORKER_STARTS_PER_S", 200.0)  # 20 workers over 0.1 s
    fake.config.latency_ms = 300  # no worker is free again before the last one has started
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(20)], concurrency=20)
    assert run(ledger, job).state == "completed"
    sent = sorted(ledger.attempts_of(item.id)[0].started_at for item in ledger.iter_items(job))
    assert (sent[-1] - sent[0]).total_seconds() >= 0.5 * 19 / 200  # one loop pass: a few ms


def test_a_job_smaller_than_its_concurrency_does_not_wait_for_every_worker_to_start(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(concurrent, "WORKER_STARTS_PER_S", 100.0)  # 1,000 workers: 10 s
    lines = [chat_line(i) for i in range(3)]
    ledger, job = submit(tmp_path, db_url, fake, lines, concurrency=1000)
    report, elapsed = timed_run(ledger, job)
    assert report.state == "completed" and ledger.summary(job).counts == {"succeeded": 3}
    assert elapsed < 5.0
