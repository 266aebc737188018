"""Write a job's results back out: one record per item, in input order, paged from the ledger.

One column table (`COLUMNS`) drives every format: each column says which formats show it and
how to get its value from an item (and the job), in the order the formats list them. `results`
gives custom_id, status, the error, attempts, tokens, cost, latency, whether the answer was
reused from an earlier job (`--reuse`: no request, no cost), whether the job was simulated, the
response body as the API returned it and the extra keys of the input line (JSONL splices them
in; CSV keeps them as one JSON column). `usage` gives model, mode, tokens and cost per item.
`errors` gives the failed items as a job file in the Batch API line format, ready to submit
again.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import IO, Any

import orjson

from batchrunner.dialects import Dialect
from batchrunner.dialects.openai import batch_line
from batchrunner.ledger import ItemRow, Ledger
from batchrunner.ledger.models import FAILED, SUCCEEDED
from batchrunner.providers import provider_for
from batchrunner.settings import RunSettings

FORMATS = ("jsonl", "csv")
RESULTS_JSONL, RESULTS_CSV, USAGE = "results/jsonl", "results/csv", "usage"
RESULTS = frozenset((RESULTS_JSONL, RESULTS_CSV))
EVERYWHERE = frozenset((RESULTS_JSONL, RESULTS_CSV, USAGE))


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What every record of one job shares."""

    mode: str
    simulated: bool
    dialect: Dialect  # what its answers mean (their text)


Getter = Callable[[ItemRow, JobFacts], Any]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    get: Getter
    shown_in: frozenset[str]
    get_text: Getter | None = None  # the CSV cell, where it differs from the JSON value


def _of_row(path: str) -> Getter:
    read = attrgetter(path)
    return lambda row, job: read(row)


def _error(row: ItemRow, job: JobFacts) -> dict[str, Any] | None:
    result = row.result
    if row.state == SUCCEEDED or (result.error_kind is None and result.error_message is None):
        return None
    return {"kind": result.error_kind, "code": result.error_code, "message": result.error_message}


def _error_part(part: str) -> Getter:
    def get(row: ItemRow, job: JobFacts) -> Any:
        error = _error(row, job)
        return error[part] if error else None

    return get


def _text(row: ItemRow, job: JobFacts) -> str | None:
    response = orjson.loads(row.result.response) if row.result.response else None
    return job.dialect.output_text(response) if isinstance(response, dict) else None


def _response(row: ItemRow, job: JobFacts) -> orjson.Fragment | None:
    """Spliced in as the JSON it was."""
    return orjson.Fragment(row.result.response) if row.result.response else None


COLUMNS: tuple[Column, ...] = (
    Column("custom_id", _of_row("custom_id"), EVERYWHERE),
    Column("model", _of_row("model"), frozenset((USAGE,))),
    Column("mode", lambda row, job: job.mode, frozenset((USAGE,))),
    Column("status", _of_row("state"), EVERYWHERE),
    Column("output_text", _text, frozenset((RESULTS_CSV,))),
    Column("error", _error, frozenset((RESULTS_JSONL,))),
    Column("error_kind", _error_part("kind"), frozenset((RESULTS_CSV,))),
    Column("error_code", _error_part("code"), frozenset((RESULTS_CSV,))),
    Column("error_message", _error_part("message"), frozenset((RESULTS_CSV,))),
    Column("attempts", _of_row("attempts"), EVERYWHERE),
    Column("input_tokens", _of_row("result.input_tokens"), EVERYWHERE),
    Column("cached_tokens", _of_row("result.cached_tokens"), EVERYWHERE),
    Column("output_tokens", _of_row("result.output_tokens"), EVERYWHERE),
    Column("reasoning_tokens", _of_row("result.reasoning_tokens"), EVERYWHERE),
    Column("cost_usd", _of_row("result.cost_usd"), EVERYWHERE),
    Column("latency_ms", _of_row("result.latency_ms"), RESULTS),
    Column("finish_reason", _of_row("result.finish_reason"), RESULTS),
    Column("reused", lambda row, job: bool(row.reused), EVERYWHERE),
    Column("simulated", lambda row, job: job.simulated, EVERYWHERE),
    Column("response", _response, RESULTS, get_text=_of_row("result.response")),
    Column("extra", _of_row("extra"), frozenset((RESULTS_CSV,))),
)


def columns_of(shape: str) -> tuple[Column, ...]:
    return tuple(column for column in COLUMNS if shape in column.shown_in)


_JSONL = columns_of(RESULTS_JSONL)
# A JSONL record's names: an input line's extra key of the same name comes back as input_KEY.
RESERVED = frozenset(column.name for column in _JSONL)


def result_record(row: ItemRow, job: JobFacts) -> dict[str, Any]:
    """One exported item as JSONL has it, the input line's extra keys spliced in."""
    record = {column.name: column.get(row, job) for column in _JSONL}
    if row.extra:
        for key, value in orjson.loads(row.extra).items():
            record[f"input_{key}" if key in RESERVED else key] = value
    return record


def _job(ledger: Ledger, job_id: int) -> JobFacts:
    options, simulated = ledger.job_options(job_id)
    dialect = provider_for(RunSettings.from_stored(options)).dialect
    return JobFacts(mode=ledger.job_mode(job_id), simulated=simulated, dialect=dialect)


def result_records(ledger: Ledger, job_id: int, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    """Every item of the job as `write_results` writes it in this format (CSV's as its cells:
    flat, the response and extra keys as JSON text), paged from the ledger."""
    job = _job(ledger, job_id)
    rows = ledger.iter_items(job_id)
    if fmt == "csv":
        columns = columns_of(RESULTS_CSV)
        cells = [(column.name, column.get_text or column.get) for column in columns]
        return ({name: cell(row, job) for name, cell in cells} for row in rows)
    return (result_record(row, job) for row in rows)


def write_results(ledger: Ledger, job_id: int, out: IO[bytes], fmt: str = "jsonl") -> int:
    """Write every item of the job to `out`; return how many."""
    if fmt == "csv":
        job = _job(ledger, job_id)
        return _write_csv(ledger.iter_items(job_id), columns_of(RESULTS_CSV), job, out)
    return _write_jsonl(result_records(ledger, job_id), out)


def write_usage(ledger: Ledger, job_id: int, out: IO[bytes], fmt: str = "jsonl") -> int:
    """Per item: model, mode, tokens and cost, for accounting and charge-back."""
    job = _job(ledger, job_id)
    rows = ledger.iter_items(job_id)
    columns = columns_of(USAGE)
    if fmt == "csv":
        return _write_csv(rows, columns, job, out)
    records = ({c.name: c.get(row, job) for c in columns} for row in rows)
    return _write_jsonl(records, out)


def _write_jsonl(records: Iterable[dict[str, Any]], out: IO[bytes]) -> int:
    count = 0
    for record in records:
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _write_csv(
    rows: Iterator[ItemRow], columns: tuple[Column, ...], job: JobFacts, out: IO[bytes]
) -> int:
    """A header, then one row per item, streamed."""
    cells = [column.get_text or column.get for column in columns]
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(column.name for column in columns)
    count = 0
    for row in rows:
        writer.writerow([cell(row, job) for cell in cells])
        count += 1
    text.flush()
    text.detach()
    return count


def write_errors(ledger: Ledger, job_id: int, out: IO[bytes]) -> int:
    """The failed items as Batch API lines, with their extra keys: a job file to run again
    (the job file format is OpenAI's Batch API line, whoever answered the job)."""
    count = 0
    for row in ledger.iter_items(job_id, states=(FAILED,)):
        out.write(batch_line(row.custom_id, row.url, row.body, row.extra))
        count += 1
    return count
