"""From a table to answers and back, as a user runs it from the shell: a CSV, a Parquet file or a
saved Hugging Face dataset, `submit --prompt` against the fake server, then `export results
--format csv|parquet`: the table's own columns, in its own order, each row beside its own
answer (the fake answers "echo: <prompt>", so an answer names the row it belongs to), and
with a `--response-format` schema one column per property of the answer."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from batchrunner.fake import FakeServer
from tests.test_cli import invoke

PROMPT = "Rate {{ city }} for a {{ trip }} trip"
# Not in custom_id order: the export must keep the table's order, not sort by id.
ROWS = [
    {"city": city, "trip": trip, "id": f"c{(7 * i) % 12:02d}"}
    for i, (city, trip) in enumerate(
        [("Oslo", "ski"), ("Lima", "food"), ("Pune", "work"), ("Kyiv", "art"), ("Baku", "sea"),
         ("Rome", "food"), ("Riga", "art"), ("Nice", "sea"), ("Bern", "work"), ("Cork", "ski"),
         ("Fes", "food"), ("Gdansk", "sea")]
    )
]  # fmt: skip
SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string"}, "stars": {"type": "integer", "minimum": 1}},
    "required": ["verdict", "stars"],
    "additionalProperties": False,
}


def write_table(kind: str, folder: Path) -> Path:
    if kind == "csv":
        path = folder / "cities.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ROWS[0]))
            writer.writeheader()
            writer.writerows(ROWS)
        return path
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "cities.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=5)
        return path
    import datasets

    path = folder / "cities_dataset"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    return path


def exported_rows(db: str, fmt: str, folder: Path) -> list[dict[str, Any]]:
    if fmt == "csv":
        result = invoke("export", "results", "--format", "csv", "--db", db)
        assert result.exit_code == 0, result.stderr
        return list(csv.DictReader(io.StringIO(result.stdout)))
    import pyarrow.parquet as pq

    out = folder / "answers.parquet"
    result = invoke("export", "results", "--format", "parquet", "-o", str(out), "--db", db)
    assert result.exit_code == 0, result.stderr
    return list(pq.read_table(out).to_pylist())


@pytest.mark.parametrize(
    ("kind", "fmt"), [("csv", "csv"), ("parquet", "parquet"), ("hf", "csv"), ("csv", "parquet")]
)
def test_a_table_comes_back_joined_with_its_answers(
    kind: str, fmt: str, tmp_path: Path, fake: FakeServer
) -> None:
    table = write_table(kind, tmp_path)
    schema = tmp_path / "rating.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    db = f"sqlite:///{tmp_path}/ledger.db"
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url}
    submitted = invoke(
        "submit", str(table), "--prompt", PROMPT, "--id-column", "id", "--model", "gpt-4o-mini",
        "--response-format", str(schema), "--db", db, env=env,
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr

    rows = exported_rows(db, fmt, tmp_path)
    assert len(rows) == len(ROWS)
    assert list(rows[0])[:3] == ["city", "trip", "id"]  # the table's own columns first
    for row, given in zip(rows, ROWS, strict=True):  # in the table's order
        assert {name: row[name] for name in given} == given
        answer = json.loads(row["output_text"])
        assert answer["verdict"] == f"echo: Rate {given['city']} for a {given['trip']} trip"
        assert row["output.verdict"] == answer["verdict"]  # the answer's own fields
        assert str(row["output.stars"]) == "1"  # the schema's smallest integer
        assert row["custom_id"] == given["id"] and row["status"] == "succeeded"
        assert int(row["input_tokens"]) > 0 and int(row["output_tokens"]) > 0
