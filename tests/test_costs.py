"""Cost truth end to end: what each item cost, the estimate beside it, and a budget kept."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from batchrunner.errors import UsageError
from batchrunner.estimate import estimate_job_file
from batchrunner.fake import FakeServer
from batchrunner.pricing import price_item
from batchrunner.usage import Usage
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke, status_json
from tests.test_run import exported, run, submit

EXAMPLE = Path(__file__).parent.parent / "jobs" / "example.jsonl"


def test_each_item_costs_its_tokens_at_the_models_prices(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    fake.config.cached_fraction = 0.5
    lines = [chat_line(0), chat_line(1, model="gpt-4.1"), chat_line(2, model="o4-mini")]
    lines.append(
        {
            "custom_id": "emb",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "a cat"},
        }
    )
    ledger, job = submit(tmp_path, db_url, fake, lines)
    assert run(ledger, job).state == "completed"
    for record in exported(ledger, job):
        model = record["response"]["model"]
        usage = Usage(
            record["input_tokens"],
            record["cached_tokens"],
            record["output_tokens"],
            record["reasoning_tokens"],
        )
        expected = price_item(model, usage)
        assert expected is not None and record["cost_usd"] == pytest.approx(expected.usd)
    chat = exported(ledger, job)[0]
    assert chat["cached_tokens"] > 0  # the cached share is priced at the cached rate
    assert ledger.summary(job).cost_usd == pytest.approx(
        sum(r["cost_usd"] for r in exported(ledger, job))
    )


def test_an_unknown_model_costs_null_with_a_warning_and_a_price_file_prices_it(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "ft.jsonl", [chat_line(i, model="ft:acme-7") for i in range(3)])
    result = invoke(
        "submit", str(job), "--db", db_url, "--base-url", fake.base_url, "--hosted-prices"
    )
    assert result.exit_code == 0
    assert "warning: no price known for ft:acme-7" in result.stderr
    (status,) = status_json(db_url)["jobs"]
    assert status["cost_usd"] is None
    assert "no price" in invoke("status", "--db", db_url).stdout

    prices = tmp_path / "prices.toml"
    prices.write_text('["ft:acme-7"]\ninput = 3.0\noutput = 12.0\n')
    result = invoke(
        "submit", str(job), "--new", "--db", db_url, "--base-url", fake.base_url, "--hosted-prices",
        "--prices", str(prices),
    )  # fmt: skip
    assert result.exit_code == 0 and "warning" not in result.stderr
    priced = status_json(db_url)["jobs"][-1]
    expected = (priced["input_tokens"] * 3.0 + priced["output_tokens"] * 12.0) / 1e6
    assert priced["cost_usd"] == pytest.approx(expected)


def test_the_estimate_of_the_example_job_is_within_15_percent_of_the_actual(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    estimate = estimate_job_file(str(EXAMPLE))
    ledger, job = submit(tmp_path, db_url, fake, [json.loads(x) for x in EXAMPLE.open()])
    assert run(ledger, job).state == "completed"
    summary = ledger.summary(job)
    assert summary.input_tokens == estimate.input_tokens  # counted with the real encodings
    assert estimate.cost_concurrent is not None and summary.cost_usd is not None
    assert abs(estimate.cost_concurrent - summary.cost_usd) <= 0.15 * summary.cost_usd


def random_job(rng: random.Random, size: int) -> list[dict[str, Any]]:
    lines = []
    for i in range(size):
        text = " ".join(
            rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(1, 80))
        )
        body: dict[str, Any] = {}
        if rng.random() < 0.7:
            body["max_tokens"] = rng.randint(5, 400)
        lines.append(chat_line(i, text, model=rng.choice(["gpt-4o-mini", "gpt-4.1-mini"]), **body))
    return lines


@pytest.mark.parametrize("seed", range(6))
def test_randomised_runs_never_spend_past_the_budget(
    tmp_path: Path, db_url: str, fake: FakeServer, seed: int
) -> None:
    rng = random.Random(seed)
    fake.config.latency_jitter_ms = 20.0
    budget = rng.uniform(0.0005, 0.02)
    ledger, job = submit(
        tmp_path, db_url, fake, random_job(rng, 150), budget=budget,
        concurrency=rng.choice([1, 8, 64]),
    )  # fmt: skip
    report = run(ledger, job)
    spent = ledger.summary(job).cost_usd or 0.0
    assert spent <= budget
    if report.state == "stopped":
        assert report.stop_reason is not None and report.stop_reason.startswith("budget:")
        assert ledger.summary(job).counts.get("pending", 0) > 0


def test_a_stopped_budget_resumes_with_a_higher_one(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i, max_tokens=200) for i in range(100)]  # at most about $0.00012 each
    job = write_jsonl(tmp_path / "j.jsonl", lines)
    args = ("--db", db_url, "--base-url", fake.base_url, "--hosted-prices")
    first: Result = invoke("submit", str(job), *args, "--budget", "0.003")
    assert first.exit_code == 3 and "budget" in first.stderr
    spent = status_json(db_url)["jobs"][0]["cost_usd"]
    assert 0 < spent <= 0.003
    again = invoke("run", "1", *args, "--budget", "0.003")  # only what the first run left
    assert again.exit_code == 3
    assert spent <= status_json(db_url)["jobs"][0]["cost_usd"] <= 0.003
    final = invoke("run", "1", *args, "--budget", "1")
    assert final.exit_code == 0
    (status,) = status_json(db_url)["jobs"]
    assert status["counts"]["succeeded"] == 100 and status["cost_usd"] <= 1


def test_usage_export_lists_model_mode_tokens_and_cost_per_item(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1, model="gpt-4.1-mini"), chat_line(2, "[fake:400]")]
    job = write_jsonl(tmp_path / "u.jsonl", lines)
    assert (
        invoke(
            "submit", str(job), "--db", db_url, "--base-url", fake.base_url, "--hosted-prices"
        ).exit_code
        == 1
    )
    rows = list(csv.DictReader(io.StringIO(invoke("export", "usage", "--db", db_url).stdout)))
    assert [(r["custom_id"], r["model"], r["mode"], r["status"]) for r in rows] == [
        ("item-0", "gpt-4o-mini", "concurrent", "succeeded"),
        ("item-1", "gpt-4.1-mini", "concurrent", "succeeded"),
        ("item-2", "gpt-4o-mini", "concurrent", "failed"),
    ]
    assert rows[2]["cost_usd"] == "" and int(rows[0]["input_tokens"]) > 0
    as_json = [
        json.loads(x)
        for x in invoke("export", "usage", "--format", "jsonl", "--db", db_url).stdout.splitlines()
    ]
    status = status_json(db_url)["jobs"][0]
    assert sum(r["cost_usd"] or 0 for r in as_json) == pytest.approx(status["cost_usd"])
    assert status["models"]["gpt-4.1-mini"]["items"] == 1


def test_a_model_priced_only_by_a_loose_match_is_unpriced_and_says_why(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Ollama's deepseek-r1:7b is not DeepSeek's hosted reasoner, whatever its name starts
    with: no cost (never its price), the reason named, and a price file prices it."""
    lines = [chat_line(i, model="deepseek-r1:7b") for i in range(3)]
    job = write_jsonl(tmp_path / "local.jsonl", lines)
    common = ("--db", db_url, "--base-url", fake.base_url, "--hosted-prices")
    result = invoke("submit", str(job), *common)
    assert result.exit_code == 0, result.stderr
    reason = "genai-prices matches it only loosely, to deepseek's deepseek-reasoner"
    assert f"no price known for deepseek-r1:7b: {reason}" in result.stderr
    (status,) = status_json(db_url)["jobs"]
    assert status["cost_usd"] is None and status["unpriced_models"] == ["deepseek-r1:7b"]
    assert status["unpriced_reasons"] == {"deepseek-r1:7b": reason}
    prices = tmp_path / "local.toml"
    prices.write_text('["deepseek-r1:7b"]\ninput = 0\noutput = 0\n')
    priced = invoke("submit", str(job), *common, "--new", "--prices", str(prices))
    assert priced.exit_code == 0 and "no price known" not in priced.stderr
    assert status_json(db_url)["jobs"][-1]["cost_usd"] == 0


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_a_local_servers_models_are_unpriced_unless_the_user_prices_them(
    tmp_path: Path, db_url: str, fake: FakeServer, mode: str
) -> None:
    """The fake on 127.0.0.1 is, by its address, a local server: gpt-oss-20b there is its
    owner's, not a hosted API's, so no price is taken from the table and the job says why;
    --prices, --price-as and --hosted-prices each price it."""
    lines = [chat_line(i, model="gpt-oss-20b") for i in range(3)]
    job = write_jsonl(tmp_path / "local.jsonl", lines)
    extra = ("--mode", "batch", "--wait", "--poll-interval", "0.05") if mode == "batch" else ()
    common = ("--db", db_url, "--base-url", fake.base_url, *extra)
    local = invoke("submit", str(job), *common)
    assert local.exit_code == 0, local.stderr
    assert "no price known for gpt-oss-20b: served by a local or self-hosted server" in (
        local.stderr
    )
    prices = tmp_path / "free.toml"
    prices.write_text('["gpt-oss-20b"]\ninput = 0\noutput = 0\n')
    for how in (("--prices", str(prices)), ("--price-as", "gpt-4o-mini"), ("--hosted-prices",)):
        priced = invoke("submit", str(job), "--new", *common, *how)
        assert priced.exit_code == 0 and "no price known" not in priced.stderr, how
    jobs = status_json(db_url)["jobs"]
    assert [j["options"]["hosted_prices"] for j in jobs] == [False, False, False, True]
    assert jobs[0]["cost_usd"] is None and jobs[0]["unpriced_models"] == ["gpt-oss-20b"]
    assert "--hosted-prices" in jobs[0]["unpriced_reasons"]["gpt-oss-20b"]
    assert jobs[1]["cost_usd"] == 0
    assert jobs[2]["cost_usd"] > 0 and jobs[3]["cost_usd"] > 0
    assert jobs[2]["cost_usd"] != pytest.approx(jobs[3]["cost_usd"])  # 4o-mini's rates, not 20b's


def test_which_base_urls_are_a_local_servers() -> None:
    from batchrunner.network import serves_locally
    from batchrunner.providers import hosted_prices
    from batchrunner.settings import RunSettings

    local = [
        "http://127.0.0.1:8000/v1", "http://localhost:11434/v1", "http://[::1]:8080/v1",
        "http://vllm:8000/v1", "http://192.168.1.20:1234/v1", "http://10.0.0.7/v1",
        "http://[fd00::7]/v1", "http://gpu-box.local:8000/v1", "http://host.docker.internal:4000",
    ]  # fmt: skip
    local += [
        "http://100.101.102.103:8000/v1", "http://gpu.tail1234.ts.net/v1",
        "http://vllm.default.svc:8000/v1", "http://[::ffff:10.1.2.3]:8000/v1",
    ]  # fmt: skip
    hosted = ["https://api.openai.com/v1", "https://openrouter.ai/api/v1", "http://8.8.8.8/v1"]
    assert [serves_locally(url) for url in local] == [True] * len(local)
    assert [serves_locally(url) for url in hosted] == [False] * len(hosted)
    assert hosted_prices(RunSettings(base_url=local[0])) is False
    assert hosted_prices(RunSettings(base_url=local[0]), simulated=True) is True  # the fake
    assert hosted_prices(RunSettings(base_url=hosted[0])) is True
    assert hosted_prices(RunSettings(base_url=hosted[1], hosted_prices=False)) is False
    assert hosted_prices(RunSettings(azure_endpoint="https://r.openai.azure.com")) is True
    for broken in ("http:///v1", "http://bad[host/v1", "http://user:hunter22@[/v1"):
        with pytest.raises(UsageError) as refused:
            serves_locally(broken)
        assert "hunter22" not in str(refused.value)


def test_a_runs_pricing_choice_is_kept_with_the_job(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """One job, one price: `run --hosted-prices` (or --prices, --price-as, --budget) on a job
    recorded without it holds for its later runs and its status too."""
    job = write_jsonl(tmp_path / "local.jsonl", [chat_line(i) for i in range(6)])
    common = ("--db", db_url, "--base-url", fake.base_url)
    assert invoke("submit", str(job), *common, "--detach").exit_code == 0
    assert status_json(db_url)["jobs"][0]["options"]["hosted_prices"] is False
    first = invoke("run", *common, "--hosted-prices", "--budget", "5")
    assert first.exit_code == 0, first.stderr
    (status,) = status_json(db_url)["jobs"]
    assert status["options"]["hosted_prices"] is True and status["budget_usd"] == 5
    assert status["cost_usd"] > 0 and status["unpriced_models"] == []


def test_a_name_priced_as_an_unknown_model_says_so(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "alias.jsonl", [chat_line(0, model="prod-a")])
    common = ("--db", db_url, "--base-url", fake.base_url)
    result = invoke("submit", str(job), *common, "--price-as", "prod-a=gpt-9-imaginary")
    assert result.exit_code == 0, result.stderr
    (status,) = status_json(db_url)["jobs"]
    assert status["unpriced_reasons"] == {
        "prod-a": "--price-as gpt-9-imaginary, which has no price: no price known"
    }


def test_image_models_are_unpriced_by_the_library_and_say_why() -> None:
    """gpt-image models' image tokens have rates of their own (gpt-image-1.5: $32/M out for
    images, $10/M for text); usage does not split them, so one rate would misprice them."""
    from batchrunner.pricing import IMAGE_TOKENS, rates_for, unpriced_reason

    for model in ("gpt-image-1", "gpt-image-1.5", "gpt-image-1-mini"):
        assert rates_for(model) is None
        assert unpriced_reason(model) == IMAGE_TOKENS
    assert rates_for("gpt-4o") is not None  # a chat model that reads images keeps its price
