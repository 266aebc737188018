"""The public API: what a program imports from `batchrunner`, and that it is enough to run a job."""

from __future__ import annotations

import io
from importlib import metadata, resources
from pathlib import Path

import orjson

import batchrunner
from batchrunner import (
    BackendError,
    BatchrunnerError,
    JobBusyError,
    JobDefaults,
    JobFileError,
    JobStopped,
    LedgerError,
    RunSettings,
    UsageError,
    run,
    submit_job,
    write_results,
)
from batchrunner.fake import FakeServer
from tests.conftest import chat_line, write_jsonl


def test_every_public_name_is_there_and_the_version_is_the_packages() -> None:
    for name in batchrunner.__all__:
        assert getattr(batchrunner, name) is not None, name
    assert batchrunner.__version__ == metadata.version("batchrunner")
    assert resources.files("batchrunner").joinpath("py.typed").is_file()  # PEP 561


def test_the_exception_tree_is_importable_from_the_top() -> None:
    tree = (JobFileError, UsageError, JobBusyError, LedgerError, BackendError, JobStopped)
    assert all(issubclass(kind, BatchrunnerError) for kind in tree)
    assert {kind.exit_code for kind in (JobFileError, UsageError, JobBusyError)} == {2}
    assert {kind.exit_code for kind in (LedgerError, BackendError, JobStopped)} == {3}


def test_a_program_runs_a_job_with_the_public_api_alone(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(25)])
    settings = RunSettings(base_url=fake.base_url)
    ledger, submitted = submit_job(db_url, str(path), defaults=JobDefaults(), settings=settings)
    try:
        report = run(ledger, submitted.job_id)
        out = io.BytesIO()
        assert write_results(ledger, submitted.job_id, out) == 25
    finally:
        ledger.close()
    assert (report.state, report.stop_reason) == ("completed", None)
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert {r["status"] for r in records} == {"succeeded"}
    assert fake.total_requests == 25
