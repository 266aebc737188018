"""How pending items are cut into Batch API input files (pure: tested as a table).

One endpoint and one model per file (the API requires it), and no file over the request count,
the byte size, the embeddings inputs (the dialect's limits) or the enqueued-token cap; the
caller holds a file back while the model's unfinished batches would push it over that cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PlanLimits:
    max_requests: int
    max_bytes: int
    max_tokens: int | None = None  # the account's enqueued-token cap for one model
    max_inputs: int | None = None  # inputs the API counts across a file (embeddings)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pending item as the planner sees it."""

    item_id: int
    url: str
    model: str
    line_bytes: int
    prompt_tokens: int
    worst_usd: float = 0.0  # its worst-case cost, when a budget bounds the job
    inputs: int = 0  # what it counts against max_inputs (an embeddings request's inputs)


@dataclass(slots=True)
class PlannedFile:
    url: str
    model: str
    item_ids: list[int] = field(default_factory=list)
    size: int = 0
    tokens: int = 0
    worst_usd: float = 0.0
    inputs: int = 0

    def fits(self, candidate: Candidate, limits: PlanLimits) -> bool:
        if not self.item_ids:
            return True  # a single item always gets a file, even an oversized one
        if len(self.item_ids) >= limits.max_requests:
            return False
        if self.size + candidate.line_bytes > limits.max_bytes:
            return False
        if limits.max_inputs is not None and self.inputs + candidate.inputs > limits.max_inputs:
            return False
        cap = limits.max_tokens
        return cap is None or self.tokens + candidate.prompt_tokens <= cap

    def add(self, candidate: Candidate) -> None:
        self.item_ids.append(candidate.item_id)
        self.size += candidate.line_bytes
        self.tokens += candidate.prompt_tokens
        self.worst_usd += candidate.worst_usd
        self.inputs += candidate.inputs


def plan_files(candidates: Iterable[Candidate], limits: PlanLimits) -> Iterator[PlannedFile]:
    """Files in the order their first item comes, each filled before the next one of its kind.

    Holds at most one open file per (endpoint, model), so memory stays bounded by the file limits.
    """
    open_files: dict[tuple[str, str], PlannedFile] = {}
    for candidate in candidates:
        key = (candidate.url, candidate.model)
        current = open_files.get(key)
        if current is not None and not current.fits(candidate, limits):
            yield open_files.pop(key)
            current = None
        if current is None:
            current = open_files[key] = PlannedFile(candidate.url, candidate.model)
        current.add(candidate)
    yield from open_files.values()


def within_token_cap(enqueued: int, planned: PlannedFile, limits: PlanLimits) -> bool:
    """Whether a file may go now, given the tokens the model's unfinished batches hold."""
    cap = limits.max_tokens
    return cap is None or enqueued == 0 or enqueued + planned.tokens <= cap
