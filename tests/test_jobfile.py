"""Job files: both line forms, defaults, and validation errors that name file:line."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from batchrunner.dialects.openai import normalize_endpoint
from batchrunner.errors import JobFileError
from batchrunner.jobfile import (
    MAX_PROBLEMS_SHOWN,
    JobDefaults,
    check_job_file,
    read_job_items,
)
from tests.conftest import chat_line, write_jsonl

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def problems_of(path: Path, defaults: JobDefaults | None = None) -> list[str]:
    with pytest.raises(JobFileError) as caught:
        check_job_file(str(path), defaults or JobDefaults())
    return [str(p) for p in caught.value.problems]


def test_batch_api_line_is_taken_as_is_and_extra_keys_are_kept(tmp_path: Path) -> None:
    line = chat_line(1)
    line["metadata"] = {"row": 7}
    path = write_jsonl(tmp_path / "j.jsonl", [line])
    summary = check_job_file(str(path), JobDefaults())
    assert summary.items == 1 and summary.models == {"gpt-4o-mini": 1}
    (item,) = read_job_items(str(path), JobDefaults())
    assert item.custom_id == "item-1"
    assert item.url == "/v1/chat/completions"
    assert orjson.loads(item.body) == line["body"]
    assert orjson.loads(item.extra or b"null") == {"metadata": {"row": 7}}


def test_short_form_gets_line_number_ids_and_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "short.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}]})
        + "\n\n"  # a blank line is skipped, not an error
        + json.dumps({"id": "mine", "input": "text", "url": "/v1/embeddings"})
        + "\n"
        + json.dumps({"custom_id": "r", "model": "gpt-4.1", "input": "x", "url": "responses"})
        + "\n"
    )
    defaults = JobDefaults(model="gpt-4o-mini")
    items = list(read_job_items(str(path), defaults))
    assert [i.custom_id for i in items] == ["1", "mine", "r"]
    assert [i.position for i in items] == [1, 3, 4]
    assert [i.url for i in items] == ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"]
    assert [i.model for i in items] == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4.1"]
    first = orjson.loads(items[0].body)
    assert first == {"messages": [{"role": "user", "content": "a"}], "model": "gpt-4o-mini"}
    assert "id" not in orjson.loads(items[1].body) and "url" not in orjson.loads(items[1].body)


def test_endpoint_default_applies_to_short_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [{"model": "text-embedding-3-small", "input": "x"}])
    (item,) = read_job_items(str(path), JobDefaults(endpoint=normalize_endpoint("embeddings")))
    assert item.url == "/v1/embeddings"


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    lines = [json.dumps(chat_line(i)) for i in range(3)]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n   \r\n")
    assert check_job_file(str(path), JobDefaults()).items == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ("null", "expected a JSON object, got null"),
        ('"text"', "expected a JSON object, got a string"),
        ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}', 'missing "body"'),
        ('{"custom_id": "a", "body": [1]}', '"body" must be an object, got an array'),
        ('{"custom_id": "a", "method": "GET", "body": {}}', 'method must be "POST", got "GET"'),
        ('{"custom_id": 5, "body": {}}', "custom_id must be a non-empty string, got a number"),
        ('{"id": "", "model": "m", "messages": []}', "id must be a non-empty string"),
        ('{"url": "/v1/images", "model": "m", "prompt": "x"}', 'unknown url "/v1/images"'),
        ('{"messages": [{"role": "user", "content": "x"}]}', 'missing "model"'),
        ('{"model": 4, "messages": [{"role": "user", "content": "x"}]}', '"model" must be'),
        ('{"model": "m"}', 'missing "messages"'),
        ('{"model": "m", "messages": "hi"}', '"messages" must be a non-empty array'),
        ('{"model": "m", "messages": [1]}', '"messages"[0] must be an object with a "role"'),
        ('{"model": "m", "url": "/v1/embeddings"}', 'missing "input" for /v1/embeddings'),
        ('{"model": "m", "url": "/v1/embeddings", "input": []}', '"input" must be a string'),
    ],
)
def test_each_bad_line_is_named_by_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat_line(1)) + "\n" + line + "\n" + json.dumps(chat_line(3)) + "\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: ")
    assert message in problem


def test_invalid_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: not valid UTF-8 (byte 0xe9")


def test_truncated_last_line_is_called_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(chat_line(1)) + "\n" + json.dumps(chat_line(2))[:30])
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: invalid JSON") and "cut short" in problem


def test_duplicate_custom_ids_name_both_lines_even_far_apart(tmp_path: Path) -> None:
    lines = [chat_line(i) for i in range(5000)]
    lines.append(chat_line(3))  # line 5001 repeats line 4
    lines.append(chat_line(4999))  # line 5002 repeats line 5000
    path = write_jsonl(tmp_path / "dups.jsonl", lines)
    assert problems_of(path) == [
        f'{path}:5001: duplicate custom_id "item-3" (first on line 4)',
        f'{path}:5002: duplicate custom_id "item-4999" (first on line 5000)',
    ]


def test_an_explicit_id_can_collide_with_a_line_number_id(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(CHAT_BODY) + "\n" + json.dumps({"id": "1", **CHAT_BODY}) + "\n")
    assert problems_of(path) == [f'{path}:2: duplicate custom_id "1" (first on line 1)']


def test_at_most_twenty_problems_are_listed_with_a_count_of_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("oops\n" * 45)
    with pytest.raises(JobFileError) as caught:
        check_job_file(str(path), JobDefaults())
    assert len(caught.value.problems) == MAX_PROBLEMS_SHOWN
    assert [p.line for p in caught.value.problems] == list(range(1, 21))
    assert caught.value.more == 25
    assert str(caught.value).endswith("... and 25 more problems")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_or_blank_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert problems_of(path) == [f"{path}: no requests in the file (it is empty or blank)"]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.jsonl") == [f"{tmp_path / 'nope.jsonl'}: no such file"]
    assert problems_of(tmp_path) == [f"{tmp_path}: is a directory, not a job file"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"method": "POST", "url": "/v1/chat/completions", "body": CHAT_BODY},
            'missing "custom_id" (a Batch API line needs one; only a short line may go without',
        ),
        (
            {"custnm_id": "a", "method": "POST", "body": CHAT_BODY},
            'unknown key "custnm_id": did you mean "custom_id"?',
        ),
        (
            {"custom_id": "a", "mehtod": "GET", "body": CHAT_BODY},
            'unknown key "mehtod": did you mean "method"?',
        ),
        (
            {"custom_id": "a", "uri": "/v1/embeddings", "body": CHAT_BODY},
            'unknown key "uri": did you mean "url"?',
        ),
        ({"custom-id": "a", **CHAT_BODY}, 'unknown key "custom-id": did you mean "custom_id"?'),
        ({"custom_id": None, "body": CHAT_BODY}, "custom_id must be a non-empty string, got null"),
        (
            {"custom_id": "a", "method": "POST", "body": {**CHAT_BODY, "stream": True}},
            '"stream" must be false or left out, got true: a batch needs whole answers',
        ),
        ({**CHAT_BODY, "stream": "True"}, '"stream" must be false or left out, got "True"'),
        (
            {"model": "text-embedding-3-small", "url": "embeddings", "input": ["x"] * 2049},
            '"input" holds 2,049 inputs; one embeddings request takes at most 2,048',
        ),
    ],
)
def test_lines_the_batch_api_would_refuse_are_refused_with_the_reason(
    tmp_path: Path, line: dict[str, object], message: str
) -> None:
    path = write_jsonl(tmp_path / "j.jsonl", [line])
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: {message}"), problem


@pytest.mark.parametrize(
    "line",
    [
        {"custom_id": "a", "method": "POST", "body": CHAT_BODY, "metadata": {"row": 1}},
        {"custom_id": "a", "body": {**CHAT_BODY, "stream": False}},
        {**CHAT_BODY, "user": "u-1", "store": False},  # body keys near nothing we own
        {"model": "text-embedding-3-small", "url": "embeddings", "input": list(range(5000))},
        {"model": "text-embedding-3-small", "url": "embeddings", "input": ["x"] * 2048},
    ],
)
def test_lines_the_batch_api_takes_are_taken(tmp_path: Path, line: dict[str, object]) -> None:
    path = write_jsonl(tmp_path / "j.jsonl", [line])
    assert check_job_file(str(path), JobDefaults()).items == 1


def test_a_key_near_one_the_line_has_is_its_own_and_a_short_lines_url_is_checked(
    tmp_path: Path,
) -> None:
    both = {"custom_id": "a", "customer_id": "c-7", "method": "POST", "body": CHAT_BODY}
    path = write_jsonl(
        tmp_path / "both.jsonl", [both, {"custom_id": "b", "customer_id": 1, **CHAT_BODY}]
    )
    (first, second) = read_job_items(str(path), JobDefaults())
    assert orjson.loads(first.extra or b"{}") == {"customer_id": "c-7"}
    assert orjson.loads(second.body)["customer_id"] == 1  # sent in the body, as written
    typo = write_jsonl(tmp_path / "typo.jsonl", [{"ulr": "/v1/embeddings", **CHAT_BODY}])
    assert problems_of(typo) == [f'{typo}:1: unknown key "ulr": did you mean "url"?']
