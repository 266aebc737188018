"""Write a job's results back out: one record per item, in input order, paged from the ledger.

One column table (`COLUMNS`) drives every format: each column says which shapes show it, how
to get its value from an item (and the job), and what it holds (for Parquet's typed columns),
in the order the shapes list them. `results` gives custom_id, status, the error, attempts,
tokens, cost, latency, whether the answer was reused from an earlier job (`--reuse`: no
request, no cost), whether the job was simulated, the response body as the API returned it and
the extra keys of the input line (JSONL splices them in; CSV and Parquet keep them as one JSON
column). `--format openai` writes the Batch API's own output lines (id, custom_id, response,
error), so tools that read OpenAI's output files read batchrunner's. A job that came from a
table (its options hold `table`, each item's extra its row as `metadata`) exports to CSV and
Parquet as that table: its columns as they were, then the answer columns beside them (the
answer's text, one column per property of the JSON schema the request asked for, status,
finish_reason, tokens, cost, error). `usage` gives model, mode, tokens and cost per item.
`errors` gives the failed items as a job file in the Batch API line format, ready to submit
again.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from operator import attrgetter
from typing import IO, TYPE_CHECKING, Any

import orjson

from batchrunner.dialects import Dialect
from batchrunner.dialects.openai import batch_line, requested_format
from batchrunner.ledger import ItemRow, Ledger
from batchrunner.ledger.models import BATCH, CANCELLED, FAILED, SUCCEEDED
from batchrunner.parquet import BOOL, FLOAT, INT, TEXT, require_pyarrow, write_parquet
from batchrunner.providers import provider_for
from batchrunner.settings import RunSettings

if TYPE_CHECKING:  # pricing loads the price library: only where a cost is computed
    from batchrunner.pricing import CacheSavings

FORMATS = ("jsonl", "csv")  # usage's; results' are RESULT_FORMATS
RESULT_FORMATS = ("jsonl", "csv", "parquet", "openai")
RESULTS_JSONL, RESULTS_CSV, USAGE = "results/jsonl", "results/csv", "usage"
RESULTS_OPENAI = "results/openai"  # the Batch API's output line
RESULTS_TABLE = "results/table"  # the answer columns beside a table job's own columns
RESULTS = frozenset((RESULTS_JSONL, RESULTS_CSV))
EVERYWHERE = frozenset((RESULTS_JSONL, RESULTS_CSV, USAGE))
ANSWER_PREFIX = "answer_"  # an answer column named like one of the table's own columns
OUTPUT_FIELD = "output."  # the column of one property of the answer's JSON object
# The items an OpenAI output line is written for: those whose end is known.
ENDED = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What every record of one job shares."""

    mode: str
    simulated: bool
    dialect: Dialect  # what its answers mean (their text)
    table_columns: tuple[str, ...] | None = None  # a table job's own columns; None: not one
    # what cached input saved at the uncached price (export usage's cache_saved_usd)
    cache_savings: CacheSavings | None = None


Getter = Callable[[ItemRow, JobFacts], Any]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    get: Getter
    shown_in: frozenset[str]
    get_text: Getter | None = None  # the CSV cell (a TEXT column's Parquet one) if not JSON's
    kind: str = TEXT  # what it holds, for Parquet: TEXT, INT, FLOAT or BOOL


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


@lru_cache(maxsize=1)
def _reading(response: str, job: JobFacts) -> str | None:
    """An answer's text, read once per item however many columns show it (or read it)."""
    parsed = orjson.loads(response)
    return job.dialect.output_text(parsed) if isinstance(parsed, dict) else None


def _text(row: ItemRow, job: JobFacts) -> str | None:
    return _reading(row.result.response, job) if row.result.response else None


@lru_cache(maxsize=1)
def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object an answer's text is, or None: parsed once per item."""
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _response(row: ItemRow, job: JobFacts) -> orjson.Fragment | None:
    """Spliced in as the JSON it was."""
    return orjson.Fragment(row.result.response) if row.result.response else None


# -- the Batch API's output line -----------------------------------------------------------------

NOT_RUN_MESSAGE = "This request was not executed because the job was cancelled."


def _stable_id(prefix: str, row: ItemRow) -> str:
    """An id of the API's shape that the same item of the same job always gets."""
    seed = f"{prefix}\0{row.job_id}\0{row.position}\0{row.custom_id}".encode()
    return prefix + hashlib.sha256(seed).hexdigest()[:32]


def _openai_response(row: ItemRow, job: JobFacts) -> dict[str, Any] | None:
    """The HTTP answer: a success's body as received; a refusal's (non-200) error body as the
    API words it, from the code and message the ledger keeps; None when no answer came."""
    result = row.result
    status = result.http_status
    body: orjson.Fragment | dict[str, Any]
    if row.state == SUCCEEDED and result.response:
        status, body = 200, orjson.Fragment(result.response)
    elif row.state == FAILED and status is not None and status != 200:
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        message = result.error_message or f"HTTP {status}"
        error = {"message": message, "type": error_type, "param": None, "code": result.error_code}
        body = {"error": error}
    else:
        return None
    return {"status_code": status, "request_id": _stable_id("req_", row), "body": body}


def _openai_error(row: ItemRow, job: JobFacts) -> dict[str, Any] | None:
    """Why no HTTP answer came (the API's words: `For requests that failed with a non-HTTP
    error`): the batch's own code (batch_expired, batch_cancelled), else the error kind
    (timeout, unreachable, bad_response ...)."""
    if _openai_response(row, job) is not None:
        return None
    result = row.result
    if row.state == CANCELLED:  # whatever an earlier try said: it was not run to its end
        return {"code": "batch_cancelled", "message": NOT_RUN_MESSAGE}
    code = result.error_code or result.error_kind or "failed"
    return {"code": code, "message": result.error_message or code}


OPENAI = frozenset((RESULTS_OPENAI,))
TABLE = frozenset((RESULTS_TABLE,))

COLUMNS: tuple[Column, ...] = (
    Column("id", lambda row, job: _stable_id("batch_req_", row), OPENAI),
    Column("custom_id", _of_row("custom_id"), EVERYWHERE | OPENAI | TABLE),
    Column("model", _of_row("model"), frozenset((USAGE,))),
    Column("mode", lambda row, job: job.mode, frozenset((USAGE,))),
    Column("status", _of_row("state"), EVERYWHERE | TABLE),
    Column("output_text", _text, frozenset((RESULTS_CSV,)) | TABLE),
    Column("error", _error, frozenset((RESULTS_JSONL,))),
    Column("error_kind", _error_part("kind"), frozenset((RESULTS_CSV,))),
    Column("error_code", _error_part("code"), frozenset((RESULTS_CSV,))),
    Column("error_message", _error_part("message"), frozenset((RESULTS_CSV,))),
    Column("attempts", _of_row("attempts"), EVERYWHERE, kind=INT),
    Column("input_tokens", _of_row("result.input_tokens"), EVERYWHERE | TABLE, kind=INT),
    Column("cached_tokens", _of_row("result.cached_tokens"), EVERYWHERE, kind=INT),
    Column(
        "cache_saved_usd",
        lambda row, job: (
            job.cache_savings.usd(row.model, row.result.cached_tokens)
            if job.cache_savings is not None
            else None
        ),
        frozenset((USAGE,)),
        kind=FLOAT,
    ),
    Column("output_tokens", _of_row("result.output_tokens"), EVERYWHERE | TABLE, kind=INT),
    Column("reasoning_tokens", _of_row("result.reasoning_tokens"), EVERYWHERE, kind=INT),
    Column("cost_usd", _of_row("result.cost_usd"), EVERYWHERE | TABLE, kind=FLOAT),
    Column("latency_ms", _of_row("result.latency_ms"), RESULTS, kind=FLOAT),
    Column("finish_reason", _of_row("result.finish_reason"), RESULTS | TABLE),
    Column("output_valid", _of_row("result.output_valid"), RESULTS, kind=BOOL),
    Column("invalid_reason", _of_row("result.invalid_reason"), RESULTS),
    Column("reused", lambda row, job: bool(row.reused), EVERYWHERE, kind=BOOL),
    Column("simulated", lambda row, job: job.simulated, EVERYWHERE, kind=BOOL),
    Column("response", _response, RESULTS, get_text=_of_row("result.response")),
    Column("extra", _of_row("extra"), frozenset((RESULTS_CSV,))),
    Column("response", _openai_response, OPENAI),
    Column("error", _openai_error, OPENAI),
    Column("error", _error_part("message"), TABLE),
)


def columns_of(shape: str) -> tuple[Column, ...]:
    return tuple(column for column in COLUMNS if shape in column.shown_in)


_JSONL = columns_of(RESULTS_JSONL)
_OPENAI = columns_of(RESULTS_OPENAI)
# A JSONL record's names: an input line's extra key of the same name comes back as input_KEY.
RESERVED = frozenset(column.name for column in _JSONL)


def result_record(row: ItemRow, job: JobFacts) -> dict[str, Any]:
    """One exported item as JSONL has it, the input line's extra keys spliced in."""
    record = {column.name: column.get(row, job) for column in _JSONL}
    if row.extra:
        for key, value in orjson.loads(row.extra).items():
            record[f"input_{key}" if key in RESERVED else key] = value
    return record


# -- a table job's columns ---------------------------------------------------------------------


def _cell_text(value: Any) -> str | None:
    """A value as a text cell: a string as it is, anything else as its JSON."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@lru_cache(maxsize=1)
def _metadata(extra: str) -> dict[str, Any]:
    """An item's table row (its extra's `metadata`), parsed once per item."""
    metadata = orjson.loads(extra).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _input_column(name: str) -> Column:
    """One of the table's own columns, as text (the table's types are not recorded)."""

    def get(row: ItemRow, job: JobFacts) -> str | None:
        return _cell_text(_metadata(row.extra).get(name)) if row.extra else None

    return Column(name, get, TABLE)


SCHEMA_KINDS = {"string": TEXT, "integer": INT, "number": FLOAT, "boolean": BOOL}


def _schema_kind(schema: Any) -> str:
    """What a property's column holds: its JSON type (null aside), else its JSON as text."""
    given = schema.get("type") if isinstance(schema, dict) else None
    types = [given] if isinstance(given, str) else given if isinstance(given, list) else []
    types = [kind for kind in types if kind != "null"]
    return SCHEMA_KINDS.get(types[0], TEXT) if len(types) == 1 else TEXT


def _typed(value: Any, kind: str) -> Any:
    """A property's value as its column holds it: a text column any value (a non-string as
    its JSON), a typed one only a value of its type (else None)."""
    if kind == TEXT:
        return _cell_text(value)
    if isinstance(value, bool):
        return value if kind == BOOL else None
    if kind == INT:
        return value if isinstance(value, int) else None
    if kind == FLOAT:
        return float(value) if isinstance(value, (int, float)) else None
    return None


def _field_column(name: str, kind: str) -> Column:
    """One top-level property of the answer's JSON object (empty when the answer is not one)."""

    def value(row: ItemRow, job: JobFacts) -> Any:
        text = _text(row, job)
        answer = _json_object(text) if text is not None else None
        return answer.get(name) if answer is not None else None

    def get(row: ItemRow, job: JobFacts) -> Any:
        return _typed(value(row, job), kind)

    def get_text(row: ItemRow, job: JobFacts) -> Any:
        typed = get(row, job)
        return typed if kind == TEXT else _cell_text(typed)

    return Column(OUTPUT_FIELD + name, get, TABLE, get_text=get_text, kind=kind)


def _answer_fields(ledger: Ledger, job_id: int) -> list[Column]:
    """A column per property of the JSON schema the job's requests ask for (the first item's:
    a table job's requests share one), decided before the first row is written."""
    first = next(ledger.iter_items(job_id), None)
    wanted = requested_format(first.url, orjson.loads(first.body)) if first is not None else None
    schema = wanted.schema if wanted is not None else None
    properties = schema.get("properties") if schema is not None else None
    if not isinstance(properties, dict):
        return []
    return [_field_column(str(name), _schema_kind(spec)) for name, spec in properties.items()]


_OUTPUT_TEXT = next(column for column in COLUMNS if column.name == "output_text")


def table_columns(ledger: Ledger, job_id: int, own: Sequence[str]) -> tuple[Column, ...]:
    """A table job's export: its own columns as they were, then the answer columns (the
    answer's fields right after its text), each renamed answer_NAME (again, if need be) when
    the table has a column of that name."""
    answers: list[Column] = []
    for column in columns_of(RESULTS_TABLE):
        answers.append(column)
        if column is _OUTPUT_TEXT:
            answers.extend(_answer_fields(ledger, job_id))
    columns = [_input_column(name) for name in own]
    taken = set(own)
    for answer in answers:
        name = answer.name
        while name in taken:
            name = ANSWER_PREFIX + name
        taken.add(name)
        columns.append(replace(answer, name=name))
    return tuple(columns)


def _table_of(options: dict[str, Any]) -> tuple[str, ...] | None:
    """A table job's own columns, in the table's order (its options' `table`)."""
    table = options.get("table")
    columns = table.get("columns") if isinstance(table, dict) else None
    return tuple(str(name) for name in columns) if isinstance(columns, list) else None


# -- writing ---------------------------------------------------------------------------------


def _job(ledger: Ledger, job_id: int) -> JobFacts:
    options, simulated = ledger.job_options(job_id)
    settings = RunSettings.from_stored(options)
    mode = ledger.job_mode(job_id)
    from batchrunner.pricing import CacheSavings, job_price_table

    return JobFacts(
        mode=mode,
        simulated=simulated,
        dialect=provider_for(settings).dialect,
        table_columns=_table_of(options),
        cache_savings=CacheSavings(batch=mode == BATCH, overrides=job_price_table(settings)),
    )


def _csv_columns(ledger: Ledger, job_id: int, job: JobFacts) -> tuple[Column, ...]:
    """CSV's and Parquet's columns: a table job's own columns joined to its answers, else the
    results' flat columns."""
    if job.table_columns is not None:
        return table_columns(ledger, job_id, job.table_columns)
    return columns_of(RESULTS_CSV)


def result_records(ledger: Ledger, job_id: int, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    """Every item of the job as `write_results` writes it in this format (CSV's as its cells:
    flat, the response and extra keys as JSON text), paged from the ledger."""
    job = _job(ledger, job_id)
    rows = ledger.iter_items(job_id)
    if fmt == "csv":
        cells = [(c.name, c.get_text or c.get) for c in _csv_columns(ledger, job_id, job)]
        return ({name: cell(row, job) for name, cell in cells} for row in rows)
    return (result_record(row, job) for row in rows)


def write_results(ledger: Ledger, job_id: int, out: IO[bytes], fmt: str = "jsonl") -> int:
    """Write the job's items to `out` in `fmt` (RESULT_FORMATS); return how many. `openai`
    writes the items whose end is known (succeeded, failed, cancelled), the others all."""
    if fmt == "parquet":
        require_pyarrow()
    job = _job(ledger, job_id)
    if fmt == "openai":
        rows = ledger.iter_items(job_id, states=ENDED)
        return _write_jsonl(({c.name: c.get(row, job) for c in _OPENAI} for row in rows), out)
    if fmt in ("csv", "parquet"):
        columns = _csv_columns(ledger, job_id, job)
        rows = ledger.iter_items(job_id)
        if fmt == "parquet":
            return _write_parquet(rows, columns, job, out)
        return _write_csv(rows, columns, job, out)
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


def _write_parquet(
    rows: Iterator[ItemRow], columns: tuple[Column, ...], job: JobFacts, out: IO[bytes]
) -> int:
    """The CSV's columns, a row group per few thousand items as the ledger pages by: a text
    column takes the CSV's cell, a typed one (INT, FLOAT, BOOL) its value."""
    cells = [
        (column.get_text or column.get) if column.kind == TEXT else column.get for column in columns
    ]
    values = ([cell(row, job) for cell in cells] for row in rows)
    return write_parquet([(column.name, column.kind) for column in columns], values, out)


def write_errors(ledger: Ledger, job_id: int, out: IO[bytes]) -> int:
    """The failed items as Batch API lines, with their extra keys: a job file to run again
    (the job file format is OpenAI's Batch API line, whoever answered the job)."""
    count = 0
    for row in ledger.iter_items(job_id, states=(FAILED,)):
        out.write(batch_line(row.custom_id, row.url, row.body, row.extra))
        count += 1
    return count
