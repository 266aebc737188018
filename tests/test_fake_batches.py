"""The fake Files and Batch API, driven by the real `openai` SDK."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import Batch

from batchrunner.fake import FakeConfig, FakeServer, run_in_thread
from tests.conftest import chat_line

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_in_thread(FakeConfig(seed=3)) as running:
        yield running


@pytest.fixture
def api(server: FakeServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-x", base_url=server.base_url, max_retries=0, timeout=10)


def start(api: openai.OpenAI, lines: list[dict[str, Any]], **metadata: str) -> Batch:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = api.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    return api.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    )


def wait(api: openai.OpenAI, batch: Batch) -> tuple[Batch, list[str]]:
    seen = [batch.status]
    deadline = time.monotonic() + 10
    while batch.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.02)
        batch = api.batches.retrieve(batch.id)
        if batch.status != seen[-1]:
            seen.append(batch.status)
    return batch, seen


def lines_of(api: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = api.files.content(file_id).text
    records = [json.loads(line) for line in text.splitlines()]
    return {r["custom_id"]: r for r in records}


def test_a_batch_runs_through_its_states_and_answers_every_line(
    api: openai.OpenAI, server: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(20)] + [chat_line(20, "[fake:400] broken")]
    batch, seen = wait(api, start(api, lines, job="7"))
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (21, 20)
    assert batch.request_counts.failed == 1
    outputs = lines_of(api, batch.output_file_id)
    assert set(outputs) == {f"item-{i}" for i in range(20)}
    body = outputs["item-3"]["response"]["body"]
    assert outputs["item-3"]["response"]["status_code"] == 200
    assert body["choices"][0]["message"]["content"] == "echo: question number 3"
    failed = lines_of(api, batch.error_file_id)["item-20"]
    assert failed["response"]["status_code"] == 400 and failed["error"] is None
    assert server.batch_api.lines_by_id["item-3"] == 1


def test_validation_failures_name_their_lines(api: openai.OpenAI) -> None:
    lines = [chat_line(0), chat_line(1, "[fake:batch_invalid]"), chat_line(2)]
    batch, seen = wait(api, start(api, lines))
    assert seen[-1] == "failed" and batch.errors is not None and batch.errors.data
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_request", 2)]
    assert batch.output_file_id is None


def test_the_enqueued_token_limit_fails_the_batch_after_create(
    api: openai.OpenAI, server: FakeServer
) -> None:
    server.config.batch_token_limit = 100
    first = start(api, [chat_line(i) for i in range(5)])  # about 55 tokens
    second = start(api, [chat_line(i) for i in range(5, 10)])
    assert second.status == "validating"  # create does not raise
    second, _ = wait(api, second)
    assert second.status == "failed" and second.errors is not None and second.errors.data
    assert second.errors.data[0].code == "token_limit_exceeded"
    assert wait(api, first)[0].status == "completed"


def test_expiry_and_omitted_lines(api: openai.OpenAI, server: FakeServer) -> None:
    server.config.batch_expire_after = 3
    lines = [chat_line(i) for i in range(6)]
    lines[1] = chat_line(1, "[fake:batch_omit]")
    batch, _ = wait(api, start(api, lines))
    assert batch.status == "expired"
    assert set(lines_of(api, batch.output_file_id)) == {"item-0", "item-2"}
    expired = lines_of(api, batch.error_file_id)
    assert set(expired) == {"item-3", "item-4", "item-5"}
    assert {r["error"]["code"] for r in expired.values()} == {"batch_expired"}


def test_cancel_and_list_by_metadata(api: openai.OpenAI, server: FakeServer) -> None:
    server.config.batch_in_progress_s = 5.0
    batch = start(api, [chat_line(i) for i in range(10)], job="42")
    assert api.batches.cancel(batch.id).status in ("validating", "cancelling")
    batch, seen = wait(api, batch)
    assert seen[-1] == "cancelled"
    assert {r["error"]["code"] for r in lines_of(api, batch.error_file_id).values()} == {
        "batch_cancelled"
    }
    start(api, [chat_line(0)], job="43")
    listed = [b for b in api.batches.list(limit=1) if b.metadata and b.metadata.get("job") == "42"]
    assert [b.id for b in listed] == [batch.id]  # the SDK pages through every batch
