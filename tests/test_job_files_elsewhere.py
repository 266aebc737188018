"""Job files in the shapes other projects publish (tests/job_files_elsewhere/README.md):
accepted, or refused with file:line for the reason the Batch API would refuse them."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrunner.errors import JobFileError
from batchrunner.fake import FakeServer
from batchrunner.jobfile import JobDefaults, check_job_file
from tests.test_cli import exported_records, invoke

FILES = Path(__file__).parent / "job_files_elsewhere"


@pytest.mark.parametrize(
    ("name", "endpoints"),
    [
        ("vllm_run_batch.jsonl", {"/v1/chat/completions": 2, "/v1/embeddings": 1}),
        ("litellm_batch.jsonl", {"/v1/chat/completions": 2}),
        ("cookbook_batch.jsonl", {"/v1/chat/completions": 2}),
    ],
)
def test_files_the_batch_api_takes_are_taken(name: str, endpoints: dict[str, int]) -> None:
    summary = check_job_file(str(FILES / name), JobDefaults())
    assert summary.endpoints == endpoints


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("vllm_score.jsonl", 'unknown url "/v1/score"; expected one of /v1/chat/completions'),
        ("stream_lines.jsonl", '"stream" must be false or left out, got true'),
    ],
)
def test_files_the_batch_api_refuses_are_refused_with_the_reason(name: str, problem: str) -> None:
    path = FILES / name
    with pytest.raises(JobFileError) as refused:
        check_job_file(str(path), JobDefaults())
    assert str(refused.value.problems[0]).startswith(f"{path}:1: {problem}")


def test_a_file_written_for_litellm_runs_as_written(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Its `/chat/completions` lines (no `/v1`) go to the chat endpoint."""
    name = str(FILES / "litellm_batch.jsonl")
    common = ("--db", db_url, "--base-url", fake.base_url)
    assert invoke("submit", name, *common).exit_code == 0
    records = exported_records(db_url)
    assert [r["custom_id"] for r in records] == ["task-0", "task-1"]
    assert {r["status"] for r in records} == {"succeeded"}
