"""Write a job's results back out: one record per item, in input order, paged from the ledger.

`results` gives custom_id, status, the response body as the API returned it, the error, attempts,
tokens, cost, latency, whether the answer was reused from an earlier job (`--reuse`: no request,
no cost) and the extra keys of the input line. `errors` gives the failed items as a
job file in the Batch API line format, ready to submit again.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import IO, Any

import orjson

from batchrunner.jobfile import batch_line
from batchrunner.ledger import Ledger
from batchrunner.ledger.models import FAILED

FORMATS = ("jsonl", "csv")
RESERVED = (
    "custom_id",
    "status",
    "response",
    "error",
    "attempts",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "finish_reason",
    "reused",
    "simulated",
)
CSV_COLUMNS = (
    "custom_id",
    "status",
    "output_text",
    "error_kind",
    "error_code",
    "error_message",
    "attempts",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "finish_reason",
    "reused",
    "simulated",
    "response",
    "extra",
)


def _error(row: Any) -> dict[str, Any] | None:
    if row.error_kind is None and row.error_message is None:
        return None
    return {"kind": row.error_kind, "code": row.error_code, "message": row.error_message}


def _is_successful(row: Any) -> bool:
    return bool(row.state == "succeeded")


def result_record(row: Any, simulated: bool) -> dict[str, Any]:
    """One exported item; the response and extra keys are spliced in as the JSON they were."""
    record: dict[str, Any] = {
        "custom_id": row.custom_id,
        "status": row.state,
        "response": orjson.Fragment(row.response) if row.response else None,
        "error": None if _is_successful(row) else _error(row),
        "attempts": row.attempts,
        "input_tokens": row.input_tokens,
        "cached_tokens": row.cached_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "cost_usd": row.cost_usd,
        "latency_ms": row.latency_ms,
        "finish_reason": row.finish_reason,
        "reused": bool(row.reused),
    }
    if simulated:
        record["simulated"] = True
    if row.extra:
        for key, value in orjson.loads(row.extra).items():
            record[f"input_{key}" if key in RESERVED else key] = value
    return record


def output_text(response: dict[str, Any]) -> str | None:
    """The answer's text, for spreadsheet users: chat content or responses output_text."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices:
        message = choices[0].get("message") or {}
        content = message.get("content")
        return content if isinstance(content, str) else None
    texts = [
        part.get("text", "")
        for entry in response.get("output") or []
        if isinstance(entry, dict) and entry.get("type") == "message"
        for part in entry.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    return "".join(texts) if texts else None


def _csv_row(row: Any, simulated: bool) -> list[Any]:
    response = orjson.loads(row.response) if row.response else None
    error = None if _is_successful(row) else _error(row)
    return [
        row.custom_id,
        row.state,
        output_text(response) if isinstance(response, dict) else None,
        error and error["kind"],
        error and error["code"],
        error and error["message"],
        row.attempts,
        row.input_tokens,
        row.cached_tokens,
        row.output_tokens,
        row.reasoning_tokens,
        row.cost_usd,
        row.latency_ms,
        row.finish_reason,
        bool(row.reused),
        simulated,
        row.response,
        row.extra,
    ]


def write_results(ledger: Ledger, job_id: int, out: IO[bytes], fmt: str = "jsonl") -> int:
    """Write every item of the job to `out`; return how many."""
    _, simulated = ledger.job_options(job_id)
    rows = ledger.iter_items(job_id)
    if fmt == "csv":
        return _write_csv(rows, out, simulated)
    count = 0
    for row in rows:
        out.write(orjson.dumps(result_record(row, simulated), option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _write_csv(rows: Iterator[Any], out: IO[bytes], simulated: bool) -> int:
    records = (dict(zip(CSV_COLUMNS, _csv_row(row, simulated), strict=True)) for row in rows)
    return _write_csv_records(records, CSV_COLUMNS, out)


def _write_csv_records(
    records: Iterator[dict[str, Any]], columns: tuple[str, ...], out: IO[bytes]
) -> int:
    """A header, then one row per record, streamed."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(columns)
    count = 0
    for record in records:
        writer.writerow(record[column] for column in columns)
        count += 1
    text.flush()
    text.detach()
    return count


def write_errors(ledger: Ledger, job_id: int, out: IO[bytes]) -> int:
    """The failed items as Batch API lines, with their extra keys: a job file to run again."""
    count = 0
    for row in ledger.iter_items(job_id, states=(FAILED,)):
        out.write(batch_line(row.custom_id, row.url, row.body, row.extra))
        count += 1
    return count


USAGE_COLUMNS = (
    "custom_id",
    "model",
    "mode",
    "status",
    "attempts",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "reused",
)


def write_usage(ledger: Ledger, job_id: int, out: IO[bytes], fmt: str = "jsonl") -> int:
    """Per item: model, mode, tokens and cost, for accounting and charge-back."""
    mode = ledger.job_mode(job_id)
    records = (
        dict(zip(USAGE_COLUMNS, _usage_row(row, mode), strict=True))
        for row in ledger.iter_items(job_id)
    )
    if fmt == "csv":
        return _write_csv_records(records, USAGE_COLUMNS, out)
    count = 0
    for record in records:
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _usage_row(row: Any, mode: str) -> tuple[Any, ...]:
    return (
        row.custom_id,
        row.model,
        mode,
        row.state,
        row.attempts,
        row.input_tokens,
        row.cached_tokens,
        row.output_tokens,
        row.reasoning_tokens,
        row.cost_usd,
        bool(row.reused),
    )
