"""The bad-input corpus (tests/bad_inputs/, plus files too big or too odd to keep in git): each
gets its exact error naming file:line, exit code 2 from the CLI, and a ledger left byte for byte
as it was, whether there was none yet or it already held a job."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batchrunner.cli import cli
from batchrunner.ledger import Ledger
from tests.conftest import chat_line, write_jsonl

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "bad_inputs"
NO_JSON_VALUE = "unexpected character, expected a JSON value"
NOT_BLANK = "no requests in the file (it is empty or blank)"

# file -> its problems as (line, message); line 0 is about the whole file.
EXPECTED: dict[str, list[tuple[int, str]]] = {
    "truncated_last_line.jsonl": [
        (3, "invalid JSON at column 61: unexpected end of data (the last line is cut short)")
    ],
    "invalid_utf8.jsonl": [(2, "not valid UTF-8 (byte 0xe9 at column 84)")],
    "utf16.jsonl": [(1, "the file is UTF-16: save it as UTF-8")],
    "array.jsonl": [(2, "expected a JSON object, got an array")],
    "number.jsonl": [(2, "expected a JSON object, got a number")],
    "string.jsonl": [(2, "expected a JSON object, got a string")],
    "null.jsonl": [(2, "expected a JSON object, got null")],
    "body_not_object.jsonl": [(2, '"body" must be an object, got a string')],
    "body_null.jsonl": [(2, '"body" must be an object, got null')],
    "missing_body.jsonl": [(2, 'missing "body"')],
    "messages_not_array.jsonl": [(2, '"messages" must be a non-empty array, got a string')],
    "messages_empty.jsonl": [(2, '"messages" must be a non-empty array, got an empty array')],
    "message_without_role.jsonl": [(2, '"messages"[0] must be an object with a "role"')],
    "model_not_string.jsonl": [(2, '"model" must be a non-empty string, got an array')],
    "model_missing.jsonl": [(2, 'missing "model" (put it in the body or pass --model)')],
    "unknown_url.jsonl": [
        (
            2,
            'unknown url "/v1/audio/speech"; expected one of /v1/chat/completions, '
            "/v1/embeddings, /v1/responses, /v1/completions, /v1/moderations, "
            "/v1/images/generations, /v1/images/edits, /v1/videos",
        )
    ],
    "url_not_string.jsonl": [(2, '"url" must be a string, got null')],
    "method_get.jsonl": [(2, 'method must be "POST", got "GET"')],
    "custom_id_number.jsonl": [(2, "custom_id must be a non-empty string, got a number")],
    "custom_id_empty.jsonl": [(2, "custom_id must be a non-empty string, got an empty string")],
    "duplicate_custom_id.jsonl": [(3, 'duplicate custom_id "q-1" (first on line 1)')],
    "embeddings_without_input.jsonl": [(1, 'missing "input" for /v1/embeddings')],
    "trailing_garbage.jsonl": [
        (1, "invalid JSON at column 162: unexpected content after document")
    ],
    "nan.jsonl": [(1, f"invalid JSON at column 54: {NO_JSON_VALUE}")],
    "deeply_nested.jsonl": [(2, "invalid JSON at column 1075: depth limit exceeded")],
    "empty.jsonl": [(0, NOT_BLANK)],
    "blank_lines_only.jsonl": [(0, NOT_BLANK)],
    "bom_only.jsonl": [(0, NOT_BLANK)],
    "mixed_good_and_bad.jsonl": [
        (4, "invalid JSON at column 2: unexpected character, expected a string key"),
        (6, 'method must be "POST", got "PUT"'),
        (8, 'missing "model" (put it in the body or pass --model)'),
        (10, "expected a JSON object, got an empty array"),
        (11, 'duplicate custom_id "q-2" (first on line 3)'),
    ],
    "too_many_problems.jsonl": [
        (n, f"invalid JSON at column 1: {NO_JSON_VALUE}") for n in range(2, 22)
    ],
}
MORE = {"too_many_problems.jsonl": 4}  # "... and 4 more problems"


def fifty_megabyte_line(folder: Path) -> tuple[Path, list[tuple[int, str]]]:
    path = folder / "huge_line.jsonl"
    huge = chat_line(2, "x" * (50 * 1024 * 1024))
    path.write_text(json.dumps(chat_line(1)) + "\n" + json.dumps(huge) + "\n")
    return path, [(2, "line is longer than 16 MiB, the limit for one request")]


def far_apart_duplicates(folder: Path) -> tuple[Path, list[tuple[int, str]]]:
    lines = [chat_line(i) for i in range(3000)] + [chat_line(7)]
    path = write_jsonl(folder / "far_apart.jsonl", lines)
    return path, [(3001, 'duplicate custom_id "item-7" (first on line 8)')]


def missing_file(folder: Path) -> tuple[Path, list[tuple[int, str]]]:
    return folder / "no_such_file.jsonl", [(0, "no such file")]


def directory(folder: Path) -> tuple[Path, list[tuple[int, str]]]:
    path = folder / "jobs.jsonl"
    path.mkdir()
    return path, [(0, "is a directory, not a job file")]


def named_pipe(folder: Path) -> tuple[Path, list[tuple[int, str]]]:
    path = folder / "pipe.jsonl"
    os.mkfifo(path)  # read three times (check, duplicates, record): a pipe cannot be
    return path, [(0, "is not a regular file (a pipe or a device?): save it to a file")]


GENERATED: list[Callable[[Path], tuple[Path, list[tuple[int, str]]]]] = [
    fifty_megabyte_line,
    far_apart_duplicates,
    missing_file,
    directory,
    named_pipe,
]


def ledger_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("ledger.db*")}


@pytest.fixture(scope="module")
def ledger_with_a_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger that already holds a job (its folder), copied into each test that wants one."""
    folder = tmp_path_factory.mktemp("template")
    good = write_jsonl(folder / "good.jsonl", [chat_line(i) for i in range(5)])
    result = submit(good, f"sqlite:///{folder / 'ledger.db'}", "--detach")
    assert result.exit_code == 0, result.output
    Ledger(f"sqlite:///{folder / 'ledger.db'}").close()
    return folder


def submit(path: Path, db_url: str, *extra: str) -> Result:
    return CliRunner().invoke(
        cli, ["submit", str(path), "--db", db_url, *extra], catch_exceptions=False
    )


def expected_stderr(path: Path, problems: list[tuple[int, str]], more: int = 0) -> str:
    lines = [
        f"{path}:{line}: {message}" if line else f"{path}: {message}" for line, message in problems
    ]
    if more:
        lines.append(f"... and {more} more problems")
    return "error: " + "\n".join(lines) + "\n"


def check_refused(
    path: Path, problems: list[tuple[int, str]], more: int, tmp_path: Path, template: Path | None
) -> None:
    db_folder = tmp_path / "db"
    db_folder.mkdir()
    if template is not None:
        for file in template.glob("ledger.db*"):
            shutil.copy(file, db_folder / file.name)
    before = ledger_files(db_folder)
    result = submit(path, f"sqlite:///{db_folder / 'ledger.db'}", "--simulate")
    assert result.exit_code == 2
    assert result.stderr == expected_stderr(path, problems, more)
    assert result.stdout == ""
    assert ledger_files(db_folder) == before
    assert bool(before) == (template is not None)  # no ledger is created for a bad file


@pytest.mark.parametrize("holding", [False, True], ids=["no-ledger", "ledger-with-a-job"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_is_refused_with_its_exact_errors(
    name: str, holding: bool, tmp_path: Path, ledger_with_a_job: Path
) -> None:
    template = ledger_with_a_job if holding else None
    check_refused(CORPUS / name, EXPECTED[name], MORE.get(name, 0), tmp_path, template)


@pytest.mark.parametrize("holding", [False, True], ids=["no-ledger", "ledger-with-a-job"])
@pytest.mark.parametrize("make", GENERATED, ids=[f.__name__ for f in GENERATED])
def test_generated_bad_input_is_refused_with_its_exact_error(
    make: Callable[[Path], tuple[Path, list[tuple[int, str]]]],
    holding: bool,
    tmp_path: Path,
    ledger_with_a_job: Path,
) -> None:
    path, problems = make(tmp_path)
    check_refused(path, problems, 0, tmp_path, ledger_with_a_job if holding else None)


def test_the_corpus_holds_every_kind_and_nothing_untested() -> None:
    on_disk = {p.name for p in CORPUS.glob("*.jsonl")}
    assert on_disk == set(EXPECTED)
    assert len(on_disk) + len(GENERATED) >= 20


def test_the_real_cli_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = CORPUS / "mixed_good_and_bad.jsonl"
    db = tmp_path / "ledger.db"
    done = subprocess.run(
        [sys.executable, "-m", "batchrunner", "submit", str(path), "--db", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2
    assert done.stderr == expected_stderr(path, EXPECTED[path.name])
    assert not db.exists()


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path: Path, db_url: str) -> None:
    lines = [json.dumps(chat_line(i)) for i in range(3)]
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n\r\n".join(lines).encode() + b"\r\n \t\r\n\r\n")
    result = submit(path, db_url, "--detach")
    assert result.exit_code == 0, result.output
    rows = list(Ledger(db_url).iter_items(1))
    assert [(r.position, r.custom_id) for r in rows] == [
        (1, "item-0"),
        (3, "item-1"),
        (5, "item-2"),
    ]
    assert json.loads(rows[0].body) == chat_line(0)["body"]  # no BOM, no \r left in the body
