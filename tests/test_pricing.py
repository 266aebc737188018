"""Costs from usage with genai-prices' real bundled data, price files and the batch rules."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from batchrunner.errors import UsageError
from batchrunner.pricing import load_price_file, loose_match, price_item, rates_for
from batchrunner.usage import Usage

AFTER = datetime(2026, 11, 1, tzinfo=UTC)  # genai-prices' OpenAI batch rates start 2026-10-14
BEFORE = datetime(2026, 6, 1, tzinfo=UTC)
MILLION = 1_000_000


def _rates(model: str, batch: bool, when: datetime = AFTER) -> tuple[float, float, float]:
    rates = rates_for(model, batch=batch, when=when)
    assert rates is not None
    return rates.input.base, rates.cached_input.base, rates.output.base


@pytest.mark.parametrize(
    ("model", "standard", "batch"),
    [  # USD per 1M: input, cached input, output; as OpenAI's pricing page lists them
        ("gpt-4o-mini", (0.15, 0.075, 0.6), (0.075, 0.075, 0.3)),
        ("gpt-4o", (2.5, 1.25, 10.0), (1.25, 1.25, 5.0)),
        ("gpt-4.1", (2.0, 0.5, 8.0), (1.0, 0.5, 4.0)),
        ("gpt-4.1-mini", (0.4, 0.1, 1.6), (0.2, 0.1, 0.8)),
        ("gpt-4.1-nano", (0.1, 0.025, 0.4), (0.05, 0.025, 0.2)),
        ("o4-mini", (1.1, 0.275, 4.4), (0.55, 0.275, 2.2)),
        ("gpt-5-mini", (0.25, 0.025, 2.0), (0.125, 0.0125, 1.0)),
        ("text-embedding-3-small", (0.02, 0.02, 0.0), (0.01, 0.01, 0.0)),  # our correction
        ("gpt-4o-mini-2024-07-18", (0.15, 0.075, 0.6), (0.075, 0.075, 0.3)),
    ],
)
def test_known_rates(
    model: str, standard: tuple[float, float, float], batch: tuple[float, float, float]
) -> None:
    assert _rates(model, batch=False) == pytest.approx(standard)
    assert _rates(model, batch=True) == pytest.approx(batch)
    rates = rates_for(model, batch=True, when=AFTER)
    assert rates is not None and not rates.batch_discount_assumed


def test_cached_tokens_are_part_of_input_and_reasoning_is_part_of_output() -> None:
    usage = Usage(input_tokens=MILLION, cached_tokens=200_000, output_tokens=500_000)
    cost = price_item("gpt-4o-mini", usage, when=AFTER)
    assert cost is not None
    assert cost.input_usd == pytest.approx(0.8 * 0.15)
    assert cost.cached_input_usd == pytest.approx(0.2 * 0.075)
    assert cost.output_usd == pytest.approx(0.5 * 0.6)
    assert cost.usd == pytest.approx(0.435)
    with_reasoning = Usage(MILLION, 200_000, 500_000, reasoning_tokens=400_000)
    again = price_item("gpt-4o-mini", with_reasoning, when=AFTER)
    assert again is not None and again.usd == pytest.approx(0.435)


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("gpt-4o-mini", Usage(12_345, 4_096, 678)),
        ("gpt-4.1", Usage(50_000, 0, 2_000)),
        ("o3", Usage(10_000, 9_000, 30_000)),
        ("gpt-5.4", Usage(300_000, 100_000, 1_000)),  # above the 272k input tier
        ("gpt-5.4", Usage(100_000, 10_000, 1_000)),
        ("text-embedding-3-large", Usage(8_000, 0, 0)),
    ],
)
def test_standard_cost_equals_genai_prices_own_calculation(model: str, usage: Usage) -> None:
    ours = price_item(model, usage, when=AFTER)
    theirs = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
        ),
        model,
        provider_id="openai",
        genai_request_timestamp=AFTER,
    )
    assert ours is not None
    assert ours.usd == pytest.approx(float(theirs.total_price), rel=1e-9)


def test_unknown_model_or_usage_is_none_never_zero() -> None:
    assert price_item("no-such-model-xyz", Usage(100, 0, 10)) is None
    assert rates_for("no-such-model-xyz") is None
    assert price_item("gpt-4o-mini", Usage()) is None


def test_batch_before_the_librarys_batch_rates_uses_an_explicit_discount() -> None:
    """genai-prices quietly answers a batch question with the standard price before its batch
    rates start; here the 50% discount is applied and flagged instead."""
    quiet = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=MILLION, output_tokens=MILLION),
        "gpt-4o-mini",
        provider_id="openai",
        genai_request_timestamp=BEFORE,
        price_context={"processing": "batch"},
    )
    assert quiet.total_price == Decimal("0.75")  # the standard price
    cost = price_item("gpt-4o-mini", Usage(MILLION, 0, MILLION), batch=True, when=BEFORE)
    assert cost is not None
    assert cost.usd == pytest.approx(0.375)
    assert cost.batch_discount_assumed
    standard = price_item("gpt-4o-mini", Usage(MILLION, 0, MILLION), when=BEFORE)
    assert standard is not None and not standard.batch_discount_assumed


def test_batch_for_a_model_without_batch_rates_is_discounted_and_flagged() -> None:
    assert _rates("text-embedding-ada-002", batch=False) == pytest.approx((0.1, 0.1, 0.0))
    assert _rates("text-embedding-ada-002", batch=True) == pytest.approx((0.05, 0.05, 0.0))
    rates = rates_for("text-embedding-ada-002", batch=True, when=AFTER)
    assert rates is not None and rates.batch_discount_assumed
    # the cached rate is kept, but never above the discounted input rate
    assert _rates("gpt-4o-mini", batch=True, when=BEFORE) == pytest.approx((0.075, 0.075, 0.3))


def test_prices_follow_the_request_date() -> None:
    assert _rates("o3", batch=False, when=datetime(2025, 6, 1, tzinfo=UTC)) == (10.0, 0.5, 40.0)
    assert _rates("o3", batch=False, when=datetime(2025, 6, 11, tzinfo=UTC)) == (2.0, 0.5, 8.0)


def test_time_of_day_prices_are_not_cached_per_day() -> None:
    day = datetime(2026, 11, 1, 10, tzinfo=UTC)
    night = datetime(2026, 11, 1, 18, tzinfo=UTC)  # DeepSeek's off-peak hours
    assert _rates("deepseek-chat", batch=False, when=day) == (0.27, 0.07, 1.1)
    assert _rates("deepseek-chat", batch=False, when=night) == (0.135, 0.035, 0.55)


def test_pricing_an_item_is_cached_and_fast() -> None:
    usage = Usage(1_234, 512, 321)
    start = time.perf_counter()
    for _ in range(20_000):
        price_item("gpt-4o-mini", usage, batch=True)
    assert time.perf_counter() - start < 1.0  # genai-prices alone: ~0.1 ms a call


TOML_PRICES = """
# my negotiated rates
["gpt-4o-mini"]
input = 1
cached_input = 0.5
output = 2

["my-local-model"]
input = 0.0
output = 0.0

["gpt-4o"]
input = 2
output = 8
batch_input = 0.5
batch_output = 3
"""


def test_price_file_overrides_the_library(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(TOML_PRICES)
    table = load_price_file(path)
    usage = Usage(MILLION, 200_000, MILLION)
    cost = price_item("gpt-4o-mini", usage, overrides=table)
    assert cost is not None
    assert cost.usd == pytest.approx(0.8 * 1 + 0.2 * 0.5 + 2)
    assert cost.source == str(path)
    dated = price_item("GPT-4o-mini-2024-07-18", usage, overrides=table)
    assert dated is not None and dated.usd == pytest.approx(cost.usd)
    local = price_item("my-local-model", usage, overrides=table)
    assert local is not None and local.usd == 0.0  # a known price of zero is fine
    # no batch rates in the file: the discount is assumed and said
    batch = price_item("gpt-4o-mini", usage, batch=True, overrides=table)
    assert batch is not None and batch.batch_discount_assumed
    assert batch.usd == pytest.approx(0.8 * 0.5 + 0.2 * 0.5 + 1)
    # given batch rates are used; the cached batch rate defaults to min(cached, batch input)
    given = price_item("gpt-4o", usage, batch=True, overrides=table)
    assert given is not None and not given.batch_discount_assumed
    assert given.usd == pytest.approx(0.8 * 0.5 + 0.2 * 0.5 + 3)
    # models not in the file still come from the library
    other = price_item("gpt-4.1-mini", usage, overrides=table, when=AFTER)
    assert other is not None and other.source.startswith("genai-prices")


def test_json_and_toml_price_files_read_alike(tmp_path: Path) -> None:
    toml_path = tmp_path / "prices.toml"
    toml_path.write_text(TOML_PRICES)
    entries = {
        "gpt-4o-mini": {"input": 1, "cached_input": 0.5, "output": 2},
        "my-local-model": {"input": 0.0, "output": 0.0},
        "gpt-4o": {"input": 2, "output": 8, "batch_input": 0.5, "batch_output": 3},
    }
    json_path = tmp_path / "prices.json"
    json_path.write_text(json.dumps(entries))
    no_suffix = tmp_path / "prices"
    no_suffix.write_text(json.dumps(entries))
    expected = load_price_file(toml_path).entries
    assert load_price_file(json_path).entries == expected
    assert load_price_file(no_suffix).entries == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.toml", "[gpt-4o\ninput = 1", "invalid TOML"),
        (
            "p.toml",
            "[gpt-4.1-mini]\ninput = 1\noutput = 2",
            'quote names with dots: ["gpt-4.1-mini"]',
        ),
        ("p.json", '{"gpt-4o": {"input": 1,}}', "invalid JSON"),
        ("p.json", "[1, 2]", "expected one entry per model"),
        ("p.json", "{}", "expected one entry per model"),
        ("p.json", '{"gpt-4o": 3}', 'model "gpt-4o": expected a table of prices, got a number'),
        ("p.json", '{"gpt-4o": {"input": 1, "output": 2, "inptu": 3}}', 'unknown key "inptu"'),
        ("p.json", '{"gpt-4o": {"input": 1}}', 'missing "output"'),
        ("p.json", '{"gpt-4o": {"input": -1, "output": 2}}', '"input" must be a number >= 0'),
        ("p.json", '{"gpt-4o": {"input": "1", "output": 2}}', "got a string"),
        ("p.json", '{"gpt-4o": {"input": true, "output": 2}}', "got a boolean"),
        (
            "p.json",
            '{"gpt-4o": {"input": 1, "output": 2, "batch_input": 0.5}}',
            '"batch_input" and "batch_output", or neither',
        ),
        (
            "p.json",
            '{"gpt-4o": {"input": 1, "output": 2, "batch_cached_input": 0.1}}',
            '"batch_cached_input" needs',
        ),
    ],
)
def test_bad_price_files_say_which_file_and_what(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError) as caught:
        load_price_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_missing_or_binary_price_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such price file"):
        load_price_file(tmp_path / "nope.toml")
    binary = tmp_path / "p.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not a UTF-8 text file"):
        load_price_file(binary)


@pytest.mark.parametrize(
    ("model", "priced", "loose"),
    [
        ("gpt-4o-mini", True, None),
        ("gpt-4o-2024-08-06", True, None),  # a dated name the table spells out
        ("claude-3-5-sonnet-20241022", True, None),  # a prefix and a date
        ("claude-3-5-sonnet-latest", True, None),  # a prefix and a channel
        ("gpt-5-nano-2025-08-07", True, None),  # a prefix ending in "-", then a date
        ("claude-sonnet-4-20250514", True, None),  # a prefix ending inside a date
        ("gemini-2.0-flash", True, None),  # an ends-with clause that is the whole name
        ("gemini-1.5-pro-002", True, None),  # a contains clause, then a version
        ("gpt-4o-realtime-preview-2024-12-17", True, None),  # a channel, then a date
        ("ft:gpt-4o-mini-2024-07-18:my-org::abc123", True, None),  # a fine-tune of a base
        ("ft:gpt-3.5-turbo-0125:org:suffix:id", True, None),
        ("gemini-2.5-pro-preview-05-06", True, None),  # a channel, then a month and a day
        ("google/gemini-2.0-flash-001", True, None),  # Vertex's name: its provider, then it
        ("openrouter/gemini-2.0-flash-001", False, "google's gemini-2.0-flash"),  # not its prefix
        ("gpt-5-nano-custom", False, "openai's gpt-5-nano"),  # a prefix and a word
        ("gemini-1.5-pro-tuned", False, "google's gemini-1.5-pro"),
        ("deepseek-r1:7b", False, "deepseek's deepseek-reasoner"),  # a prefix and more
        ("deepseek-r1-distill-qwen-7b", False, "deepseek's deepseek-reasoner"),
        ("llama3.2", False, None),  # unknown altogether
    ],
)
def test_only_a_models_own_name_takes_the_librarys_price(
    model: str, priced: bool, loose: str | None
) -> None:
    assert (rates_for(model) is not None) == priced
    assert loose_match(model) == loose


@pytest.mark.parametrize(
    "model",
    [
        "chatgpt-4o-latest",
        "gpt-4o-audio-preview",
        "gpt-audio",
        "gpt-4o-search-preview",
        "gpt-4o-mini-tts",
        "gpt-4o-realtime-preview-2024-12-17",
    ],
)
def test_a_model_the_batch_api_does_not_take_has_no_assumed_batch_price(
    model: str, tmp_path: Path
) -> None:
    """No Batch API, so no batch rate: never the standard price less an assumed 50%."""
    usage = Usage(MILLION, 0, MILLION)
    assert rates_for(model, batch=True, when=AFTER) is None
    assert price_item(model, usage, batch=True, when=AFTER) is None
    path = tmp_path / "prices.toml"
    path.write_text(f'["{model}"]\ninput = 1.0\noutput = 2.0\n')
    assert price_item(model, usage, overrides=load_price_file(path)) is not None
    assert price_item(model, usage, batch=True, overrides=load_price_file(path)) is None
    path.write_text(f'["{model}"]\ninput = 1\noutput = 2\nbatch_input = 0.7\nbatch_output = 1.4\n')
    given = price_item(model, usage, batch=True, overrides=load_price_file(path))
    assert given is not None and given.usd == pytest.approx(2.1)  # a price file's word stands


def test_models_the_batch_api_takes_keep_their_batch_price() -> None:
    for model in ("gpt-4o", "gpt-4o-mini-2024-07-18", "text-embedding-ada-002", "gpt-4.1-nano"):
        assert rates_for(model, batch=True, when=AFTER) is not None, model
