"""What a request may use: its prompt tokens counted offline with the model's real encoding,
and its output allowance (`max_tokens` and kin) or, when it sets none, the average output seen
so far in this run. The tokens/min limit and the budget both reserve from this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchrunner.ledger import ClaimedItem
from batchrunner.tokens import output_allowance, prompt_tokens

FIRST_OUTPUT_GUESS = 256  # until the first answers say what outputs really are


@dataclass(frozen=True, slots=True)
class RequestTokens:
    prompt: int
    allowance: int | None  # the cap the request states, if any
    expected_output: int

    @property
    def total(self) -> int:
        return self.prompt + self.expected_output

    @property
    def guessed(self) -> bool:
        """A stated allowance is what the server counts against the limit whatever the
        answer's length; only a guessed output is worth reconciling with the usage."""
        return self.allowance is None and self.expected_output > 0


class TokenEstimator:
    def __init__(self) -> None:
        self._output_total = 0
        self._outputs_seen = 0

    def average_output(self) -> int:
        if not self._outputs_seen:
            return FIRST_OUTPUT_GUESS
        return round(self._output_total / self._outputs_seen)

    def observe_output(self, output_tokens: int) -> None:
        self._output_total += output_tokens
        self._outputs_seen += 1

    def estimate(self, item: ClaimedItem) -> RequestTokens:
        body: dict[str, Any] = orjson.loads(item.body)
        prompt = prompt_tokens(item.url, body)
        allowance = output_allowance(body)
        if allowance is not None:
            return RequestTokens(prompt, allowance, allowance)
        if item.url.endswith("/embeddings"):
            return RequestTokens(prompt, 0, 0)
        return RequestTokens(prompt, None, self.average_output())
