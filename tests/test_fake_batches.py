"""The fake Files and Batch API, driven by the real `openai` SDK."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any, Literal

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


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def start(
    api: openai.OpenAI,
    lines: list[dict[str, Any]],
    endpoint: Literal["/v1/chat/completions", "/v1/responses"] = "/v1/chat/completions",
    **metadata: str,
) -> Batch:
    uploaded = api.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return api.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,
        completion_window="24h",
        metadata=metadata or None,
    )


def wait(api: openai.OpenAI, batch: Batch) -> tuple[Batch, list[str]]:
    seen: list[str] = [batch.status]
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


def ids_in_order(api: openai.OpenAI, file_id: str | None) -> list[str]:
    assert file_id is not None
    return [json.loads(line)["custom_id"] for line in api.files.content(file_id).text.splitlines()]


def refused_message(error: openai.BadRequestError) -> str:
    assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
    return str(error.body["message"])


def test_create_refuses_more_lines_than_a_batch_may_hold(
    api: openai.OpenAI, server: FakeServer
) -> None:
    server.batch_api.max_lines = 5  # 50,000 in the real API
    with pytest.raises(openai.BadRequestError) as refused:
        start(api, [chat_line(i) for i in range(6)])
    assert refused_message(refused.value) == (
        "The batch input file has 6 requests, more than the 5 maximum for the gpt-4o-mini "
        "model. Please try again with a smaller batch."
    )
    assert server.batch_api.batches_created == 0 and not server.batch_api.batches
    assert wait(api, start(api, [chat_line(i) for i in range(5)]))[0].status == "completed"


def test_create_refuses_a_file_over_the_size_limit(api: openai.OpenAI, server: FakeServer) -> None:
    lines = [chat_line(i) for i in range(4)]
    size = len(jsonl(lines))
    server.batch_api.max_bytes = size - 1  # 200 MB in the real API
    with pytest.raises(openai.BadRequestError) as refused:
        start(api, lines)
    assert refused_message(refused.value) == (
        f"The batch input file is larger than the {size - 1} maximum for the gpt-4o-mini "
        "model. Please try again with a smaller batch."
    )
    assert server.batch_api.batches_created == 0
    server.batch_api.max_bytes = size
    assert wait(api, start(api, lines))[0].status == "completed"


def test_an_upload_over_the_file_limit_is_refused(api: openai.OpenAI, server: FakeServer) -> None:
    server.batch_api.max_upload_bytes = 100
    with pytest.raises(openai.BadRequestError, match=r"File is too large\."):
        api.files.create(file=("in.jsonl", io.BytesIO(b"x" * 101)), purpose="batch")
    assert not server.batch_api.files
    assert api.files.create(file=("in.jsonl", io.BytesIO(b"x" * 100)), purpose="batch").id


def test_a_duplicate_custom_id_fails_validation_on_its_second_line(api: openai.OpenAI) -> None:
    lines = [chat_line(0), chat_line(1), chat_line(2), chat_line(1, "asked again")]
    batch, seen = wait(api, start(api, lines))
    assert seen == ["validating", "failed"]
    assert batch.errors is not None and batch.errors.data
    assert [(e.code, e.line, e.message) for e in batch.errors.data] == [
        ("invalid_request", 4, "Each custom_id must be a unique string.")
    ]
    assert (batch.output_file_id, batch.error_file_id) == (None, None)


def test_a_line_for_another_endpoint_fails_validation(api: openai.OpenAI) -> None:
    embedding = {
        "custom_id": "item-9",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "hello"},
    }
    batch, seen = wait(api, start(api, [chat_line(0), embedding, chat_line(2)]))
    assert seen[-1] == "failed" and batch.errors is not None and batch.errors.data
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_request", 2)]
    assert "/v1/chat/completions" in (batch.errors.data[0].message or "")


def test_lines_naming_two_models_fail_validation(api: openai.OpenAI, server: FakeServer) -> None:
    lines = [chat_line(0), chat_line(1, model="gpt-4o"), chat_line(2)]
    batch, seen = wait(api, start(api, lines))
    assert seen[-1] == "failed" and batch.errors is not None and batch.errors.data
    assert [(e.code, e.line) for e in batch.errors.data] == [("mixed_models", None)]
    assert not server.batch_api.lines_by_id  # nothing was answered


def test_output_and_error_files_are_shuffled_the_same_way_for_the_same_seed() -> None:
    lines = [chat_line(i) for i in range(40)] + [
        chat_line(i, "[fake:400] refused") for i in range(40, 80)
    ]
    orders = []
    for _ in range(2):
        with run_in_thread(FakeConfig(seed=11)) as server:
            client = openai.OpenAI(api_key="sk-x", base_url=server.base_url, max_retries=0)
            batch, _ = wait(client, start(client, lines))
            assert batch.status == "completed"
            answered = ids_in_order(client, batch.output_file_id)
            failed = ids_in_order(client, batch.error_file_id)
            assert sorted(answered) == sorted(f"item-{i}" for i in range(40))
            assert sorted(failed) == sorted(f"item-{i}" for i in range(40, 80))
            assert answered != [f"item-{i}" for i in range(40)]  # not the input order
            assert failed != [f"item-{i}" for i in range(40, 80)]
            orders.append((answered, failed))
    assert orders[0] == orders[1]  # seeded: a test that fails can be replayed


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/responses"])
def test_a_batch_reports_the_usage_of_its_answered_lines(
    api: openai.OpenAI,
    server: FakeServer,
    endpoint: Literal["/v1/chat/completions", "/v1/responses"],
) -> None:
    server.config.cached_fraction = 0.5
    if endpoint == "/v1/chat/completions":
        lines = [chat_line(i, model="o4-mini") for i in range(10)]
        lines.append(chat_line(10, "[fake:400] not answered", model="o4-mini"))
    else:
        lines = [
            {
                "custom_id": f"item-{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "o4-mini", "input": f"question number {i} " * (i + 1)},
            }
            for i in range(10)
        ]
    created = start(api, lines, endpoint)
    assert created.usage is not None and created.usage.total_tokens == 0  # nothing ran yet
    batch, _ = wait(api, created)
    assert batch.status == "completed" and batch.usage is not None
    bodies = [r["response"]["body"] for r in lines_of(api, batch.output_file_id).values()]
    assert len(bodies) == 10
    usages = [body["usage"] for body in bodies]
    if endpoint == "/v1/chat/completions":
        usages = [
            {
                "input_tokens": u["prompt_tokens"],
                "input_tokens_details": u["prompt_tokens_details"],
                "output_tokens": u["completion_tokens"],
                "output_tokens_details": u["completion_tokens_details"],
                "total_tokens": u["total_tokens"],
            }
            for u in usages
        ]
    expected = {
        "input_tokens": sum(u["input_tokens"] for u in usages),
        "input_tokens_details": {
            "cached_tokens": sum(u["input_tokens_details"]["cached_tokens"] for u in usages)
        },
        "output_tokens": sum(u["output_tokens"] for u in usages),
        "output_tokens_details": {
            "reasoning_tokens": sum(u["output_tokens_details"]["reasoning_tokens"] for u in usages)
        },
        "total_tokens": sum(u["total_tokens"] for u in usages),
    }
    assert batch.usage.model_dump() == expected
    assert expected["input_tokens_details"]["cached_tokens"] > 0  # every field is exercised
    assert expected["output_tokens_details"]["reasoning_tokens"] > 0
    assert expected["total_tokens"] == expected["input_tokens"] + expected["output_tokens"]
