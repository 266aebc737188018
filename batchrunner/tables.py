"""A table (CSV, Parquet, JSON lines of data, a saved Hugging Face dataset) and a template as a
job's requests: each row becomes one Batch API line, checked and recorded by jobfile.py's one
path (`check_source`, `read_source_items`), with row numbers in its problems.

Templates are Jinja2 in a sandbox (`jinja2.sandbox.SandboxedEnvironment`: a template cannot
reach Python's internals) with strict undefined names, so a column a row lacks is that row's
problem, naming it. Each template is compiled once; a row is rendered with a plain dict of
Jinja's globals and the row's columns (Jinja's own `render` copies its globals for every call,
a third of the time of a short template). Every column of the row travels with its request as
`{"metadata": {COLUMN: VALUE, ...}}` (the item's extra keys, in the file's column order), and
the job's options get `"table": {"format", "columns"}`: the export of a table job reads both.

Nothing is held but one batch of rows: CSV through the csv module, Parquet by
`ParquetFile.iter_batches`, Arrow files by their stream reader, a dataset folder by its own
batches (memory-mapped). pyarrow (`batchrunner[tables]`) and datasets (`batchrunner[hf]`) are
imported only for the files that need them.
"""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from batchrunner.dialects.openai import CHAT, PROMPTED, RESPONSES
from batchrunner.errors import JobFileError, Problem, UsageError
from batchrunner.jobfile import (
    MAX_LINE_BYTES,
    Entry,
    JobDefaults,
    JobFile,
    LineError,
    RequestSource,
    file_lines,
    read_source_items,
)

# A file's suffix -> the table format it holds; a folder is a saved Hugging Face dataset.
SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".arrow": "arrow",
}
HF_DATASET = "hf"
BATCH_ROWS = 8_192  # rows per batch read from Parquet and Arrow
PARQUET_BUFFER = 1 << 20  # bytes read at a time from a Parquet column chunk
SHOWN_COLUMNS = 12  # a missing column's problem lists this many of the row's


@dataclass(frozen=True)
class RowTemplate:
    """How each row becomes a request: `--prompt`, `--template`, `--system`, `--id-column`,
    `--response-format` (file paths as given)."""

    prompt: str | None = None  # Jinja2: the user message (or the endpoint's input/prompt)
    template: str | None = None  # a Jinja2 file that renders a JSON message list or body
    system: str | None = None
    id_column: str | None = None  # the custom_id (default: the row number)
    response_format: str | None = None  # a JSON Schema file


def table_format(path: str) -> str | None:
    """The table format a path holds by its suffix (a folder: a saved dataset), else None."""
    if os.path.isdir(path):
        return HF_DATASET
    return SUFFIXES.get(Path(path).suffix.lower())


def request_source(path: str, how: RowTemplate | None, defaults: JobDefaults) -> RequestSource:
    """The source `submit` and `render` read: a table with `how`, else the JSONL job file.
    A table given without a template is refused: its rows are data, not requests."""
    if how is None or (how.prompt is None and how.template is None):
        if how is not None and (how.system or how.id_column or how.response_format):
            raise UsageError(
                "--system, --id-column and --response-format shape a table's rows: give "
                "--prompt TEMPLATE or --template FILE too"
            )
        fmt = table_format(path)
        if fmt not in (None, "jsonl", HF_DATASET) and os.path.exists(path):
            raise UsageError(
                f"{path} is a table ({fmt}): give --prompt TEMPLATE or --template FILE to say "
                "how each row becomes a request"
            )
        return JobFile(path)
    fmt = table_format(path)
    if fmt is None:
        known = ", ".join(sorted(SUFFIXES))
        raise UsageError(
            f"{path}: not a table batchrunner reads (by its suffix: {known}, or a folder a "
            "Hugging Face dataset was saved to)"
        )
    if not os.path.exists(path):
        raise JobFileError([Problem(path, 0, "no such file")])
    return TableSource(path, fmt, RowRenderer(how, defaults.endpoint))


class TableSource:
    """A table's rows as Batch API lines (a `RequestSource`)."""

    unit = "row"

    def __init__(self, path: str, fmt: str, renderer: RowRenderer) -> None:
        self.path = path
        self.format = fmt
        self.renderer = renderer
        self._columns: dict[str, None] = {}  # every column seen, in order (JSON lines vary)
        self.unit = "line" if fmt == "jsonl" else "row"

    @property
    def columns(self) -> list[str]:
        """The table's columns in file order (for JSON lines: every key any row had, in the
        order first seen); known once the rows have been read."""
        return list(self._columns)

    def described(self) -> dict[str, Any]:
        """What the job's options keep of the table (the export reads it)."""
        return {"format": self.format, "columns": self.columns}

    def entries(self, digest: Any = None) -> Iterator[tuple[int, Entry]]:
        make, columns = self.renderer.line, self._columns
        for number, row in self.rows():
            if isinstance(row, LineError):
                yield number, row
                continue
            if len(row) != len(columns) or row.keys() != columns.keys():
                for key in row:
                    columns.setdefault(key, None)
            try:
                line = make(number, row)
            except LineError as exc:
                yield number, exc
                continue
            if digest is not None:  # the requests themselves: the same table and template
                digest.update(orjson.dumps(line))
            yield number, line

    def expected_items(self) -> int:
        """A Parquet file says how many rows it has; other files are guessed from their size
        at 16 bytes a row (a guess too high only costs the duplicate filter memory)."""
        if self.format == "parquet":
            _pyarrow()  # (the error naming the extra, when it is not installed)
            import pyarrow.parquet as pq

            try:
                return max(1, int(pq.ParquetFile(self.path).metadata.num_rows))
            except Exception:  # unreadable: reading its rows says why
                return 1
        files = Path(self.path).rglob("*.arrow") if self.format == HF_DATASET else [self.path]
        size = sum(os.path.getsize(name) for name in files if os.path.isfile(name))
        return max(1, size // 16)

    def occurrences(self, defaults: JobDefaults, suspects: set[str]) -> Iterator[tuple[str, int]]:
        custom_id = self.renderer.custom_id
        for number, row in self.rows():
            if isinstance(row, LineError):
                continue
            try:
                found = custom_id(number, row)
            except LineError:
                continue
            if found in suspects:
                yield found, number

    def rows(self) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
        """(row number from 1, the row's columns) in file order, or why a row is unreadable."""
        readers: dict[str, Callable[[str], Iterator[tuple[int, dict[str, Any] | LineError]]]]
        readers = {
            "csv": csv_rows,
            "parquet": parquet_rows,
            "arrow": arrow_file_rows,
            "jsonl": json_rows,
            HF_DATASET: dataset_rows,
        }
        return readers[self.format](self.path)


def write_job_lines(source: RequestSource, defaults: JobDefaults, out: IO[bytes]) -> int:
    """`render`: the Batch API lines `submit` would record, one per request; return how many
    (the source must have passed `check_source`)."""
    from batchrunner.dialects.openai import batch_line

    count = 0
    for item in read_source_items(source, defaults):
        body, extra = item.body.decode(), item.extra.decode() if item.extra else None
        out.write(batch_line(item.custom_id, item.url, body, extra))
        count += 1
    return count


# -- templates -----------------------------------------------------------------------------------


class RowRenderer:
    """A row -> its Batch API line, by the templates compiled once."""

    def __init__(self, how: RowTemplate, endpoint: str) -> None:
        if how.prompt is not None and how.template is not None:
            raise UsageError("give --prompt TEMPLATE or --template FILE, not both")
        if how.system is not None and how.template is not None:
            raise UsageError("--system goes with --prompt; with --template, put it in the file")
        if how.system is not None and endpoint not in (CHAT, RESPONSES):
            raise UsageError(f"--system needs a chat or responses endpoint, not {endpoint}")
        self.endpoint = endpoint
        self.system = how.system
        self.id_column = how.id_column
        self._whole = how.template is not None  # the template renders JSON, not a prompt
        if how.template is not None:
            source, origin = _read_text(how.template, "--template"), how.template
        else:
            source, origin = how.prompt or "", "--prompt"
        self._template = _Compiled(source, origin)
        self._format = (
            _response_format(how.response_format, endpoint) if how.response_format else None
        )

    def custom_id(self, number: int, row: dict[str, Any]) -> str:
        if self.id_column is None:
            return str(number)
        value = row.get(self.id_column, _MISSING)
        if value is _MISSING:
            raise LineError(f'no column "{self.id_column}" (--id-column)')
        if value is None or value == "":
            raise LineError(f'the id column "{self.id_column}" is empty')
        return value if isinstance(value, str) else orjson.dumps(value).decode()

    def line(self, number: int, row: dict[str, Any]) -> dict[str, Any]:
        """The row's Batch API line, its columns as metadata; or raise `LineError`."""
        text = self._template.render(row)
        body = self._whole_body(text) if self._whole else self._prompt_body(text)
        if self._format is not None:
            self._add_format(body)
        return {
            "custom_id": self.custom_id(number, row),
            "method": "POST",
            "url": self.endpoint,
            "body": body,
            "metadata": row,
        }

    def _prompt_body(self, text: str) -> dict[str, Any]:
        if self.endpoint == CHAT:
            user = {"role": "user", "content": text}
            if self.system is None:
                return {"messages": [user]}
            return {"messages": [{"role": "system", "content": self.system}, user]}
        if self.endpoint == RESPONSES and self.system is not None:
            return {"input": text, "instructions": self.system}
        return {"prompt": text} if self.endpoint in PROMPTED else {"input": text}

    def _whole_body(self, text: str) -> dict[str, Any]:
        """A rendered --template: a JSON array is the messages (chat) or the input (responses),
        an object the whole request body."""
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise LineError(
                f"the template's text is not JSON (column {exc.pos + 1}: {exc.msg}); put "
                "values in with | tojson"
            ) from None
        if isinstance(value, dict):
            return value
        if isinstance(value, list) and self.endpoint in (CHAT, RESPONSES):
            return {"messages": value} if self.endpoint == CHAT else {"input": value}
        lists = " or a message list" if self.endpoint in (CHAT, RESPONSES) else ""
        raise LineError(f"the template must render a JSON object (the request body){lists}")

    def _add_format(self, body: dict[str, Any]) -> None:
        key = "response_format" if self.endpoint == CHAT else "text"
        if key in body:
            raise LineError(f'the template sets "{key}" and so does --response-format')
        body[key] = self._format


_MISSING = object()


class _Compiled:
    """One Jinja2 template, sandboxed and strict, compiled once; rendered per row."""

    def __init__(self, source: str, origin: str) -> None:
        from jinja2 import StrictUndefined, TemplateSyntaxError, meta
        from jinja2.runtime import Context
        from jinja2.sandbox import SandboxedEnvironment

        env = SandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
        )
        try:
            template = env.from_string(source)
            self._names = sorted(meta.find_undeclared_variables(env.parse(source)))
        except TemplateSyntaxError as exc:
            raise UsageError(
                f"{origin}: template error on line {exc.lineno}: {exc.message}"
            ) from None
        self._env, self._context, self._template = env, Context, template
        self._globals = dict(template.globals)  # a plain dict: copied once per row
        self._root, self._blocks, self._name = template.root_render_func, template.blocks, None

    def render(self, row: dict[str, Any]) -> str:
        """The template's text for one row (the row's columns, and `row` for all of them), or
        raise `LineError` naming the column it lacks or what the template did wrong."""
        names = {**self._globals, "row": row, **row}
        try:
            return "".join(self._root(self._context(self._env, names, self._name, self._blocks)))
        except Exception as exc:  # the template is the user's code: any error is this row's
            from jinja2 import UndefinedError

            missing = [n for n in self._names if n not in names]
            if isinstance(exc, UndefinedError) and missing:
                shown = ", ".join(list(row)[:SHOWN_COLUMNS]) + (
                    ", ..." if len(row) > SHOWN_COLUMNS else ""
                )
                raise LineError(
                    f'no column "{missing[0]}" (the template uses it; the row has: {shown})'
                ) from None
            raise LineError(f"the template failed: {type(exc).__name__}: {exc}") from None


def _read_text(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path}: cannot read it: {exc}") from None


def _response_format(path: str, endpoint: str) -> dict[str, Any]:
    """--response-format FILE as the endpoint takes it: chat's `response_format` json_schema,
    responses' `text.format`. The file is a JSON Schema, or the json_schema object itself
    ({"name", "schema", "strict"?}); a bare schema is named after the file."""
    if endpoint not in (CHAT, RESPONSES):
        raise UsageError(f"--response-format needs a chat or responses endpoint, not {endpoint}")
    try:
        given = orjson.loads(_read_text(path, "--response-format"))
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--response-format {path}: not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise UsageError(f"--response-format {path}: expected a JSON Schema object")
    if given.get("type") == "json_schema" and isinstance(given.get("json_schema"), dict):
        given = given["json_schema"]  # a whole chat response_format
    if "schema" in given and isinstance(given.get("schema"), dict):
        spec = dict(given)
    else:
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(path).stem)[:64]
        spec = {"name": name or "schema", "schema": given}
    spec.setdefault("name", "schema")
    if endpoint == CHAT:
        return {"type": "json_schema", "json_schema": spec}
    return {"format": {"type": "json_schema", **spec}}


# -- readers -------------------------------------------------------------------------------------

Rows = Iterator[tuple[int, dict[str, Any] | LineError]]


def csv_rows(path: str) -> Rows:
    """A CSV file with a header row; every cell a string. Blank lines are skipped."""
    csv.field_size_limit(min(MAX_LINE_BYTES, sys.maxsize))  # the module's own limit: 128 KiB
    try:
        handle = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as exc:
        raise JobFileError([Problem(path, 0, f"cannot read: {exc.strerror}")]) from None
    number = 0
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                return
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise JobFileError(
                    [Problem(path, 0, f'the header names column "{repeated[0]}" twice')]
                )
            width = len(header)
            for cells in reader:
                if not cells:
                    continue
                number += 1
                if len(cells) != width:
                    yield number, LineError(f"has {len(cells)} cells; the header has {width}")
                    continue
                yield number, dict(zip(header, cells, strict=True))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise JobFileError(
                [Problem(path, number + 1, f"unreadable CSV: {exc}", "row")]
            ) from None


def json_rows(path: str) -> Rows:
    """JSON lines of data: each line an object, its keys the columns (numbered by line)."""
    for number, raw in file_lines(path):
        if raw is None:
            yield number, LineError(f"line is longer than {MAX_LINE_BYTES // 2**20} MiB")
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield number, LineError(f"invalid JSON at column {exc.pos + 1}: {exc.msg}")
            continue
        if not isinstance(row, dict):
            if isinstance(row, list) and number == 1:  # one array of rows, not JSON lines
                raise JobFileError(
                    [
                        Problem(
                            path, 0, "holds a JSON array: give JSON lines (one row object a line)"
                        )
                    ]
                )
            yield number, LineError("expected a JSON object (a row of data)")
            continue
        yield number, row


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise UsageError(
            "reading Parquet and Arrow files needs pyarrow: pip install 'batchrunner[tables]'"
        ) from None
    return pyarrow


def parquet_rows(path: str) -> Rows:
    _pyarrow()
    import pyarrow.parquet as pq

    try:
        # buffered reads stream a column chunk page by page: unbuffered, pyarrow reads a whole
        # row group's chunk at once (a 1M-row group of 1 KB texts took 1 GB)
        parquet = pq.ParquetFile(path, buffer_size=PARQUET_BUFFER, pre_buffer=False)
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet vary
        raise JobFileError([Problem(path, 0, f"not a readable Parquet file: {exc}")]) from None
    return _batch_rows(path, parquet.iter_batches(batch_size=BATCH_ROWS))


def arrow_file_rows(path: str) -> Rows:
    """An Arrow IPC file (a stream, as `datasets` saves its shards, or the file format)."""
    pa = _pyarrow()
    try:
        source = pa.OSFile(path, "rb")
    except OSError as exc:
        raise JobFileError([Problem(path, 0, f"cannot read: {exc}")]) from None
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.close()
        try:
            reader = pa.ipc.open_file(path)
        except Exception as exc:
            raise JobFileError([Problem(path, 0, f"not an Arrow file: {exc}")]) from None
        return _batch_rows(path, (reader.get_batch(i) for i in range(reader.num_record_batches)))
    return _batch_rows(path, iter(reader))


def dataset_rows(path: str) -> Rows:
    """A folder `datasets.Dataset.save_to_disk` wrote, read offline, in arrow batches."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing is ever downloaded
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"{path} is a folder: reading a saved Hugging Face dataset needs datasets: "
            "pip install 'batchrunner[hf]'"
        ) from None
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise JobFileError(
            [Problem(path, 0, f"not a saved Hugging Face dataset (save_to_disk): {exc}")]
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        raise UsageError(
            f"{path} holds the splits {splits}: give one split's folder ({path}/SPLIT)"
        )
    batches = loaded.with_format("arrow").iter(batch_size=BATCH_ROWS)
    return _batch_rows(path, (table for table in batches))


def _batch_rows(path: str, batches: Iterator[Any]) -> Rows:
    """Rows of Arrow record batches (or tables), column by column into Python values that
    JSON takes."""
    number = 0
    try:
        for batch in batches:
            names = batch.schema.names
            columns = [
                _plain(column, field.type)
                for column, field in zip(batch.columns, batch.schema, strict=True)
            ]
            for values in zip(*columns, strict=True):
                number += 1
                yield number, dict(zip(names, values, strict=True))
    except OSError as exc:  # pyarrow's ArrowException subclasses include IOError ones
        raise JobFileError([Problem(path, number + 1, f"unreadable: {exc}", "row")]) from None


def _plain(column: Any, arrow_type: Any) -> list[Any]:
    import pyarrow.types as types

    values: list[Any] = column.to_pylist()
    if (
        types.is_string(arrow_type)
        or types.is_large_string(arrow_type)
        or types.is_integer(arrow_type)
        or types.is_boolean(arrow_type)
        or types.is_null(arrow_type)
        or (types.is_floating(arrow_type) and not types.is_float16(arrow_type))
    ):
        return values
    return [json_value(value) for value in values]


def json_value(value: Any) -> Any:
    """A cell as JSON has it: dates and times as ISO text, decimals as text (exactly), bytes as
    base64, durations in seconds, nested lists and structs alike."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return str(value)
