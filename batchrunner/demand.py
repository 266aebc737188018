"""How many tokens a request will take: one rule for everyone who needs to know before it is
sent (pure, apart from the token counting).

A request's demand is its prompt, counted offline with the model's encoding (tokens.py), and
its output cap (`max_tokens` and kin; embeddings have no output; images none that a request
caps) times the answers it asks for (chat's `n`; a completion's prompts times `n` or
`best_of`; images' `n`). A completion that sets no cap is uncapped here, though OpenAI stops it
at 16 tokens: local servers do not. From these:

| who                          | counts                                                      |
|------------------------------|-------------------------------------------------------------|
| tokens/min throttle          | `expected(typical)`: the cap, else the run's typical output |
|                              | (the average of its answers so far, TYPICAL_OUTPUT before)  |
| `estimate` and submit's line | `expected(typical)`: the cap, else `--assume-output`, else  |
|                              | TYPICAL_OUTPUT                                              |
| budget (both modes)          | `worst_output`: the cap, else WORST_CASE_OUTPUT, priced     |
| batch planner                | `prompt`, against the account's enqueued-token cap          |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchrunner.dialects.openai import answers_asked, draws_images, output_cap, writes_text
from batchrunner.tokens import prompt_tokens

TYPICAL_OUTPUT = 256  # output tokens assumed for a request with no cap, until answers say
WORST_CASE_OUTPUT = 16_384  # output tokens a request with no cap could take, for the budget


@dataclass(frozen=True, slots=True)
class TokenDemand:
    prompt: int
    cap: int | None  # the output cap of one answer; 0 where the answer is not text
    answers: int = 1  # answers asked for, each up to the cap (chat's n; prompts x n, best_of)

    @property
    def capped(self) -> bool:
        """A stated cap is what the server counts against a limit, whatever the answer's
        length; only an uncapped request's output is a guess worth reconciling."""
        return self.cap is not None

    def output(self, typical: int = TYPICAL_OUTPUT) -> int:
        """`typical` is one answer's output, as TypicalOutput learns it."""
        return (self.cap if self.cap is not None else typical) * self.answers

    def expected(self, typical: int = TYPICAL_OUTPUT) -> int:
        return self.prompt + self.output(typical)

    @property
    def worst_output(self) -> int:
        return (self.cap if self.cap is not None else WORST_CASE_OUTPUT) * self.answers


def token_demand(url: str, body: Mapping[str, Any]) -> TokenDemand:
    prompt = prompt_tokens(url, body)
    if writes_text(url):
        return TokenDemand(prompt, output_cap(body), answers_asked(url, body))
    if draws_images(url):  # image tokens out, as many as the size and quality take: no cap
        return TokenDemand(prompt, None, answers_asked(url, body))
    return TokenDemand(prompt, 0)  # vectors, moderation scores, a video job


class TypicalOutput:
    """The average output of a run's answers so far: what an uncapped answer is expected to
    take, TYPICAL_OUTPUT until the first one."""

    def __init__(self) -> None:
        self._total = 0
        self._seen = 0

    @property
    def tokens(self) -> int:
        return round(self._total / self._seen) if self._seen else TYPICAL_OUTPUT

    def observe(self, output_tokens: int, answers: int = 1) -> None:
        """One request's output, `answers` answers in all."""
        self._total += output_tokens
        self._seen += answers
