"""batchrunner: run large batches of LLM API requests reliably, fast and cheaply, with a ledger
of every item.

    import batchrunner

    with batchrunner.submit("jobs.jsonl", db="sqlite:///batchrunner.db") as job:  # or a list
        report = job.run(on_progress=print)  # RunReport: completed, stopped or submitted
        frame = job.to_pandas()  # or job.results(), job.to_arrow()

`submit`, `open_job` and `Job` (batchrunner/api.py) are the short way; the functions behind
them (`submit_job`, `run`, `write_results`, ...) are public too.

Everything a program needs is importable from here; the modules behind it are internal. Every
error batchrunner raises on purpose is a `BatchrunnerError` (the tree is drawn in
batchrunner/errors.py); anything else is a bug.
"""

from __future__ import annotations

# Nothing is imported here, not even `typing`: this package is imported before the CLI can take
# Ctrl-C over (batchrunner/__main__.py), so the shorter it takes the better.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from batchrunner.api import Job, ProgressSnapshot, open_job, submit
    from batchrunner.commands import (
        Progress,
        Submitted,
        cancel_job,
        exit_code,
        retry_failed,
        run,
        run_job,
        run_worker,
        submit_job,
    )
    from batchrunner.errors import (
        BackendError,
        BatchrunnerError,
        JobBusyError,
        JobFileError,
        JobStopped,
        LedgerError,
        Problem,
        UsageError,
    )
    from batchrunner.estimate import Estimate, estimate_job_file
    from batchrunner.export import write_errors, write_results, write_usage
    from batchrunner.failures import ErrorKind
    from batchrunner.items import JobItem
    from batchrunner.jobfile import JobDefaults, check_job_file, read_job_items
    from batchrunner.ledger import BatchRow, ItemRow, JobSummary, Ledger, WorkerStatus
    from batchrunner.outcome import Outcome, Result
    from batchrunner.runner.report import RunReport
    from batchrunner.settings import RunSettings

__all__ = [
    "BackendError",
    "BatchRow",
    "BatchrunnerError",
    "ErrorKind",
    "Estimate",
    "ItemRow",
    "Job",
    "JobBusyError",
    "JobDefaults",
    "JobFileError",
    "JobItem",
    "JobStopped",
    "JobSummary",
    "Ledger",
    "LedgerError",
    "Outcome",
    "Problem",
    "Progress",
    "ProgressSnapshot",
    "Result",
    "RunReport",
    "RunSettings",
    "Submitted",
    "UsageError",
    "WorkerStatus",
    "__version__",
    "cancel_job",
    "check_job_file",
    "estimate_job_file",
    "exit_code",
    "open_job",
    "read_job_items",
    "retry_failed",
    "run",
    "run_job",
    "run_worker",
    "submit",
    "submit_job",
    "write_errors",
    "write_results",
    "write_usage",
]

# Everything is imported when first asked for: `import batchrunner.errors` (or any light
# module) must not load the ledger, SQLAlchemy and the price tables with it.
_LAZY = {
    "Job": "batchrunner.api",
    "ProgressSnapshot": "batchrunner.api",
    "open_job": "batchrunner.api",
    "submit": "batchrunner.api",
    "BackendError": "batchrunner.errors",
    "BatchrunnerError": "batchrunner.errors",
    "JobBusyError": "batchrunner.errors",
    "JobFileError": "batchrunner.errors",
    "JobStopped": "batchrunner.errors",
    "LedgerError": "batchrunner.errors",
    "Problem": "batchrunner.errors",
    "UsageError": "batchrunner.errors",
    "Progress": "batchrunner.commands",
    "Submitted": "batchrunner.commands",
    "cancel_job": "batchrunner.commands",
    "exit_code": "batchrunner.commands",
    "retry_failed": "batchrunner.commands",
    "run": "batchrunner.commands",
    "run_job": "batchrunner.commands",
    "run_worker": "batchrunner.commands",
    "submit_job": "batchrunner.commands",
    "Estimate": "batchrunner.estimate",
    "estimate_job_file": "batchrunner.estimate",
    "write_errors": "batchrunner.export",
    "write_results": "batchrunner.export",
    "write_usage": "batchrunner.export",
    "ErrorKind": "batchrunner.failures",
    "JobItem": "batchrunner.items",
    "JobDefaults": "batchrunner.jobfile",
    "check_job_file": "batchrunner.jobfile",
    "read_job_items": "batchrunner.jobfile",
    "BatchRow": "batchrunner.ledger",
    "ItemRow": "batchrunner.ledger",
    "JobSummary": "batchrunner.ledger",
    "Ledger": "batchrunner.ledger",
    "WorkerStatus": "batchrunner.ledger",
    "Outcome": "batchrunner.outcome",
    "Result": "batchrunner.outcome",
    "RunReport": "batchrunner.runner.report",
    "RunSettings": "batchrunner.settings",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("batchrunner")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "0+unknown"
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # asked once
        return value
    raise AttributeError(f"module 'batchrunner' has no attribute {name!r}")
