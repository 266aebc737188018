"""How pending items are cut into Batch API files, as a table: every limit closes a file."""

from __future__ import annotations

import pytest

from batchrunner.runner.batch_plan import Candidate, PlanLimits, plan_files, within_token_cap

LIMITS = PlanLimits(max_requests=3, max_bytes=1_000, max_tokens=100, max_inputs=10)
CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"


def chat(item_id: int, size: int = 10, tokens: int = 10, model: str = "m") -> Candidate:
    return Candidate(item_id, CHAT, model, size, tokens)


def embeddings(item_id: int, inputs: int) -> Candidate:
    return Candidate(item_id, EMBEDDINGS, "e", 10, 1, inputs=inputs)


@pytest.mark.parametrize(
    ("candidates", "files"),
    [
        ([chat(i) for i in range(7)], [[0, 1, 2], [3, 4, 5], [6]]),  # requests per file
        ([chat(i, size=400) for i in range(4)], [[0, 1], [2, 3]]),  # bytes
        ([chat(i, tokens=45) for i in range(5)], [[0, 1], [2, 3], [4]]),  # enqueued tokens
        ([embeddings(i, 4) for i in range(5)], [[0, 1], [2, 3], [4]]),  # embeddings inputs
        ([chat(0, model="a"), chat(1, model="b"), chat(2, model="a")], [[0, 2], [1]]),
        ([chat(0), embeddings(1, 3), chat(2)], [[0, 2], [1]]),  # one endpoint per file
        ([chat(0, size=5_000), chat(1)], [[0], [1]]),  # an oversized item still gets a file
    ],
)
def test_plan_table(candidates: list[Candidate], files: list[list[int]]) -> None:
    planned = list(plan_files(candidates, LIMITS))
    assert sorted(f.item_ids for f in planned) == sorted(files)
    for file in planned:
        assert len({(c.url, c.model) for c in candidates if c.item_id in file.item_ids}) == 1


def test_a_file_waits_while_the_models_batches_fill_the_token_cap() -> None:
    (file,) = plan_files([chat(0, tokens=60)], LIMITS)
    assert within_token_cap(0, file, LIMITS)  # nothing enqueued: it goes, whatever its size
    assert within_token_cap(40, file, LIMITS)
    assert not within_token_cap(41, file, LIMITS)
    assert within_token_cap(10**9, file, PlanLimits(max_requests=3, max_bytes=1_000))
