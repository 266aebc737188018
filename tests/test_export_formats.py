"""Results out in the shapes other tools read: `export results --format openai` (the Batch API's
output lines, read back by the openai SDK's own types), and a table job's rows with their
answers beside them as CSV and Parquet (structured-output fields as columns, in input order,
a row group at a time)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from openai.types.shared import ErrorObject
from pydantic import BaseModel, ConfigDict

from batchrunner.dialects.openai import read_batch_line
from batchrunner.failures import SUCCEED, ErrorKind
from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from batchrunner.parquet import ROWS_PER_GROUP
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke, status_json


# The documented line of an output or error file (the API reference's BatchRequestOutput; the
# SDK has no type for it), with nothing else allowed: what parsers of those files expect.
class OutputResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    status_code: int
    request_id: str
    body: dict[str, Any]


class OutputError(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    code: str
    message: str


class BatchRequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    custom_id: str
    response: OutputResponse | None
    error: OutputError | None


BODY_TYPES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/embeddings": CreateEmbeddingResponse,
    "/v1/responses": Response,
}


def request_line(url: str, index: int, text: str, /, **body: Any) -> dict[str, Any]:
    """A Batch API line for `url` whose input is `text`."""
    if url == "/v1/chat/completions":
        return chat_line(index, text, **body)
    model = "text-embedding-3-small" if url == "/v1/embeddings" else "gpt-4.1-mini"
    return {
        "custom_id": f"item-{index}",
        "method": "POST",
        "url": url,
        "body": {"model": model, "input": text, **body},
    }


def submit(db_url: str, fake: FakeServer, job: Path, *more: str) -> int:
    """Run the job against the fake; its id."""
    result = invoke("submit", str(job), "--new", "--db", db_url, "--base-url", fake.base_url, *more)
    assert result.exit_code in (0, 1), result.output
    return int(status_json(db_url)["jobs"][-1]["id"])


def export(db_url: str, job_id: int, fmt: str, out: Path | None = None) -> bytes:
    where = ("-o", str(out)) if out is not None else ()
    args = ("export", "results", "--job", str(job_id), "--format", fmt, "--db", db_url, *where)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return out.read_bytes() if out is not None else result.stdout_bytes


def openai_lines(db_url: str, job_id: int) -> list[BatchRequestOutput]:
    raw = export(db_url, job_id, "openai")
    return [BatchRequestOutput.model_validate(orjson.loads(line)) for line in raw.splitlines()]


@pytest.mark.parametrize("url", sorted(BODY_TYPES))
def test_openai_format_is_read_back_by_the_sdks_types(
    url: str, tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [request_line(url, i, f"question number {i}") for i in range(6)]
    lines[3] = request_line(url, 3, "this one is refused [fake:400]")
    job_id = submit(db_url, fake, write_jsonl(tmp_path / "job.jsonl", lines))

    raw = export(db_url, job_id, "openai")
    records = [orjson.loads(line) for line in raw.splitlines()]
    assert [list(r) for r in records] == [["id", "custom_id", "response", "error"]] * 6
    outputs = [BatchRequestOutput.model_validate(r) for r in records]
    assert [o.custom_id for o in outputs] == [f"item-{i}" for i in range(6)]
    for index, output in enumerate(outputs):
        assert output.id.startswith("batch_req_") and output.error is None
        assert output.response is not None and output.response.request_id.startswith("req_")
        if index == 3:  # an HTTP answer that is not 200: in response, as the API writes it
            assert output.response.status_code == 400
            error = ErrorObject.model_validate(output.response.body["error"])
            assert error.type == "invalid_request_error"
            assert error.message == "Invalid request: 'messages' is malformed."
            continue
        assert output.response.status_code == 200
        body = BODY_TYPES[url].model_validate(output.response.body)
        if isinstance(body, ChatCompletion):
            assert body.choices[0].message.content == f"echo: question number {index}"
        elif isinstance(body, Response):
            assert body.output_text == f"echo: question number {index}"
        else:
            assert isinstance(body, CreateEmbeddingResponse) and len(body.data) == 1
    # batchrunner's own reader of output files takes them as the API's
    verdicts = [read_batch_line(line) for line in raw.splitlines()]
    assert [v.verdict.action == SUCCEED for v in verdicts if v] == [True] * 3 + [False] + [True] * 2
    assert verdicts[3] is not None and verdicts[3].verdict.kind == ErrorKind.INVALID_REQUEST
    # the ids are the item's: the same on every export, none shared
    assert export(db_url, job_id, "openai") == raw
    assert (
        len({o.id for o in outputs})
        == len({o.response.request_id for o in outputs if o.response})
        == 6
    )


def test_openai_format_of_a_batch_job_is_what_the_batch_api_wrote(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """Batch mode: answers and a 400 as the output and error files had them; a line the API
    refused at validation never got an HTTP answer, so its `error` says why."""
    lines = [chat_line(i) for i in range(4)]
    lines[1] = chat_line(1, "refused [fake:400]")
    lines[2] = chat_line(2, "rejected at validation [fake:batch_invalid]")
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    job_id = submit(db_url, fake, job, "--mode", "batch", "--wait", "--poll-interval", "0.05")
    answered, refused, rejected, last = openai_lines(db_url, job_id)
    for output in (answered, last):
        assert output.response is not None and output.error is None
        body = ChatCompletion.model_validate(output.response.body)
        assert body.choices[0].message.content == f"echo: question number {output.custom_id[-1]}"
    assert refused.response is not None and refused.response.status_code == 400
    assert refused.error is None
    assert rejected.response is None and rejected.error is not None
    assert "[fake:batch_invalid]" in rejected.error.message


def test_openai_format_an_item_without_an_http_answer_has_an_error_and_no_response(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """A timeout never got an answer: `error` says why, as the API's expired or cancelled lines
    do. Items still pending have no line; cancelled ones have the API's batch_cancelled."""
    fake.config.hang_seconds = 2.0  # past the timeout, and no long wait at the server's end
    lines = [chat_line(0), chat_line(1, "this one hangs [fake:hang]"), chat_line(2)]
    job_id = submit(
        db_url, fake, write_jsonl(tmp_path / "job.jsonl", lines), "--timeout", "0.5",
        "--max-attempts", "1",
    )  # fmt: skip
    first, hung, last = openai_lines(db_url, job_id)
    assert first.response is not None and last.response is not None
    assert hung.custom_id == "item-1" and hung.response is None
    assert hung.error is not None and hung.error.code == "timeout"

    waiting = write_jsonl(tmp_path / "later.jsonl", [chat_line(i) for i in range(3)])
    result = invoke("submit", str(waiting), "--detach", "--db", db_url)
    assert result.exit_code == 0, result.output
    pending_job = int(status_json(db_url)["jobs"][-1]["id"])
    assert openai_lines(db_url, pending_job) == []
    assert invoke("cancel", str(pending_job), "--db", db_url).exit_code == 0
    cancelled = openai_lines(db_url, pending_job)
    assert [c.custom_id for c in cancelled] == ["item-0", "item-1", "item-2"]
    for line in cancelled:
        assert line.response is None and line.error is not None
        assert line.error.code == "batch_cancelled" and "not executed" in line.error.message


# -- a job that came from a table ----------------------------------------------------------------

CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Baku", "Rome", "Riga"]


def table_job(
    db_url: str,
    fake: FakeServer,
    path: Path,
    rows: list[dict[str, Any]],
    prompt: Any,
    columns: list[str],
    **body: Any,
) -> int:
    """A job as a table's: each row's columns its metadata, the job's `table` option naming
    them (the contract the table reader fills); custom_ids not in input order."""
    lines = []
    for index, row in enumerate(rows):
        line = chat_line(index, prompt(index, row), **body)
        line["custom_id"] = f"row-{(index * 7919) % 100_003:05d}"
        line["metadata"] = row
        lines.append(line)
    job_id = submit(db_url, fake, write_jsonl(path, lines), "--concurrency", "64")
    ledger = Ledger(db_url, create=False)
    try:
        ledger.update_job_options(job_id, {"table": {"format": "csv", "columns": columns}})
    finally:
        ledger.close()
    return job_id


TABLE_ANSWERS = [
    "custom_id",
    "answer_status",  # the table has a column `status`: the answer's is renamed
    "output_text",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "finish_reason",
    "error",
]


def city_rows(count: int) -> list[dict[str, Any]]:
    return [
        {"city": CITIES[i % len(CITIES)], "n": str(i), "status": f"given {i}"} for i in range(count)
    ]


def city_prompt(index: int, row: dict[str, Any]) -> str:
    refused = " [fake:400]" if index == 4 else ""
    return f"row {row['n']} is {row['city']}{refused}"


def test_table_job_to_csv_has_its_rows_in_order_each_answer_beside_its_row(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    """On SQLite and PostgreSQL (the table option and the rows come back from either)."""
    db_url = ledger_url
    rows = city_rows(30)
    job_id = table_job(
        db_url, fake, tmp_path / "cities.jsonl", rows, city_prompt, ["city", "n", "status"]
    )
    table = list(csv.reader(io.StringIO(export(db_url, job_id, "csv").decode())))
    header, cells = table[0], table[1:]
    assert header == ["city", "n", "status", *TABLE_ANSWERS]
    records = [dict(zip(header, row, strict=True)) for row in cells]
    assert [(r["city"], r["n"], r["status"]) for r in records] == [
        (row["city"], row["n"], row["status"]) for row in rows
    ]
    for index, record in enumerate(records):
        if index == 4:
            assert record["answer_status"] == "failed" and record["output_text"] == ""
            assert record["error"] == "Invalid request: 'messages' is malformed."
            continue
        assert record["output_text"] == f"echo: row {index} is {CITIES[index % len(CITIES)]}"
        assert record["answer_status"] == "succeeded" and record["error"] == ""
        assert int(record["input_tokens"]) > 0 and int(record["output_tokens"]) > 0
        assert record["finish_reason"] == "stop"


def test_table_job_to_parquet_typed_columns_same_rows(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    rows = city_rows(30)
    job_id = table_job(
        db_url, fake, tmp_path / "cities.jsonl", rows, city_prompt, ["city", "n", "status"]
    )
    out = tmp_path / "cities.parquet"
    export(db_url, job_id, "parquet", out)
    read = pq.read_table(out)
    assert read.column_names == ["city", "n", "status", *TABLE_ANSWERS]
    types = dict(zip(read.column_names, read.schema.types, strict=True))
    assert types["city"] == types["n"] == types["output_text"] == pa.string()
    assert types["input_tokens"] == types["output_tokens"] == pa.int64()
    assert types["cost_usd"] == pa.float64()
    columns = read.to_pydict()
    assert columns["city"] == [row["city"] for row in rows]
    assert columns["n"] == [str(i) for i in range(30)]
    expected: list[str | None] = [f"echo: row {i} is {CITIES[i % len(CITIES)]}" for i in range(30)]
    expected[4] = None  # refused: no answer, its error instead
    assert columns["output_text"] == expected
    assert columns["error"][4] == "Invalid request: 'messages' is malformed."
    assert columns["answer_status"].count("succeeded") == 29


SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "score": {"type": "integer", "minimum": 3},
        "ratio": {"type": "number", "minimum": 0.5},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "note": {"type": ["string", "null"]},
    },
    "required": ["label", "score", "ratio", "ok", "tags", "note"],
    "additionalProperties": False,
}
FIELDS = ["output.label", "output.score", "output.ratio", "output.ok", "output.tags"]


def structured_body(endpoint: str) -> dict[str, Any]:
    if endpoint == "/v1/responses":
        return {"text": {"format": {"type": "json_schema", "name": "verdict", "schema": SCHEMA}}}
    wrapper = {"name": "verdict", "strict": True, "schema": SCHEMA}
    return {"response_format": {"type": "json_schema", "json_schema": wrapper}}


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/responses"])
def test_structured_answers_become_one_column_per_schema_property(
    endpoint: str, tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """The fake answers a json_schema request with the smallest object of the schema (strings:
    the echo; numbers: their minimum; booleans false; arrays minItems long); an answer that is
    not JSON (row 2, marked [fake:invalid_json]: the plain echo) leaves them empty.
    The table's own column `output.label` keeps its name; the answer's is answer_output.label."""
    rows = [{"city": CITIES[i], "output.label": f"mine {i}"} for i in range(5)]

    def prompt(index: int, row: dict[str, Any]) -> str:
        return f"judge {row['city']}" + (" [fake:invalid_json]" if index == 2 else "")

    lines = []
    for index, row in enumerate(rows):
        line = request_line(endpoint, index, prompt(index, row), **structured_body(endpoint))
        line["metadata"] = row
        lines.append(line)
    job_id = submit(db_url, fake, write_jsonl(tmp_path / "judge.jsonl", lines))
    ledger = Ledger(db_url, create=False)
    ledger.update_job_options(
        job_id, {"table": {"format": "parquet", "columns": ["city", "output.label"]}}
    )
    ledger.close()

    export(db_url, job_id, "parquet", tmp_path / "out.parquet")
    read = pq.read_table(tmp_path / "out.parquet")
    fields = ["answer_output.label", *FIELDS[1:], "output.note"]
    assert read.column_names == [
        "city", "output.label", "custom_id", "status", "output_text", *fields, "input_tokens",
        "output_tokens", "cost_usd", "finish_reason", "error",
    ]  # fmt: skip
    types = dict(zip(read.column_names, read.schema.types, strict=True))
    assert types["output.score"] == pa.int64() and types["output.ratio"] == pa.float64()
    assert types["output.ok"] == pa.bool_() and types["output.tags"] == pa.string()
    assert types["output.note"] == pa.string()  # ["string", "null"]: a string
    columns = read.to_pydict()
    assert columns["output.label"] == [f"mine {i}" for i in range(5)]
    for index in (0, 1, 3, 4):
        echo = f"echo: judge {CITIES[index]}"
        assert orjson.loads(columns["output_text"][index])["label"] == echo
        assert columns["answer_output.label"][index] == echo
        assert columns["output.score"][index] == 3
        assert columns["output.ratio"][index] == 0.5
        assert columns["output.ok"][index] is False
        assert orjson.loads(columns["output.tags"][index]) == [echo]
        assert columns["output.note"][index] == echo
    assert columns["output_text"][2] == f"echo: judge {CITIES[2]} [fake:invalid_json]"
    assert [columns[name][2] for name in fields] == [None] * len(fields)

    table = list(csv.DictReader(io.StringIO(export(db_url, job_id, "csv").decode())))
    assert table[0]["output.label"] == "mine 0"
    assert table[0]["answer_output.label"] == f"echo: judge {CITIES[0]}"
    assert table[0]["output.ok"] == "false" and table[0]["output.score"] == "3"
    assert orjson.loads(table[0]["output.tags"]) == [f"echo: judge {CITIES[0]}"]
    assert table[2]["output.score"] == "" and table[2]["output.ok"] == ""


def test_a_large_table_job_is_written_to_parquet_a_row_group_at_a_time(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """20,000 rows: the file holds one row group per ROWS_PER_GROUP items, each written as
    the ledger pages by (never the whole job at once), every answer beside its row."""
    count = 20_000
    rows = [{"n": str(i), "city": CITIES[i % len(CITIES)]} for i in range(count)]
    job_id = table_job(
        db_url, fake, tmp_path / "big.jsonl", rows, lambda i, row: f"row {i}", ["n", "city"]
    )
    out = tmp_path / "big.parquet"
    export(db_url, job_id, "parquet", out)
    file = pq.ParquetFile(out)
    assert file.metadata.num_rows == count
    assert file.metadata.num_row_groups == count // ROWS_PER_GROUP >= 4
    # types decided before the first group: a column empty in every group keeps its own
    costs = file.read(columns=["cost_usd", "error"])
    assert costs.column("cost_usd").null_count == costs.column("error").null_count == count
    assert costs.schema.field("cost_usd").type == pa.float64()  # unpriced on a local server
    assert costs.schema.field("error").type == pa.string()
    for group in range(file.metadata.num_row_groups):
        part = file.read_row_group(group, columns=["n", "output_text"]).to_pydict()
        first = group * ROWS_PER_GROUP
        numbers = list(range(first, first + ROWS_PER_GROUP))
        assert part["n"] == [str(i) for i in numbers]
        assert part["output_text"] == [f"echo: row {i}" for i in numbers]


# -- jobs not from a table, and Parquet without pyarrow ------------------------------------------

CSV_COLUMNS = [
    "custom_id", "status", "output_text", "error_kind", "error_code", "error_message",
    "attempts", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "cost_usd",
    "latency_ms", "finish_reason", "output_valid", "invalid_reason", "reused", "simulated",
    "response", "extra",
]  # fmt: skip


def test_a_job_not_from_a_table_keeps_its_csv_columns_and_parquet_has_the_same(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [chat_line(i) for i in range(3)]
    lines[1]["metadata"] = {"city": "Oslo"}  # metadata, but no table: kept as extra
    job_id = submit(db_url, fake, write_jsonl(tmp_path / "plain.jsonl", lines))
    table = list(csv.reader(io.StringIO(export(db_url, job_id, "csv").decode())))
    assert table[0] == CSV_COLUMNS
    assert table[2][CSV_COLUMNS.index("extra")] == '{"metadata":{"city":"Oslo"}}'
    out = tmp_path / "plain.parquet"
    export(db_url, job_id, "parquet", out)
    read = pq.read_table(out)
    assert read.column_names == CSV_COLUMNS
    columns = read.to_pydict()
    assert columns["output_text"] == [f"echo: question number {i}" for i in range(3)]
    assert columns["attempts"] == [1, 1, 1] and columns["reused"] == [False] * 3
    assert orjson.loads(columns["response"][0])["object"] == "chat.completion"
    assert columns["extra"][1] == '{"metadata":{"city":"Oslo"}}'


def test_parquet_without_pyarrow_is_one_line_naming_the_extra(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit(db_url, fake, write_jsonl(tmp_path / "plain.jsonl", [chat_line(0)]))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails
    out = tmp_path / "out.parquet"
    args = ("export", "results", "--job", str(job_id), "--format", "parquet", "-o", str(out))
    result = invoke(*args, "--db", db_url)
    assert result.exit_code == 2
    assert "pip install 'batchrunner[tables]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.glob("*.partial")) == []
