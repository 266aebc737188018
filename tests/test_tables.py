"""Tables in: CSV, Parquet, JSON lines of data and saved Hugging Face datasets, each row one
request by a sandboxed Jinja2 template, through the real ledger and the fake server."""

from __future__ import annotations

import csv
import datetime
import io
import os
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner

from batchrunner.cli import cli
from batchrunner.commands import render_file, run_job, submit_job
from batchrunner.errors import JobFileError, UsageError
from batchrunner.export import write_results
from batchrunner.fake import FakeServer
from batchrunner.jobfile import JobDefaults
from batchrunner.ledger import Ledger
from batchrunner.settings import RunSettings
from batchrunner.tables import RowTemplate

PROMPT = "Review {{ id }} of {{ product }}: {{ text }}"
ROWS = [
    {"id": f"r{i}", "product": ["lamp", "desk", "chair"][i % 3], "text": f'opinion {i}, "quoted"'}
    for i in range(30)
]
MODEL = JobDefaults(model="gpt-4o-mini")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def submit_table(
    db_url: str, fake: FakeServer, path: Path, how: RowTemplate, **kwargs: Any
) -> tuple[Ledger, int]:
    settings = RunSettings(base_url=fake.base_url, hosted_prices=True)
    ledger, submitted = submit_job(
        db_url, str(path), defaults=MODEL, settings=settings, table=how, **kwargs
    )
    return ledger, submitted.job_id


def run_and_export(ledger: Ledger, job_id: int) -> list[dict[str, Any]]:
    async def go() -> None:
        with anyio.fail_after(60):
            report = await run_job(ledger, job_id)
            assert report.state == "completed"

    anyio.run(go)
    out = io.BytesIO()
    write_results(ledger, job_id, out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def answer(record: dict[str, Any]) -> str:
    return str(record["response"]["choices"][0]["message"]["content"])


def assert_rows_answered(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Every answer is its own row's prompt, and the row's columns came back as metadata."""
    assert len(records) == len(rows)
    for record, row in zip(records, rows, strict=True):
        assert record["status"] == "succeeded"
        assert record["custom_id"] == row["id"]
        assert answer(record) == f"echo: Review {row['id']} of {row['product']}: {row['text']}"
        assert record["metadata"] == row
        assert list(record["metadata"]) == list(row)  # the file's column order


def test_csv_rows_become_requests_answered_row_by_row_with_columns_as_metadata(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    path = write_csv(tmp_path / "reviews.csv", ROWS)
    how = RowTemplate(prompt=PROMPT, id_column="id", system="Answer in one word.")
    ledger, job_id = submit_table(ledger_url, fake, path, how)
    options, _ = ledger.job_options(job_id)
    assert options["table"] == {"format": "csv", "columns": ["id", "product", "text"]}
    records = run_and_export(ledger, job_id)
    assert_rows_answered(records, ROWS)
    sent = fake.requests_by_id
    assert set(sent) == {row["id"] for row in ROWS} and set(sent.values()) == {1}


def test_parquet_rows_with_typed_values_keep_them_as_json(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = [
        {
            **row,
            "stars": i % 5,
            "price": i * 1.5,
            "ok": i % 2 == 0,
            "note": None if i % 4 else "n",
            "day": datetime.date(2026, 1, 1 + i % 28),
        }
        for i, row in enumerate(ROWS)
    ]
    path = tmp_path / "reviews.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)  # rows across groups
    ledger, job_id = submit_table(db_url, fake, path, RowTemplate(prompt=PROMPT, id_column="id"))
    records = run_and_export(ledger, job_id)
    as_json = [{**row, "day": row["day"].isoformat()} for row in rows]
    assert_rows_answered(records, as_json)
    options, _ = ledger.job_options(job_id)
    assert options["table"] == {"format": "parquet", "columns": list(rows[0])}


def test_a_saved_hugging_face_dataset_folder_is_a_table(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    import datasets

    folder = tmp_path / "reviews_ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    ledger, job_id = submit_table(db_url, fake, folder, RowTemplate(prompt=PROMPT, id_column="id"))
    assert_rows_answered(run_and_export(ledger, job_id), ROWS)
    options, _ = ledger.job_options(job_id)
    assert options["table"]["format"] == "hf"


def test_json_lines_of_data_with_prompt_are_rows_not_requests(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in ROWS))
    ledger, job_id = submit_table(db_url, fake, path, RowTemplate(prompt=PROMPT, id_column="id"))
    assert_rows_answered(run_and_export(ledger, job_id), ROWS)


def test_a_missing_column_names_file_row_and_column_exits_2_and_records_nothing(
    tmp_path: Path, db_path: Path
) -> None:
    db = f"sqlite:///{db_path}"
    rows = [dict(row) for row in ROWS[:5]]
    path = tmp_path / "data.jsonl"
    del rows[3]["product"]  # row 4 lacks it
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    result = CliRunner().invoke(
        cli,
        ["submit", str(path), "--prompt", PROMPT, "--model", "m", "--detach", "--db", db],
    )
    assert result.exit_code == 2
    assert f'{path}:4: no column "product"' in result.output
    assert "row has: id, text" in result.output
    assert not db_path.exists()

    csv_path = write_csv(tmp_path / "data.csv", ROWS[:3])
    result = CliRunner().invoke(
        cli,
        [
            "submit",
            str(csv_path),
            "--prompt",
            "{{ review }}",
            "--model",
            "m",
            "--detach",
            "--db",
            db,
        ],
    )
    assert result.exit_code == 2
    for row in (1, 2, 3):
        assert f'{csv_path} row {row}: no column "review"' in result.output
    assert not db_path.exists()


def test_a_template_that_reaches_for_python_internals_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ROWS[:2])
    escape = "{{ text.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(JobFileError) as raised:
        render_file(str(path), MODEL, RowTemplate(prompt=escape), io.BytesIO())
    message = str(raised.value)
    assert f"{path} row 1: the template failed: SecurityError" in message
    assert "unsafe" in message
    with pytest.raises(JobFileError, match="SecurityError"):
        render_file(
            str(path), MODEL, RowTemplate(prompt="{{ cycler.__init__.__globals__ }}"), io.BytesIO()
        )


def test_render_writes_exactly_what_submit_records(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    path = write_csv(tmp_path / "reviews.csv", ROWS)
    schema = tmp_path / "verdict.json"
    schema.write_text('{"type": "object", "properties": {"good": {"type": "boolean"}}}')
    how = RowTemplate(prompt=PROMPT, response_format=str(schema))
    out = io.BytesIO()
    assert render_file(str(path), MODEL, how, out) == len(ROWS)
    rendered = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert rendered[0]["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": orjson.loads(schema.read_bytes())},
    }
    ledger, job_id = submit_table(db_url, fake, path, how)
    recorded = [
        {
            "custom_id": item.custom_id,
            "method": "POST",
            "url": item.url,
            "body": orjson.loads(item.body),
            **orjson.loads(item.extra or "{}"),
        }
        for item in ledger.iter_items(job_id)
    ]
    assert rendered == recorded
    assert [line["custom_id"] for line in rendered] == [str(n) for n in range(1, 31)]
    # and the rendered file is a job file of its own
    job_file = tmp_path / "rendered.jsonl"
    job_file.write_bytes(out.getvalue())
    again, submitted = submit_job(
        db_url, str(job_file), defaults=MODEL, settings=RunSettings(base_url=fake.base_url)
    )
    assert [(i.custom_id, i.body, i.extra) for i in again.iter_items(submitted.job_id)] == [
        (i.custom_id, i.body, i.extra) for i in ledger.iter_items(job_id)
    ]


def test_responses_endpoint_gets_input_instructions_and_text_format(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "reviews.csv", ROWS[:1])
    schema = tmp_path / "s.json"
    schema.write_text('{"name": "v", "schema": {"type": "object"}, "strict": true}')
    how = RowTemplate(prompt="{{ text }}", system="Be brief.", response_format=str(schema))
    out = io.BytesIO()
    render_file(str(path), JobDefaults(endpoint="/v1/responses", model="m"), how, out)
    body = orjson.loads(out.getvalue())["body"]
    assert body == {
        "input": ROWS[0]["text"],
        "instructions": "Be brief.",
        "text": {
            "format": {
                "type": "json_schema",
                "name": "v",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        "model": "m",
    }


def test_a_template_file_renders_a_message_list_or_a_whole_body(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "reviews.csv", ROWS[:2])
    messages = tmp_path / "messages.j2"
    messages.write_text(
        '[{"role": "system", "content": "About {{ product }}"},\n'
        ' {"role": "user", "content": {{ text | tojson }}}]\n'
    )
    out = io.BytesIO()
    render_file(str(path), MODEL, RowTemplate(template=str(messages)), out)
    first = orjson.loads(out.getvalue().splitlines()[0])["body"]
    assert first["messages"][1] == {"role": "user", "content": ROWS[0]["text"]}
    whole = tmp_path / "body.j2"
    whole.write_text('{"model": "other", "input": {{ text | tojson }}}')
    out = io.BytesIO()
    render_file(
        str(path), JobDefaults(endpoint="embeddings"), RowTemplate(template=str(whole)), out
    )
    assert orjson.loads(out.getvalue().splitlines()[1])["body"] == {
        "model": "other",
        "input": ROWS[1]["text"],
    }
    broken = tmp_path / "broken.j2"
    broken.write_text('{"input": {{ text }}}')  # not put in with tojson
    with pytest.raises(JobFileError, match=r"row 1: the template's text is not JSON"):
        render_file(str(path), MODEL, RowTemplate(template=str(broken)), io.BytesIO())


def test_id_column_duplicates_are_refused_naming_both_rows(tmp_path: Path, db_path: Path) -> None:
    db = f"sqlite:///{db_path}"
    rows = [dict(row) for row in ROWS]
    rows[20]["id"] = rows[4]["id"]
    path = write_csv(tmp_path / "data.csv", rows)
    result = CliRunner().invoke(
        cli,
        [
            "submit",
            str(path),
            "--prompt",
            PROMPT,
            "--id-column",
            "id",
            "--model",
            "m",
            "--detach",
            "--db",
            db,
        ],
    )
    assert result.exit_code == 2
    assert f'{path} row 21: duplicate custom_id "r4" (first on row 5)' in result.output
    assert not db_path.exists()


def test_a_table_without_a_template_and_bad_templates_are_usage_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ROWS[:2])
    runner = CliRunner()
    result = runner.invoke(cli, ["submit", str(path), "--detach"])
    assert result.exit_code == 2 and "is a table (csv): give --prompt" in result.output
    with pytest.raises(UsageError, match="--prompt: template error on line 1"):
        render_file(str(path), MODEL, RowTemplate(prompt="{{ text "), io.BytesIO())
    with pytest.raises(UsageError, match="not both"):
        render_file(str(path), MODEL, RowTemplate(prompt="x", template="y"), io.BytesIO())


def test_render_cli_writes_a_file_and_records_nothing(tmp_path: Path, db_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ROWS[:3])
    out = tmp_path / "job.jsonl"
    result = CliRunner().invoke(
        cli, ["render", str(path), "--prompt", "{{ text }}", "--model", "m", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(out.read_bytes().splitlines()) == 3
    assert not db_path.exists()


def test_a_saved_arrow_file_is_a_table_too(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    import datasets

    folder = tmp_path / "reviews_ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    (arrow,) = folder.glob("*.arrow")  # the shard datasets wrote: an Arrow stream
    ledger, job_id = submit_table(db_url, fake, arrow, RowTemplate(prompt=PROMPT, id_column="id"))
    assert_rows_answered(run_and_export(ledger, job_id), ROWS)


def test_the_readmes_table_example_runs(db_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    db = f"sqlite:///{db_path}"
    result = CliRunner().invoke(
        cli,
        [
            "submit",
            str(repo / "jobs" / "reviews.csv"),
            "--model",
            "gpt-4o-mini",
            "--id-column",
            "review_id",
            "--system",
            "Classify the review.",
            "--prompt",
            "{{ product }}, {{ stars }} stars: {{ row['text'] }}",
            "--response-format",
            str(repo / "jobs" / "sentiment.schema.json"),
            "--simulate",
            "--db",
            db,
        ],
    )
    assert result.exit_code == 0, result.output
    out = io.BytesIO()
    ledger = Ledger(db)
    write_results(ledger, ledger.find_job(), out)
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [r["custom_id"] for r in records] == [f"r-00{i}" for i in range(1, 7)]
    assert {r["status"] for r in records} == {"succeeded"}
    first = records[0]
    body = orjson.loads(next(iter(ledger.iter_items(ledger.find_job()))).body)
    assert body["messages"][1]["content"].startswith("desk lamp, 5 stars: Bright, warm light")
    assert body["response_format"]["json_schema"]["name"] == "sentiment_schema"
    assert first["metadata"]["stars"] == "5" and list(first["metadata"]) == [
        "review_id",
        "product",
        "stars",
        "text",
    ]
    ledger.close()


def test_unreadable_rows_are_named_and_at_most_twenty_listed(tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n" + "x,y\n" * 30)
    with pytest.raises(JobFileError) as raised:
        render_file(str(ragged), MODEL, RowTemplate(prompt="{{ a }} {{ c }}"), io.BytesIO())
    problems = raised.value.problems
    assert str(problems[1]) == f"{ragged} row 2: has 1 cells; the header has 2"
    assert len(problems) == 20 and raised.value.more == 12
    array = tmp_path / "rows.json"
    array.write_text('[{"a": 1}]\n')
    with pytest.raises(JobFileError, match="holds a JSON array: give JSON lines"):
        render_file(str(array), MODEL, RowTemplate(prompt="{{ a }}"), io.BytesIO())
    with pytest.raises(UsageError, match="give --prompt TEMPLATE or --template FILE too"):
        render_file(str(array), MODEL, RowTemplate(system="s"), io.BytesIO())


@pytest.mark.parametrize(
    ("blocked", "extra"), [("pyarrow", "batchrunner[tables]"), ("datasets", "batchrunner[hf]")]
)
def test_a_missing_extra_is_named_in_one_line(tmp_path: Path, blocked: str, extra: str) -> None:
    """A Python without pyarrow or datasets (made so by blocking its import in the child)."""
    import subprocess
    import sys

    if blocked == "pyarrow":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"a": [1]}), path)
    else:
        path = tmp_path / "ds"
        path.mkdir()
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from batchrunner.cli import main\n"
        f"sys.argv = ['batchrunner', 'render', {str(path)!r}, '--prompt', '{{{{ a }}}}']\n"
        "main()\n"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"pip install '{extra}'" in done.stderr
    assert "Traceback" not in done.stderr
