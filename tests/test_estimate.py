"""The offline pre-flight estimate of a job file: tokens and cost per model, streaming."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchrunner.demand import TYPICAL_OUTPUT
from batchrunner.dialects.openai import CHAT
from batchrunner.errors import JobFileError
from batchrunner.estimate import (
    EstimateBuilder,
    ModelEstimate,
    estimate_as_json,
    estimate_items,
    estimate_job_file,
    format_estimate,
)
from batchrunner.items import JobItem
from batchrunner.jobfile import JobDefaults, read_job_items
from batchrunner.pricing import load_price_file, price_item
from batchrunner.usage import Usage, format_usd
from tests.conftest import write_jsonl

WHEN = datetime(2026, 11, 1, tzinfo=UTC)
HELLO = [{"role": "user", "content": "hello world"}]  # 9 prompt tokens on o200k_base
LINES: list[dict[str, Any]] = [
    {"custom_id": "a", "model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 10},
    {"custom_id": "b", "model": "gpt-4o-mini", "messages": HELLO},
    {
        "custom_id": "c",
        "url": "responses",
        "model": "gpt-4o-mini",
        "input": "hello world",
        "max_output_tokens": 20,
    },
    {
        "custom_id": "d",
        "url": "/v1/embeddings",
        "model": "text-embedding-3-small",
        "input": ["hello world", "bob"],
    },
    {"custom_id": "e", "model": "my-local-model", "messages": HELLO},
]


def _per_million(tokens: int, rate: float) -> float:
    return tokens * rate / 1_000_000


def test_estimate_counts_tokens_and_prices_both_modes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", LINES)
    estimate = estimate_job_file(str(path), when=WHEN)
    mini = estimate.models["gpt-4o-mini"]
    assert (mini.requests, mini.input_tokens, mini.output_tokens) == (3, 27, 10 + 256 + 20)
    assert mini.uncapped_requests == 1
    assert mini.cost_concurrent == pytest.approx(_per_million(27, 0.15) + _per_million(286, 0.6))
    assert mini.cost_batch == pytest.approx(_per_million(27, 0.075) + _per_million(286, 0.3))
    embed = estimate.models["text-embedding-3-small"]
    assert (embed.requests, embed.input_tokens, embed.output_tokens) == (1, 3, 0)
    assert embed.cost_batch == pytest.approx(_per_million(3, 0.01))
    local = estimate.models["my-local-model"]
    assert (local.input_tokens, local.output_tokens) == (9, TYPICAL_OUTPUT)
    assert local.cost_concurrent is None and local.cost_batch is None
    assert (estimate.requests, estimate.input_tokens) == (5, 39)
    assert estimate.cost_concurrent is None and estimate.cost_batch is None  # never a partial sum
    assert estimate.unpriced_models == ["my-local-model"]


def test_assume_output_and_a_price_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", LINES)
    prices = tmp_path / "prices.toml"
    prices.write_text('["my-local-model"]\ninput = 1\noutput = 2\n')
    estimate = estimate_job_file(
        str(path), assume_output=100, overrides=load_price_file(prices), when=WHEN
    )
    assert estimate.models["gpt-4o-mini"].output_tokens == 10 + 100 + 20
    assert estimate.models["text-embedding-3-small"].output_tokens == 0
    local = estimate.models["my-local-model"]
    assert local.cost_concurrent == pytest.approx(_per_million(9, 1) + _per_million(100, 2))
    assert local.batch_discount_assumed  # the file gives no batch rates
    assert local.cost_concurrent is not None
    assert local.cost_batch == pytest.approx(local.cost_concurrent / 2)
    assert estimate.unpriced_models == []
    assert estimate.batch_assumed_models == ["my-local-model"]
    total = sum(m.cost_concurrent or 0 for m in estimate.models.values())
    assert estimate.cost_concurrent == pytest.approx(total)


def test_format_and_json(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", LINES)
    estimate = estimate_job_file(str(path), when=WHEN)
    text = format_estimate(estimate)
    lines = text.splitlines()
    assert lines[0].split()[-2:] == ["concurrent", "batch"]
    assert lines[1].split()[:4] == ["gpt-4o-mini", "3", "27", "286"]
    assert lines[2].split() == ["my-local-model", "1", "9", "256", "unknown", "unknown"]
    # a model without a price leaves the priced part as the total, named so (not "unknown")
    priced = sum(m.cost_concurrent or 0 for m in estimate.models.values())
    assert priced > 0 and estimate.priced_cost_concurrent == pytest.approx(priced)
    assert lines[4].split()[:7] == ["total,", "priced", "models", "only", "5", "39", "542"]
    assert lines[4].split()[7] == format_usd(priced) != "unknown"
    assert "256 tokens (2 requests)" in text
    assert "no price known for my-local-model" in text
    data = json.loads(json.dumps(estimate_as_json(estimate)))
    assert data["requests"] == 5
    assert data["cost_concurrent_usd"] is None
    assert data["priced_cost_concurrent_usd"] == pytest.approx(priced)
    assert data["unpriced_models"] == ["my-local-model"]
    by_model = {m["model"]: m for m in data["models"]}
    assert by_model["gpt-4o-mini"]["cost_batch_usd"] == pytest.approx(
        _per_million(27, 0.075) + _per_million(286, 0.3)
    )


def test_an_invalid_line_stops_the_estimate(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text(json.dumps(LINES[0]) + "\n{not json\n")
    with pytest.raises(JobFileError, match=r"job\.jsonl:2: invalid JSON"):
        estimate_job_file(str(path))


def _items(count: int) -> Iterator[JobItem]:
    for i in range(count):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"item {i}"}]}
        yield JobItem(i + 1, f"id-{i}", CHAT, json.dumps(body).encode(), None, "gpt-4o-mini")


def _peak_bytes(count: int) -> int:
    tracemalloc.start()
    try:
        estimate = estimate_items(_items(count), when=WHEN)
        assert estimate.requests == count
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_with_the_number_of_items() -> None:
    estimate_items(_items(2_000), when=WHEN)  # warm the encoder and the price caches
    small, large = _peak_bytes(2_000), _peak_bytes(20_000)
    assert large < small + 1_000_000, (small, large)


def test_submit_s_sampled_estimate_is_close_to_counting_every_request(tmp_path: Path) -> None:
    rng = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    lines = []
    for i in range(6000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 120)))
        body: dict[str, object] = {"model": rng.choice(["gpt-4o-mini", "gpt-4.1-mini"])}
        body["messages"] = [{"role": "user", "content": text}]
        if rng.random() < 0.5:
            body["max_tokens"] = rng.randint(10, 300)
        lines.append(json.dumps({"custom_id": f"r{i}", **body}))
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    exact = estimate_job_file(str(path))
    builder = EstimateBuilder(path=str(path))
    passed = list(builder.passing(read_job_items(str(path), JobDefaults()), exact_first=500))
    sampled = builder.estimate
    assert len(passed) == 6000 and sampled.sampled and not exact.sampled
    assert sampled.requests == exact.requests == 6000
    for model in exact.models:
        assert sampled.models[model].requests == exact.models[model].requests
    assert sampled.input_tokens == pytest.approx(exact.input_tokens, rel=0.05)
    assert sampled.cost_concurrent == pytest.approx(exact.cost_concurrent, rel=0.05)


def test_a_sample_of_a_few_thousand_is_weighted_by_what_it_stands_for(tmp_path: Path) -> None:
    """submit's form: the first requests exactly, then a random sample sized by the total. The
    first requests here are short and the rest long, so a sample scaled up together with the
    exact part would overestimate; each part stands only for itself."""
    lines = []
    for i in range(20_000):
        words = 2 if i < 1000 else 60 + i % 41
        model = "gpt-4.1-mini" if i % 7 == 0 else "gpt-4o-mini"
        messages = [{"role": "user", "content": " ".join(["gamma"] * words) + f" {i}"}]
        lines.append(json.dumps({"custom_id": f"r{i}", "model": model, "messages": messages}))
    path = tmp_path / "skewed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    exact = estimate_job_file(str(path))
    builder = EstimateBuilder(path=str(path))
    items = read_job_items(str(path), JobDefaults())
    passed = sum(1 for _ in builder.passing(items, exact_first=1000, samples=2000, total=20_000))
    sampled = builder.estimate
    assert passed == 20_000 and sampled.sampled
    for model, row in exact.models.items():
        assert sampled.models[model].requests == row.requests
        assert sampled.models[model].input_tokens == pytest.approx(row.input_tokens, rel=0.03)
    assert sampled.cost_concurrent == pytest.approx(exact.cost_concurrent, rel=0.03)
    again = EstimateBuilder(path=str(path))
    for _ in again.passing(read_job_items(str(path), JobDefaults()), total=20_000):
        pass
    assert again.estimate.input_tokens == sampled.input_tokens  # seeded: the same every time


def test_a_small_file_is_counted_exactly(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "small.jsonl", LINES)
    builder = EstimateBuilder(path=str(path))
    items = read_job_items(str(path), JobDefaults())
    assert sum(1 for _ in builder.passing(items, exact_first=1, total=len(LINES))) == len(LINES)
    assert not builder.estimate.sampled
    assert builder.estimate.input_tokens == estimate_job_file(str(path)).input_tokens


def test_each_request_is_priced_at_its_own_tier() -> None:
    """The model's rates are looked up once, but a tier still follows each request's size."""
    small, large = Usage(100_000, output_tokens=1_000), Usage(300_000, output_tokens=1_000)
    row = ModelEstimate("gpt-5.4")  # its prices rise above 272k input tokens
    for usage in (small, large, small):
        row.add(usage, capped=True, when=WHEN, overrides=None)
    small_cost = price_item("gpt-5.4", small, when=WHEN)
    large_cost = price_item("gpt-5.4", large, when=WHEN)
    assert small_cost is not None and large_cost is not None
    assert large_cost.usd > 3 * small_cost.usd  # 3x the tokens, at the higher tier's prices
    assert row.cost_concurrent == pytest.approx(2 * small_cost.usd + large_cost.usd)


def test_the_estimate_command_prices_as_submit_would_on_that_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import invoke

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    job = write_jsonl(
        tmp_path / "job.jsonl",
        [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi there"}]}],
    )
    hosted = json.loads(invoke("estimate", str(job), "--json").stdout)
    assert hosted["cost_concurrent_usd"] > 0 and hosted["unpriced_models"] == []
    local = json.loads(
        invoke("estimate", str(job), "--json", "--base-url", "http://localhost:11434/v1").stdout
    )
    assert local["cost_concurrent_usd"] is None and local["unpriced_models"] == ["gpt-4o-mini"]
    assert "served by a local or self-hosted server" in local["unpriced_reasons"]["gpt-4o-mini"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://vllm:8000/v1")  # the environment counts too
    assert json.loads(invoke("estimate", str(job), "--json").stdout)["unpriced_models"]
    told = invoke("estimate", str(job), "--json", "--hosted-prices")
    assert json.loads(told.stdout)["cost_concurrent_usd"] == hosted["cost_concurrent_usd"]
    aliased = invoke("estimate", str(job), "--json", "--price-as", "gpt-4o-mini=gpt-4o")
    assert json.loads(aliased.stdout)["cost_concurrent_usd"] > hosted["cost_concurrent_usd"]


def test_a_table_is_estimated_as_submit_would_read_it(tmp_path: Path) -> None:
    """`estimate data.csv --prompt ...` counts the requests its rows become: the same figures
    as the job file `render` writes from it; a table without a template is refused (exit 2)."""
    from tests.test_cli import invoke

    table = tmp_path / "reviews.csv"
    table.write_text("id,text\n" + "".join(f"r{i},review number {i} was fine\n" for i in range(7)))
    shape = [
        "--prompt",
        "Label this review: {{ text }}",
        "--id-column",
        "id",
        "--model",
        "gpt-4o-mini",
    ]
    rendered = tmp_path / "rendered.jsonl"
    assert invoke("render", str(table), *shape, "-o", str(rendered)).exit_code == 0
    from_table = invoke("estimate", str(table), *shape, "--json")
    assert from_table.exit_code == 0, from_table.output
    from_file = invoke("estimate", str(rendered), "--json")
    table_figures, file_figures = json.loads(from_table.stdout), json.loads(from_file.stdout)
    assert table_figures["requests"] == 7
    for key in ("requests", "input_tokens", "output_tokens", "cost_concurrent_usd"):
        assert table_figures[key] == file_figures[key]
    refused = invoke("estimate", str(table))
    assert refused.exit_code == 2 and "--prompt" in refused.output
