"""Usage is read alike from chat, responses and embeddings bodies; costs are shown alike."""

from __future__ import annotations

from batchrunner.dialects.openai import read_finish_reason, read_usage
from batchrunner.usage import Usage, format_usd


def test_chat_usage_with_cached_and_reasoning_tokens() -> None:
    body = {
        "choices": [{"finish_reason": "length"}],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 200},
        },
    }
    assert read_usage(body) == Usage(1200, 1024, 300, 200)
    assert read_finish_reason(body) == "length"


def test_responses_usage_and_incomplete_reason() -> None:
    body = {
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 20,
            "output_tokens_details": {"reasoning_tokens": 5},
        },
    }
    assert read_usage(body) == Usage(50, 0, 20, 5)
    assert read_finish_reason(body) == "length"


def test_embeddings_usage_has_no_output() -> None:
    body = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert read_usage(body) == Usage(8, 0, 0, 0)
    assert read_finish_reason(body) is None


def test_missing_or_odd_usage_gives_nothing() -> None:
    assert read_usage({}) == Usage()
    assert read_usage({"usage": "n/a"}) == Usage()


def test_costs_show_cents_when_large_and_two_significant_digits_when_tiny() -> None:
    assert format_usd(None) == "unknown"
    assert format_usd(0.0) == "$0.00"
    assert format_usd(1234.567) == "$1,234.57"
    assert format_usd(0.0023) == "$0.0023"
    assert format_usd(0.0000123) == "$0.000012"
