"""Issue 17's money: `estimate` predicts what the prompt cache could serve and the cost with it;
`status` and `export usage` show the cached tokens, their share of the input and the dollars
they saved against the uncached input price, per job and per model.

The fake's `cached_fraction` reports a share of every prompt as cached (the prompt-cache
simulation is tested in test_fake_prompt_cache.py); here what matters is the accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchrunner.estimate import (
    estimate_as_json,
    estimate_job_file,
    estimate_line,
    format_estimate,
)
from batchrunner.fake import FakeServer
from batchrunner.prefixes import PrefixFinder, cacheable_tokens
from batchrunner.pricing import rates_for
from batchrunner.usage import format_usd
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke, status_json
from tests.test_run import run, submit

SYSTEM = "Label the sentiment of the review as positive, negative or mixed. " * 110


def shared_prefix_lines(count: int, model: str = "gpt-4.1-mini") -> list[dict[str, object]]:
    return [
        {
            "custom_id": f"r{i}",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"review {i}: it was fine"},
                ],
                "max_tokens": 5,
            },
        }
        for i in range(count)
    ]


def test_estimate_counts_every_request_after_its_groups_first_as_served_by_the_cache(
    tmp_path: Path,
) -> None:
    lines = shared_prefix_lines(10) + [chat_line(i) for i in range(3)]  # those share nothing
    path = write_jsonl(tmp_path / "reviews.jsonl", lines)
    estimate = estimate_job_file(str(path))
    body = lines[0]["body"]
    assert isinstance(body, dict)
    prefix = PrefixFinder().find("/v1/chat/completions", body)
    assert prefix is not None
    cacheable = cacheable_tokens(prefix.tokens)
    assert cacheable >= 1024
    assert estimate.cached_tokens == 9 * cacheable  # not the group's first, nor the others
    assert estimate.cached_share == pytest.approx(9 * cacheable / estimate.input_tokens)
    rates = rates_for("gpt-4.1-mini")
    assert rates is not None
    saved = 9 * cacheable * (rates.input.base - rates.cached_input.base) / 1e6
    uncached, cached = estimate.cost_concurrent, estimate.cached_cost(batch=False)
    assert uncached is not None and cached is not None
    assert uncached - cached == pytest.approx(saved)
    record = estimate_as_json(estimate)
    assert record["cached_tokens"] == 9 * cacheable
    assert record["cost_concurrent_cached_usd"] == pytest.approx(cached)
    shown = invoke("estimate", str(path))
    assert shown.exit_code == 0, shown.output
    assert f"prompt cache: {9 * cacheable:,} input tokens" in shown.stdout


def test_a_job_with_priced_and_unpriced_models_gets_the_priced_part_with_caching_too(
    tmp_path: Path,
) -> None:
    """Review finding (the merge of issue 17's cached cost and issue 19's priced part): a job
    mixing a priced model and one without a price showed the priced part of its cost, but
    "unknown" with caching, though the priced model's cached cost is known."""
    lines = shared_prefix_lines(6) + shared_prefix_lines(4, model="my-local-model")
    for i, line in enumerate(lines):
        line["custom_id"] = f"r{i}"
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    estimate = estimate_job_file(str(path))
    priced = estimate.models["gpt-4.1-mini"]
    assert priced.cached_tokens > 0 and priced.cached_concurrent is not None
    assert estimate.cost_concurrent is None and estimate.cached_cost(batch=False) is None
    assert estimate.priced_cached_cost(batch=False) == pytest.approx(priced.cached_concurrent)
    record = estimate_as_json(estimate)
    assert record["priced_cost_concurrent_cached_usd"] == pytest.approx(priced.cached_concurrent)
    said = estimate_line(estimate, "concurrent")
    shown = format_usd(priced.cached_concurrent)
    assert f"; {shown} for the priced models if the prompt cache serves" in said, said
    assert f"{shown} concurrent" in format_estimate(estimate)


def test_a_file_without_shared_prefixes_predicts_nothing_cached(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "plain.jsonl", [chat_line(i) for i in range(5)])
    estimate = estimate_job_file(str(path))
    assert estimate.cached_tokens == 0
    assert estimate.cached_cost(batch=False) == pytest.approx(estimate.cost_concurrent)
    assert "prompt cache" not in invoke("estimate", str(path)).stdout


def test_status_and_export_usage_show_cached_tokens_share_and_savings_per_model(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.cached_fraction = 0.5
    lines = shared_prefix_lines(6) + shared_prefix_lines(4, model="gpt-4o")
    for i, line in enumerate(lines):
        line["custom_id"] = f"r{i}"
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert run(ledger, job).state == "completed"
    (status,) = status_json(db_url)["jobs"]
    assert status["cached_tokens"] > 0
    assert status["cached_share"] == pytest.approx(
        status["cached_tokens"] / status["input_tokens"], abs=1e-4
    )
    expected_total = 0.0
    for model in ("gpt-4.1-mini", "gpt-4o"):
        shown = status["models"][model]
        rates = rates_for(model)
        assert rates is not None and shown["cached_tokens"] > 0
        saved = shown["cached_tokens"] * (rates.input.base - rates.cached_input.base) / 1e6
        assert shown["cache_saved_usd"] == pytest.approx(saved)
        assert shown["cached_share"] == pytest.approx(
            shown["cached_tokens"] / shown["input_tokens"], abs=1e-4
        )
        expected_total += saved
    assert status["cache_saved_usd"] == pytest.approx(expected_total)
    text = invoke("status", "--db", db_url).stdout
    assert (
        f"{status['cached_tokens']:,} cached, {status['cached_share'] * 100:.0f}%, saving" in text
    )

    usage = tmp_path / "usage.jsonl"
    exported = invoke("export", "usage", "--format", "jsonl", "-o", str(usage), "--db", db_url)
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in usage.read_text().splitlines()]
    assert sum(r["cached_tokens"] for r in records) == status["cached_tokens"]
    assert sum(r["cache_saved_usd"] for r in records) == pytest.approx(expected_total)
    first = records[0]
    rates = rates_for(first["model"])
    assert rates is not None
    assert first["cache_saved_usd"] == pytest.approx(
        first["cached_tokens"] * (rates.input.base - rates.cached_input.base) / 1e6
    )


def test_a_job_nothing_was_cached_for_saved_nothing(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = submit(tmp_path, db_url, fake, [chat_line(i) for i in range(3)])
    assert run(ledger, job).state == "completed"
    (status,) = status_json(db_url)["jobs"]
    assert (status["cached_tokens"], status["cache_saved_usd"]) == (0, 0)
    assert "cached, " not in invoke("status", "--db", db_url).stdout  # no share, no saving
