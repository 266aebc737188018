"""Logging set-up for the CLI, and the one-line-per-attempt log (`-v`, `--log-json`).

Lines carry the job, custom_id, attempt, status, latency and tokens: never the API key, never
prompts or answers. Every line is masked on its way out too (`redact.mask`), so a key quoted in a
message from elsewhere (a server's error, an exception) never reaches a log, and its control
characters are escaped (`terminal.printable`): one record, one line, no escape sequence.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from batchrunner.redact import mask
from batchrunner.terminal import printable

ATTEMPTS = logging.getLogger("batchrunner.attempts")
EVENTS = logging.getLogger("batchrunner")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
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
