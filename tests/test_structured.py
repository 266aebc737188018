"""Structured outputs checked (issue 16): an answer to a request that asks for a JSON schema
(chat's response_format, the responses API's text.format) or a JSON object is parsed and
validated; an invalid one is kept (it was billed), flagged, counted in `status`, and asked for
again up to --retry-invalid times, every attempt recorded, in both modes. The fake server
answers such requests with JSON that fits, unless a `[fake:invalid_json]` or
`[fake:invalid_schema]` marker says otherwise.

Tests taking `ledger_url` run on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from sqlalchemy import update

from batchrunner.fake import FakeServer
from batchrunner.fake.structured import minimal_instance, structured_text
from batchrunner.ledger import ItemRow, Ledger
from batchrunner.ledger.models import items_t
from batchrunner.structured import COMPILED, Answer, OutputChecker, OutputFormat
from tests import test_batch_mode, test_run
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke
from tests.test_run import exported, run
from tests.test_status import job_status, status_text

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "kind": {"enum": ["person", "robot"]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any], name: str = "person") -> dict[str, Any]:
    """Chat's response_format for a JSON schema, as the API reference spells it."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def structured_line(index: int, text: str | None = None, **body: Any) -> dict[str, Any]:
    return chat_line(index, text, response_format=schema_format(PERSON), **body)


def responses_line(index: int, text: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": f"item-{index}",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o-mini",
            "input": text,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "person",
                    "schema": schema,
                    "strict": True,
                }
            },
        },
    }


def items_by_id(ledger: Ledger, job: int) -> dict[str, ItemRow]:
    return {row.custom_id: row for row in ledger.iter_items(job)}


def content_of(row: ItemRow) -> Any:
    assert row.result.response is not None
    return orjson.loads(orjson.loads(row.result.response)["choices"][0]["message"]["content"])


def test_valid_answers_pass_unflagged_and_the_fake_answers_json_that_fits(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(
        tmp_path, ledger_url, fake, [structured_line(i) for i in range(5)]
    )
    assert run(ledger, job).state == "completed"
    for index, row in enumerate(items_by_id(ledger, job).values()):
        assert (row.state, row.attempts) == ("succeeded", 1)
        assert (row.result.output_valid, row.result.invalid_reason) == (True, None)
        answer = content_of(row)
        jsonschema.validate(answer, PERSON)
        assert answer["name"] == f"echo: question number {index}"  # still matched to its row
    status = job_status(ledger_url, job)
    assert status["flagged"] == {} and status["counts"]["succeeded"] == 5
    records = exported(ledger, job)
    assert [(r["output_valid"], r["invalid_reason"]) for r in records] == [(True, None)] * 5


def test_plain_requests_are_not_checked(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    ledger, job = test_run.submit(tmp_path, db_url, fake, [chat_line(0), chat_line(1)])
    assert run(ledger, job).state == "completed"
    assert {row.result.output_valid for row in ledger.iter_items(job)} == {None}


def test_invalid_answers_are_kept_flagged_and_counted_in_status(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [structured_line(i) for i in range(3)]
    lines += [
        structured_line(3, "[fake:invalid_json] who?"),
        structured_line(4, "[fake:invalid_schema]"),
    ]
    lines.append(chat_line(5, "[fake:length] a long story"))
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines)
    assert run(ledger, job).state == "completed"  # exit 0: the answers were billed and kept
    rows = items_by_id(ledger, job)
    not_json, not_fitting = rows["item-3"], rows["item-4"]
    assert (not_json.state, not_json.attempts, not_json.result.output_valid) == (
        "succeeded",
        1,
        False,
    )
    assert not_json.result.invalid_reason is not None
    assert not_json.result.invalid_reason.startswith("not JSON: ")
    assert not_json.result.cost_usd is not None and not_json.result.cost_usd > 0
    assert (not_fitting.state, not_fitting.result.output_valid) == ("succeeded", False)
    assert not_fitting.result.invalid_reason == "$: 'name' is a required property"
    status = job_status(ledger_url, job)
    assert status["flagged"] == {"invalid_output": 2, "length": 1}
    assert status["counts"] == {**status["counts"], "succeeded": 6, "failed": 0}
    assert "succeeded 6 (1 cut by length, 2 invalid structured output)" in status_text(
        ledger_url, job
    )


def test_an_invalid_first_answer_is_asked_for_again_and_the_second_is_valid(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [structured_line(0), structured_line(1, "[fake:invalid_jsonx1] who?")]
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines, retry_invalid=2)
    assert run(ledger, job).state == "completed"
    rows = items_by_id(ledger, job)
    assert rows["item-0"].attempts == 1
    mended = rows["item-1"]
    assert (mended.state, mended.attempts, mended.result.output_valid) == ("succeeded", 2, True)
    assert mended.result.invalid_reason is None
    attempts = ledger.attempts_of(mended.id)
    assert [(a.number, a.outcome, a.result.output_valid) for a in attempts] == [
        (1, "retry", False),
        (2, "succeeded", True),
    ]
    assert attempts[0].result.invalid_reason is not None
    assert all(a.result.cost_usd for a in attempts)  # both were billed
    assert job_status(ledger_url, job)["flagged"] == {}


def test_when_the_retries_run_out_the_last_answer_stays_flagged(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [structured_line(0, "[fake:invalid_schema] who?"), structured_line(1)]
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines, retry_invalid=2)
    assert run(ledger, job).state == "completed"
    stubborn = items_by_id(ledger, job)["item-0"]
    assert (stubborn.state, stubborn.attempts, stubborn.result.output_valid) == (
        "succeeded",
        3,
        False,
    )
    assert stubborn.result.response is not None  # the last answer is the result
    outcomes = [(a.outcome, a.result.output_valid) for a in ledger.attempts_of(stubborn.id)]
    assert outcomes == [("retry", False), ("retry", False), ("succeeded", False)]
    assert fake.requests_by_id["item-0"] == 3
    assert job_status(ledger_url, job)["flagged"] == {"invalid_output": 1}


def test_max_attempts_bounds_the_invalid_retries(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [structured_line(0, "[fake:invalid_json]")]
    ledger, job = test_run.submit(tmp_path, db_url, fake, lines, retry_invalid=5, max_attempts=2)
    assert run(ledger, job).state == "completed"
    (row,) = ledger.iter_items(job)
    assert (row.state, row.attempts, row.result.output_valid) == ("succeeded", 2, False)


def test_json_object_answers_must_be_objects(tmp_path: Path, db_url: str, fake: FakeServer) -> None:
    texts = [None, "[fake:invalid_schema]", "[fake:invalid_json]"]
    lines = [
        chat_line(i, text, response_format={"type": "json_object"}) for i, text in enumerate(texts)
    ]
    ledger, job = test_run.submit(tmp_path, db_url, fake, lines)
    assert run(ledger, job).state == "completed"
    rows = items_by_id(ledger, job)
    assert content_of(rows["item-0"]) == {"echo": "echo: question number 0"}
    assert rows["item-0"].result.output_valid is True
    assert rows["item-1"].result.invalid_reason == "not a JSON object: null"
    assert rows["item-2"].result.output_valid is False
    assert job_status(db_url, job)["flagged"] == {"invalid_output": 2}


def test_responses_text_format_is_checked_on_its_output_text(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [responses_line(0, "who are you", PERSON)]
    lines.append(responses_line(1, "[fake:invalid_schemax1] who?", PERSON))
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines, retry_invalid=1)
    assert run(ledger, job).state == "completed"
    rows = items_by_id(ledger, job)
    assert (rows["item-0"].result.output_valid, rows["item-0"].attempts) == (True, 1)
    assert (rows["item-1"].result.output_valid, rows["item-1"].attempts) == (True, 2)
    first = ledger.attempts_of(rows["item-1"].id)[0]
    assert (first.outcome, first.result.invalid_reason) == (
        "retry",
        "$: 'name' is a required property",
    )


def test_batch_mode_sends_an_invalid_answer_again_in_the_next_batch(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    lines = [structured_line(0), structured_line(1, "[fake:invalid_jsonx1] who?")]
    lines.append(structured_line(2, "[fake:invalid_schema] who?"))
    ledger, job = test_batch_mode.submit(tmp_path, ledger_url, fake, lines, retry_invalid=1)
    assert test_batch_mode.wait_for(ledger, job).state == "completed"
    rows = items_by_id(ledger, job)
    assert (rows["item-0"].attempts, rows["item-0"].result.output_valid) == (1, True)
    mended = rows["item-1"]
    assert (mended.state, mended.attempts, mended.result.output_valid) == ("succeeded", 2, True)
    assert [a.outcome for a in ledger.attempts_of(mended.id)] == ["retry", "succeeded"]
    stubborn = rows["item-2"]
    assert (stubborn.state, stubborn.attempts, stubborn.result.output_valid) == (
        "succeeded",
        2,
        False,
    )
    assert fake.batch_api.batches_created == 2
    assert job_status(ledger_url, job)["flagged"] == {"invalid_output": 1}


def test_batch_mode_without_retries_flags_and_keeps(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [structured_line(0), structured_line(1, "[fake:invalid_json]")]
    ledger, job = test_batch_mode.submit(tmp_path, db_url, fake, lines)
    assert test_batch_mode.wait_for(ledger, job).state == "completed"
    rows = items_by_id(ledger, job)
    assert [(r.state, r.attempts, r.result.output_valid) for r in rows.values()] == [
        ("succeeded", 1, True),
        ("succeeded", 1, False),
    ]
    assert fake.batch_api.batches_created == 1


def test_each_distinct_schema_is_compiled_once_a_run(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    """300 answers, two schemas (one of them written with its keys in two orders: the same
    schema, by its canonical JSON): two compilations."""
    reordered = dict(reversed(list(PERSON.items())))
    other = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}
    formats = [schema_format(PERSON), schema_format(reordered), schema_format(other, "n")]
    lines = [chat_line(i, response_format=formats[i % 3]) for i in range(300)]
    ledger, job = test_run.submit(tmp_path, db_url, fake, lines)
    COMPILED.clear()
    assert run(ledger, job).state == "completed"
    assert sorted(COMPILED.values()) == [1, 1]
    assert {row.result.output_valid for row in ledger.iter_items(job)} == {True}


def test_the_checker_reads_refusals_choices_and_broken_schemas() -> None:
    checker = OutputChecker()
    person = OutputFormat.of("json_schema", PERSON)
    assert person is not None
    valid = orjson.dumps({"name": "a", "age": 1, "tags": ["x"], "kind": "robot"}).decode()
    assert checker.check(person, [Answer(valid)]).valid
    refused = checker.check(person, [Answer(None, "I cannot help with that")])
    assert (refused.valid, refused.reason) == (False, "refused: I cannot help with that")
    second = checker.check(person, [Answer(valid), Answer('{"age": -1}')])
    assert second.reason is not None and second.reason.startswith("choice 1: ")
    broken = OutputFormat.of("json_schema", {"type": "no-such-type"})
    assert broken is not None
    check = checker.check(broken, [Answer("{}")])
    assert (check.valid, check.retryable) == (False, False)
    assert OutputFormat.of("text") is None


@pytest.mark.parametrize(
    "schema",
    [
        PERSON,
        {
            "type": "array",
            "items": {"$ref": "#/$defs/point"},
            "minItems": 2,
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}},
                    "required": ["x"],
                }
            },
        },
        {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer"}]},
        {"type": ["null", "integer"], "exclusiveMinimum": 4},
        {"type": "string", "minLength": 300},
    ],
)
def test_the_fakes_minimal_instance_fits_its_schema(schema: dict[str, Any]) -> None:
    jsonschema.validate(minimal_instance(schema, schema, "echo: hi"), schema)
    wanted = OutputFormat.of("json_schema", schema)
    assert wanted is not None
    jsonschema.validate(orjson.loads(structured_text(wanted, "echo: hi", None)), schema)


def test_submit_refuses_a_schema_no_answer_could_be_checked_against(
    tmp_path: Path, db_path: Path, fake: FakeServer
) -> None:
    broken = chat_line(1, response_format=schema_format({"type": "no-such-type"}))
    responses = responses_line(2, "who", PERSON)
    responses["body"]["text"]["format"]["schema"] = "not a schema"
    path = write_jsonl(tmp_path / "job.jsonl", [structured_line(0), broken, responses])
    result = invoke(
        "submit", str(path), "--db", f"sqlite:///{db_path}", "--base-url", fake.base_url
    )
    assert result.exit_code == 2
    assert f"{path}:2: the request's schema is not a valid JSON schema: " in result.output
    assert f'{path}:3: "text.format.schema" must be a JSON schema object, got a string' in (
        result.output
    )
    assert not db_path.exists()  # nothing recorded


def test_a_resumed_items_earlier_invalid_answers_count_against_its_retries(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    """An item handed back mid-way (a kill's leftover, once the next run takes it back) has its
    invalid answers in the attempts table: --retry-invalid counts them, not from 0 again."""
    lines = [structured_line(0, "[fake:invalid_json] who?")]
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, lines)
    assert run(ledger, job).state == "completed"
    (row,) = ledger.iter_items(job)
    assert ledger.invalid_answers({row.id: 0}) == {row.id: 1}
    with ledger.engine.begin() as conn:  # as a dead run's item is left once taken back
        conn.execute(
            update(items_t).where(items_t.c.id == row.id).values(state="pending", run_id=None)
        )
    assert run(ledger, job, retry_invalid=2).state == "completed"
    (row,) = ledger.iter_items(job)
    assert (row.state, row.attempts, row.result.output_valid) == ("succeeded", 3, False)
    assert fake.requests_by_id["item-0"] == 3  # 1 before, then 2 more: not 1 + 3
    assert ledger.invalid_answers({row.id: 0}) == {row.id: 3}
    assert ledger.invalid_answers({row.id: 2}) == {row.id: 1}  # after `--retry-failed`'s floor
