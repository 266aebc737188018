"""Cache-aware runs end to end (issue 17): what goes over the wire when a job's requests share a
long head, in both modes, against the fake server through the real SDK / HTTP client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from batchrunner.commands import run_batch_job
from batchrunner.fake import FakeServer
from tests.test_batch_mode import FAST, POLL_S
from tests.test_batch_mode import submit as submit_batch
from tests.test_run import run
from tests.test_run import submit as submit_concurrent

SYSTEM = "You extract the invoice number, date and total from the text you are given. " * 100


def invoice_lines(count: int, group: str = "", **body: Any) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{group}inv-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-5-mini",
                "messages": [
                    {"role": "system", "content": group + SYSTEM},
                    {"role": "user", "content": f"Invoice {i}: total 12.{i:02d} EUR"},
                ],
                **body,
            },
        }
        for i in range(count)
    ]


def uploaded_bodies(fake: FakeServer) -> list[dict[str, Any]]:
    """Every request line of every batch input file the fake holds, in file order."""
    bodies = []
    for stored in fake.batch_api.files.values():
        if stored.purpose == "batch":
            for raw in stored.content.splitlines():
                bodies.append(orjson.loads(raw)["body"])
    return bodies


def test_batch_files_give_each_groups_lines_keys_in_runs_of_the_per_key_rate(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = invoice_lines(40, "A ") + invoice_lines(10, "B ") + invoice_lines(3)
    lines.append(
        {
            "custom_id": "short",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    own = invoice_lines(2, "C ", prompt_cache_key="mine")
    ledger, job = submit_batch(tmp_path, db_url, fake, lines + own, cache_key_rpm=15)
    run_batch_job(ledger, job, dict(FAST), wait=False, poll_s=POLL_S)  # uploaded, not ended
    bodies = uploaded_bodies(fake)
    assert len(bodies) == len(lines) + len(own)
    keys: dict[str, list[str | None]] = {}
    for body in bodies:
        head = body["messages"][0]["content"][:2]
        keys.setdefault(head, []).append(body.get("prompt_cache_key"))
    a, b = keys["A "], keys["B "]
    assert [a.count(k) for k in dict.fromkeys(a)] == [15, 15, 10]  # 40 lines: 3 keys
    assert len(set(b)) == 1 and not set(a) & set(b)  # a group's keys are its own
    assert keys["C "] == ["mine", "mine"]  # a line's own key is kept
    assert keys["hi"] == [None]  # nothing to cache: sent as it is
    assert len(set(keys["Yo"])) == 1 and None not in keys["Yo"]  # a third group, 3 lines


def test_no_cache_aware_sends_batch_lines_as_they_are(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit_batch(tmp_path, db_url, fake, invoice_lines(20), cache_aware=False)
    run_batch_job(ledger, job, dict(FAST), wait=False, poll_s=POLL_S)
    bodies = uploaded_bodies(fake)
    assert len(bodies) == 20
    assert all("prompt_cache_key" not in body for body in bodies)


def test_a_batch_api_that_refuses_the_added_key_fails_no_item(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """The key is batchrunner's addition, not the user's: its refusal proves nothing about the
    items. Their lines go again in the next batch, without keys (for the rest of the job), and
    the refused lines are not attempts."""
    fake.config.refuse_params = ("prompt_cache_key",)
    ledger, job = submit_batch(tmp_path, db_url, fake, invoice_lines(6))
    run_batch_job(ledger, job, dict(FAST), wait=True, poll_s=POLL_S)
    summary = ledger.summary(job)
    assert summary.counts == {"succeeded": 6}
    assert summary.attempts == 6  # one each: the refused lines were not run
    assert fake.batch_api.batches_created == 2
    options, _ = ledger.job_options(job)
    assert options["cache_aware"] is False  # kept with the job: later runs add no keys


def cache_stats(fake: FakeServer) -> dict[str, Any]:
    cache = fake.prompt_cache()
    assert cache is not None
    return cache.stats()


def caching_run(
    tmp_path: Path, db_url: str, fake: FakeServer, lines: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    """Run `lines` at concurrency 32 against the prompt-caching fake; its cache's figures."""
    fake.config.prompt_cache = True
    fake.config.latency_ms = 30.0
    folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    ledger, job = submit_concurrent(folder, db_url, fake, lines)
    assert run(ledger, job, concurrency=32, **overrides).state == "completed"
    assert ledger.summary(job).counts.get("succeeded") == len(lines)
    return cache_stats(fake)


def test_cache_aware_sending_gets_near_the_ideal_where_naive_sending_misses(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = invoice_lines(240)
    naive = caching_run(tmp_path, db_url, fake, lines, cache_aware=False)
    assert naive["pairs"] == 1  # one prefix, no key: one pair, one machine
    assert naive["cached_tokens"] < 0.3 * naive["ideal_cached_tokens"]  # the rest overflowed
    fake.config.seed = 8  # a new, cold cache for the second run
    again = [{**line, "custom_id": f"again-{line['custom_id']}"} for line in lines]
    aware = caching_run(tmp_path, db_url, fake, again)
    assert aware["cached_tokens"] >= 0.9 * aware["ideal_cached_tokens"]
    assert aware["cached_tokens"] > 3 * naive["cached_tokens"]
    assert 240 / 15 <= aware["keys"] <= 240 / 15 * 2  # keys of at most 15 requests a minute
    assert aware["overflowed"] == 0


def test_a_jobs_own_prompt_cache_key_is_sent_as_it_is(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = invoice_lines(30, prompt_cache_key="tenant-7")
    seen = caching_run(tmp_path, db_url, fake, lines)
    assert (seen["keys"], seen["pairs"]) == (1, 1)


def test_a_server_that_refuses_the_parameter_gets_the_requests_without_it(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.refuse_params = ("prompt_cache_key",)
    fake.config.record_requests = True
    lines = invoice_lines(20)
    caching_run(tmp_path, db_url, fake, lines)  # every item succeeded
    status_counts = fake.status_counts
    assert status_counts[200] == 20
    assert 1 <= status_counts[400] <= 32  # only the requests sent before the first refusal
