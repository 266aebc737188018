"""Every endpoint the Batch API takes, in both modes: the example job files of jobs/ validated,
sent, answered and priced where a price exists (completions at their rates, moderations at
nothing, images unpriced unless a price file prices their tokens: never 0)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrunner.dialects.openai import ENDPOINTS
from batchrunner.fake import FakeServer
from batchrunner.jobfile import JobDefaults, check_job_file
from batchrunner.tokens import prompt_tokens
from tests.test_cli import invoke, status_json

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
POLL = ("--wait", "--poll-interval", "0.05")


def run_example(
    name: str, mode: str, db_url: str, fake: FakeServer
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit jobs/NAME in `mode` against the fake; its status and its exported results."""
    extra = ("--mode", "batch", *POLL) if mode == "batch" else ()
    common = ("--db", db_url, "--base-url", fake.base_url, "--hosted-prices")
    result = invoke("submit", str(JOBS / name), "--new", *extra, *common)
    assert result.exit_code == 0, result.stderr
    (status,) = status_json(db_url)["jobs"][-1:]
    exported = invoke("export", "results", "--job", str(status["id"]), "--db", db_url)
    return status, [orjson.loads(line) for line in exported.stdout.splitlines()]


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_completions_are_sent_answered_and_priced(mode: str, db_url: str, fake: FakeServer) -> None:
    status, records = run_example("completions.jsonl", mode, db_url, fake)
    assert status["counts"]["succeeded"] == 4 and status["cost_usd"] > 0
    assert all(r["response"]["object"] == "text_completion" for r in records)
    assert records[0]["response"]["choices"][0]["text"].startswith("echo: The three primary")
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in records)
    job = str(status["id"])
    table = invoke("export", "results", "--job", job, "--format", "csv", "--db", db_url)
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert rows[0]["output_text"].startswith("echo: The three primary")


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_moderations_are_free_not_unpriced(mode: str, db_url: str, fake: FakeServer) -> None:
    status, records = run_example("moderations.jsonl", mode, db_url, fake)
    assert status["counts"]["succeeded"] == 4
    assert status["cost_usd"] == 0 and status["unpriced_models"] == []
    assert {r["cost_usd"] for r in records} == {0.0}
    assert [len(r["response"]["results"]) for r in records] == [1, 2, 2, 1]
    assert status["models"] == {
        "omni-moderation-latest": {
            "items": 4,
            "input_tokens": 0,  # the endpoint reports no usage
            "cached_tokens": 0,
            "cached_share": None,
            "cache_saved_usd": 0.0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
            "cost_usd": 0.0,
            "unpriced_items": 0,
        }
    }


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_images_are_answered_and_their_cost_is_unknown_never_zero(
    mode: str, db_url: str, fake: FakeServer
) -> None:
    status, records = run_example("images.jsonl", mode, db_url, fake)
    assert status["counts"]["succeeded"] == 2
    assert all(r["response"]["data"][0]["url"].endswith(".png") for r in records)
    assert {r["cost_usd"] for r in records} == {None}
    assert status["cost_usd"] is None


IMAGE_PRICES = """["gpt-image-1"]
input = 5.0
output = 40.0
batch_input = 2.5
batch_output = 20.0
"""


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_gpt_image_models_are_priced_by_a_price_file_and_the_tokens_they_report(
    mode: str, db_url: str, fake: FakeServer, tmp_path: Path
) -> None:
    """gpt-image-1 reports text tokens in and image tokens out, but its image tokens have
    rates of their own that usage does not split: unpriced, until a price file prices them."""
    job = tmp_path / "pictures.jsonl"
    lines = [
        {"custom_id": "one", "url": "/v1/images/generations", "model": "gpt-image-1",
         "prompt": "A lighthouse", "n": 1},
        {"custom_id": "two", "url": "/v1/images/generations", "model": "gpt-image-1",
         "prompt": "Two small boats at sea", "n": 2},
    ]  # fmt: skip
    job.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    prices = tmp_path / "images.toml"
    prices.write_text(IMAGE_PRICES)
    extra = ("--mode", "batch", *POLL) if mode == "batch" else ()
    common = ("--db", db_url, "--base-url", fake.base_url, "--hosted-prices", *extra)
    unpriced = invoke("submit", str(job), *common)
    assert unpriced.exit_code == 0 and "image tokens have prices of their own" in unpriced.stderr
    assert invoke("submit", str(job), "--new", *common, "--prices", str(prices)).exit_code == 0
    first, second = status_json(db_url)["jobs"]
    assert first["cost_usd"] is None and first["unpriced_models"] == ["gpt-image-1"]
    exported = invoke("export", "results", "--job", str(second["id"]), "--db", db_url)
    records = {r["custom_id"]: r for r in map(orjson.loads, exported.stdout.splitlines())}
    assert [records[i]["output_tokens"] for i in ("one", "two")] == [1056, 2112]
    rate_in, rate_out = (2.5, 20.0) if mode == "batch" else (5.0, 40.0)
    for record in records.values():
        assert record["input_tokens"] > 0
        expected = (record["input_tokens"] * rate_in + record["output_tokens"] * rate_out) / 1e6
        assert record["cost_usd"] == pytest.approx(expected)


def test_a_budget_holds_an_images_worst_case_not_nothing(
    db_url: str, fake: FakeServer, tmp_path: Path
) -> None:
    """An image request caps no output: the budget holds the uncapped worst case for each
    image asked for (16,384 tokens), so a budget smaller than that sends nothing."""
    job = tmp_path / "pictures.jsonl"
    line = {"url": "/v1/images/generations", "model": "gpt-image-1", "prompt": "A cat", "n": 2}
    job.write_bytes(orjson.dumps(line) + b"\n")
    prices = tmp_path / "images.toml"
    prices.write_text(IMAGE_PRICES)
    common = ("--db", db_url, "--base-url", fake.base_url, "--prices", str(prices))
    worst = (prompt_tokens("/v1/images/generations", line) * 5.0 + 2 * 16_384 * 40.0) / 1e6
    held = invoke("submit", str(job), *common, "--budget", f"{worst * 0.99:.6f}")
    assert held.exit_code == 3, held.stderr  # stopped before sending: resumable
    assert fake.total_requests == 0
    enough = invoke("run", "--db", db_url, "--budget", f"{worst * 1.01:.6f}")
    assert enough.exit_code == 0, enough.stderr
    assert fake.total_requests == 1


@pytest.mark.parametrize(
    ("url", "body", "problem"),
    [
        ("/v1/completions", {"model": "m"}, 'missing "prompt" for /v1/completions'),
        ("/v1/completions", {"model": "m", "prompt": []}, '"prompt" must be a string or a'),
        ("/v1/moderations", {"input": 3}, '"input" must be a string or a non-empty array'),
        ("/v1/images/generations", {"prompt": ""}, '"prompt" must be a non-empty string'),
        ("/v1/images/edits", {"prompt": "p"}, 'missing "image" for /v1/images/edits'),
        ("/v1/videos", {"model": "sora-2"}, 'missing "prompt" for /v1/videos'),
        (
            "/v1/responses",
            {"model": "m"},
            'missing "input" for /v1/responses (or "conversation", "previous_response_id" or '
            '"prompt")',
        ),
        (
            "/v1/responses",
            {"model": "m", "previous_response_id": ""},
            '"previous_response_id" must be a non-empty string, got an empty string',
        ),
        (
            "/v1/responses",
            {"model": "m", "conversation": {"name": "x"}},
            '"conversation" must be a conversation id or an object with its "id", got an object',
        ),
        (
            "/v1/responses",
            {"model": "m", "conversation": "conv_1", "previous_response_id": "resp_1"},
            '"conversation" and "previous_response_id" cannot both be given: use one',
        ),
    ],
)
def test_each_endpoint_checks_its_own_body(
    tmp_path: Path, url: str, body: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(orjson.dumps({"custom_id": "a", "url": url, **body}) + b"\n")
    result = invoke("submit", str(path), "--detach", "--db", f"sqlite:///{tmp_path}/l.db")
    assert result.exit_code == 2 and f"{path}:1: {problem}" in result.stderr


def test_every_batch_endpoint_is_taken_and_models_default_where_the_api_defaults_them(
    tmp_path: Path,
) -> None:
    lines: dict[str, dict[str, Any]] = {
        "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user"}]},
        "/v1/embeddings": {"model": "text-embedding-3-small", "input": "x"},
        "/v1/responses": {"model": "gpt-4.1-mini", "input": "x"},
        "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "x"},
        "/v1/moderations": {"input": "x"},
        "/v1/images/generations": {"prompt": "x"},
        "/v1/images/edits": {"prompt": "x", "image": "file-abc"},
        "/v1/videos": {"prompt": "x"},
    }
    assert tuple(lines) == ENDPOINTS
    path = tmp_path / "all.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": f"i{n}", "url": url, **body}) + b"\n"
            for n, (url, body) in enumerate(lines.items())
        )
    )
    summary = check_job_file(str(path), JobDefaults())
    assert summary.endpoints == dict.fromkeys(ENDPOINTS, 1)
    assert summary.models["omni-moderation-latest"] == 1 and summary.models["sora-2"] == 1
    assert summary.models["dall-e-2"] == 2


CONTINUED_RESPONSES: list[dict[str, Any]] = [
    {"custom_id": "after", "previous_response_id": "resp_abc"},
    {"custom_id": "in-conv", "conversation": "conv_abc", "instructions": "Be brief."},
    {"custom_id": "in-conv-object", "conversation": {"id": "conv_abc"}},
    {"custom_id": "with-input", "previous_response_id": "resp_abc", "input": "and then?"},
]


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
def test_responses_that_continue_a_conversation_need_no_input(
    mode: str, db_url: str, fake: FakeServer, tmp_path: Path
) -> None:
    """A /v1/responses line may carry the conversation it continues instead of "input" (the
    Batch API takes what the endpoint takes): checked, counted (what the line itself carries),
    sent and answered in both modes."""
    lines = [
        {"url": "/v1/responses", "model": "gpt-4.1-mini", **line} for line in CONTINUED_RESPONSES
    ]
    job = tmp_path / "continued.jsonl"
    job.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert check_job_file(str(job), JobDefaults()).items == len(lines)
    bare = {"model": "gpt-4.1-mini", "previous_response_id": "resp_abc"}
    assert prompt_tokens("/v1/responses", bare) == 3  # only the reply's priming: no input
    extra = ("--mode", "batch", *POLL) if mode == "batch" else ()
    result = invoke("submit", str(job), *extra, "--db", db_url, "--base-url", fake.base_url)
    assert result.exit_code == 0, result.stderr
    (status,) = status_json(db_url)["jobs"]
    assert status["counts"]["succeeded"] == len(lines)


@pytest.mark.parametrize(
    ("url", "body", "tokens"),
    [
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hello world"}, 2),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": [[1, 2, 3]]}, 3),
        ("/v1/moderations", {"model": "omni-moderation-latest", "input": ["hello world"] * 2}, 4),
        ("/v1/images/generations", {"model": "dall-e-3", "prompt": "hello world"}, 2),
    ],
)
def test_prompts_of_the_other_endpoints_are_counted_with_no_overhead(
    url: str, body: dict[str, Any], tokens: int
) -> None:
    assert prompt_tokens(url, body) == tokens
