"""Logging set-up for the CLI, and the one-line-per-attempt log (`-v`, `--log-json`).

Lines carry the job, custom_id, attempt, status, latency and tokens: never the API key, never
prompts or answers. Every JSON line also names its job, run and worker (`job`, `run`, `worker`:
the run a runner bound with `bind_run`, this process as hostname:pid), so lines from a fleet of
workers can be told apart and joined with the ledger's runs.

Every line is masked on its way out too (`redact.mask`), so a key quoted in a message from
elsewhere (a server's error, an exception) never reaches a log, and its control
characters are escaped (`terminal.printable`): one record, one line, no escape sequence.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import sys
from typing import Any

import orjson

from batchrunner.redact import mask
from batchrunner.terminal import printable

ATTEMPTS = logging.getLogger("batchrunner.attempts")
EVENTS = logging.getLogger("batchrunner")


# The job and run this task works on (set by a runner when its run starts; a task started
# from it inherits them, a task of another run has its own).
_RUN: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "batchrunner_run", default=None
)


def worker_name() -> str:
    """This process as its lines and metrics name it: hostname:pid (as `status` shows workers)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def bind_run(job_id: int, run_id: str) -> None:
    """Name this job and run on every line logged from here (and the tasks started here)."""
    _RUN.set((job_id, run_id))


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        run = _RUN.get()
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "job": run[0] if run else None,
            "run": run[1] if run else None,
            "worker": worker_name(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        return printable(mask(orjson.dumps(data).decode()), json=True)


class Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        else:
            line = f"{record.levelname.lower()}: {record.getMessage()}"
        return printable(mask(line), lines=False)


def configure(verbose: int = 0, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else Plain())
    root = logging.getLogger("batchrunner")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.INFO if verbose or json_lines else logging.WARNING)


def log_attempt(**fields: Any) -> None:
    """One attempt, as key=value text or one JSON object."""
    ATTEMPTS.info("attempt", extra={"fields": fields})
