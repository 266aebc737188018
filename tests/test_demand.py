"""The one token-demand rule, as a table: what each kind of request asks of a limit."""

from __future__ import annotations

from typing import Any

import pytest

from batchrunner.demand import TYPICAL_OUTPUT, WORST_CASE_OUTPUT, TypicalOutput, token_demand
from batchrunner.dialects.openai import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGE_GENERATIONS,
    RESPONSES,
)
from batchrunner.tokens import prompt_tokens

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.mark.parametrize(
    ("url", "extra", "cap", "expected_output", "worst_output"),
    [
        (CHAT, {}, None, TYPICAL_OUTPUT, WORST_CASE_OUTPUT),
        (CHAT, {"max_tokens": 50}, 50, 50, 50),
        (CHAT, {"max_completion_tokens": 70, "max_tokens": 50}, 70, 70, 70),
        (CHAT, {"max_tokens": 0}, 0, 0, 0),
        (CHAT, {"max_tokens": True}, None, TYPICAL_OUTPUT, WORST_CASE_OUTPUT),
        (RESPONSES, {"max_output_tokens": 30}, 30, 30, 30),
        (RESPONSES, {}, None, TYPICAL_OUTPUT, WORST_CASE_OUTPUT),
        (EMBEDDINGS, {}, 0, 0, 0),
    ],
)
def test_demand_table(
    url: str, extra: dict[str, Any], cap: int | None, expected_output: int, worst_output: int
) -> None:
    body: dict[str, Any] = {"model": "gpt-4o-mini", **extra}
    body.update({"input": "Why is the sky blue?"} if url != CHAT else {"messages": MESSAGES})
    demand = token_demand(url, body)
    assert demand.prompt == prompt_tokens(url, body) > 0
    assert demand.cap == cap and demand.capped == (cap is not None)
    assert demand.output() == expected_output
    assert demand.expected() == demand.prompt + expected_output
    assert demand.worst_output == worst_output


def test_an_uncapped_request_expects_what_the_run_has_seen() -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    typical = TypicalOutput()
    assert typical.tokens == TYPICAL_OUTPUT
    for tokens in (100, 200, 301):
        typical.observe(tokens)
    assert typical.tokens == 200
    demand = token_demand(CHAT, body)
    assert demand.expected(typical.tokens) == demand.prompt + 200
    capped = token_demand(CHAT, {**body, "max_tokens": 9})
    assert capped.expected(typical.tokens) == capped.prompt + 9  # a cap is a cap


@pytest.mark.parametrize(
    ("url", "extra", "answers", "expected_output", "worst_output"),
    [
        # no cap: OpenAI would stop at 16, a local server at its own length: uncapped here
        (COMPLETIONS, {"prompt": "Once upon"}, 1, TYPICAL_OUTPUT, WORST_CASE_OUTPUT),
        (COMPLETIONS, {"prompt": "Once upon", "max_tokens": 40}, 1, 40, 40),
        (COMPLETIONS, {"prompt": ["a", "b", "c"], "max_tokens": 10}, 3, 30, 30),  # per prompt
        (COMPLETIONS, {"prompt": [1, 2, 3], "max_tokens": 10}, 1, 10, 10),  # one token array
        (COMPLETIONS, {"prompt": [[1, 2], [3]], "n": 2, "max_tokens": 16}, 4, 64, 64),
        (COMPLETIONS, {"prompt": "x", "n": 2, "best_of": 5, "max_tokens": 10}, 5, 50, 50),
        (CHAT, {"messages": MESSAGES, "n": 3, "max_tokens": 20}, 3, 60, 60),
        (CHAT, {"messages": MESSAGES, "n": 3}, 3, 3 * TYPICAL_OUTPUT, 3 * WORST_CASE_OUTPUT),
        (CHAT, {"messages": MESSAGES, "n": 0, "max_tokens": 20}, 1, 20, 20),  # nonsense: 1
        (RESPONSES, {"input": "hi", "n": 3, "max_output_tokens": 20}, 1, 20, 20),  # no n there
        # image tokens out, as many as size and quality take: never 0, never capped
        (
            IMAGE_GENERATIONS,
            {"prompt": "a cat", "n": 2},
            2,
            2 * TYPICAL_OUTPUT,
            2 * WORST_CASE_OUTPUT,
        ),
        (IMAGE_EDITS, {"prompt": "a hat", "image": "file-1"}, 1, TYPICAL_OUTPUT, WORST_CASE_OUTPUT),
    ],
)
def test_every_answer_asked_for_counts(
    url: str, extra: dict[str, Any], answers: int, expected_output: int, worst_output: int
) -> None:
    demand = token_demand(url, {"model": "gpt-3.5-turbo-instruct", **extra})
    assert demand.answers == answers
    assert demand.output() == expected_output and demand.worst_output == worst_output


def test_the_typical_answer_is_learned_per_answer_not_per_request() -> None:
    typical = TypicalOutput()
    typical.observe(300, answers=3)  # one request of n=3, 100 tokens each
    typical.observe(100)
    assert typical.tokens == 100
    demand = token_demand(CHAT, {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 2})
    assert demand.output(typical.tokens) == 200
