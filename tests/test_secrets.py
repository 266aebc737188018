"""The API key never reaches the ledger, the logs, the exports, error messages or tracebacks,
even when a server quotes it back; `--redact` masks card numbers and keys in the prompts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from batchrunner.cli import cli
from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from batchrunner.redact import mask_secrets
from batchrunner.runner.concurrent import CLAIM_PAGE
from tests.conftest import TEST_KEY, chat_line, write_jsonl
from tests.test_ledger import new_job

REPO = Path(__file__).resolve().parent.parent
MASKED_KEY = "sk-***" + TEST_KEY[-4:]
SECRET_PART = TEST_KEY[3:-4]  # what must never show, even in part


def batchrunner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrunner", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def invoke(*args: str) -> Any:
    """The CLI in this process, for reading the ledger back (faster to start)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_no_key(name: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    assert SECRET_PART.encode() not in raw, f"the API key leaked into {name}"


def test_a_key_echoed_by_the_server_is_masked_everywhere(tmp_path: Path, fake: FakeServer) -> None:
    fake.config.echo_auth = True  # every error message and answer quotes the Authorization
    lines = [
        chat_line(0),
        chat_line(1, "[fake:400] rejected"),
        chat_line(2, "[fake:500x1] retried"),
        chat_line(3, "[fake:context_length] too long"),
    ]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    db = tmp_path / "ledger.db"
    common = ("--db", f"sqlite:///{db}", "--base-url", fake.base_url)
    outputs: dict[str, str] = {}
    verbose = batchrunner("submit", str(job), *common, "-v")
    assert verbose.returncode == 1, verbose.stderr  # two items failed
    as_json = batchrunner("submit", str(job), *common, "--new", "--log-json")
    assert as_json.returncode == 1, as_json.stderr
    fake.config.api_key = "sk-another-key-0000000000000000"  # now ours gets a 401: the job stops
    refused = batchrunner("submit", str(job), *common, "--new", "-v")
    assert refused.returncode == 3 and MASKED_KEY in refused.stderr  # the echo was masked
    for name, result in (("-v", verbose), ("--log-json", as_json), ("401", refused)):
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = result.stdout, result.stderr
    assert '"logger": "batchrunner.attempts"' in as_json.stderr.replace('":"', '": "')
    for job_id in ("1", "2", "3"):
        for kind, extra in (("results", ()), ("results", ("--format", "csv")), ("errors", ())):
            exported = invoke("export", kind, "--job", job_id, *extra, "--db", common[1])
            assert exported.exit_code == 0, exported.stderr
            outputs[f"export {kind} {extra} of job {job_id}"] = exported.output
        outputs[f"status of job {job_id}"] = invoke("status", job_id, "--db", common[1]).output
    for name, text in outputs.items():
        assert_no_key(name, text)
    for file in tmp_path.glob("ledger.db*"):
        assert_no_key(file.name, file.read_bytes())

    # The errors were stored, masked: the proof that the echo reached batchrunner at all.
    records = [orjson.loads(x) for x in outputs["export results () of job 1"].splitlines()]
    messages = [r["error"]["message"] for r in records if r["error"]]
    assert len(messages) == 2 and all(f"Bearer {MASKED_KEY}" in m for m in messages)
    answers = [r["response"]["choices"][0]["message"]["content"] for r in records if r["response"]]
    assert len(answers) == 2 and all(f"Bearer {MASKED_KEY}" in a for a in answers)


def test_a_traceback_never_shows_the_key(tmp_path: Path) -> None:
    """An unexpected error (a bug) still prints its traceback, with the key masked."""
    crash = (
        "import os, sys, batchrunner.commands as commands\n"
        "def bug(*args, **kwargs):\n"
        "    raise RuntimeError('proxy said: Bearer ' + os.environ['OPENAI_API_KEY'])\n"
        "commands.submit_job = bug\n"
        "from batchrunner.cli import main\n"
        "main()\n"
    )
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    done = subprocess.run(
        [sys.executable, "-c", crash, "submit", str(job), "--db", f"sqlite:///{tmp_path}/l.db"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert f"RuntimeError: proxy said: Bearer {MASKED_KEY}\n" in done.stderr
    assert_no_key("the traceback", done.stderr)


def test_redact_masks_cards_and_keys_in_prompts_before_storing_and_sending(
    tmp_path: Path, fake: FakeServer
) -> None:
    lines = [
        chat_line(0, "charge 4111 1111 1111 1111 now"),
        chat_line(1, "card 5500-0000-0000-0004, key sk-live-abcdefghijklmnop1234"),
        chat_line(2, "order 1234567812345678 is not a card (fails the Luhn check)"),
        chat_line(3, "nothing secret"),
    ]
    lines[3]["metadata"] = {"card": "4012888888881881"}
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    db = tmp_path / "ledger.db"
    common = ("--db", f"sqlite:///{db}", "--base-url", fake.base_url)
    result = batchrunner("submit", str(job), *common, "--redact")
    assert result.returncode == 0, result.stderr
    assert "--redact masked 4 card numbers and keys in the prompts" in result.stderr

    exported = invoke("export", "results", "--db", common[1])
    answers = {
        r["custom_id"]: r["response"]["choices"][0]["message"]["content"]
        for r in map(orjson.loads, exported.stdout.splitlines())
    }
    assert answers == {  # the fake server answers "echo: <prompt>": what it was sent
        "item-0": "echo: charge [card ***1111] now",
        "item-1": "echo: card [card ***0004], key sk-***1234",
        "item-2": "echo: order 1234567812345678 is not a card (fails the Luhn check)",
        "item-3": "echo: nothing secret",
    }
    assert '"card":"[card ***1881]"' in exported.stdout
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    for secret in (b"4111 1111", b"5500-0000", b"abcdefghijklmnop", b"4012888888881881"):
        assert secret not in stored


def test_without_redact_prompts_are_kept_as_written(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0, "charge 4111 1111 1111 1111 now")])
    db = tmp_path / "ledger.db"
    result = invoke("submit", str(job), "--db", f"sqlite:///{db}", "--detach")
    assert result.exit_code == 0 and "--redact" not in result.stderr
    assert b"4111 1111 1111 1111" in b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))


@pytest.mark.parametrize(
    ("text", "cards", "expected", "count"),
    [
        ("Incorrect API key provided: sk-proj-AbC123_-xyz7890qwerty.", False,
         "Incorrect API key provided: sk-***erty.", 1),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", False, "Authorization: Bearer ***", 1),
        ("short sk-abc and ask-questions-here-please-now stay", False,
         "short sk-abc and ask-questions-here-please-now stay", 0),
        ("4111111111111111 and 4111-1111-1111-1112", True,
         "[card ***1111] and 4111-1111-1111-1112", 1),
        ("4111111111111111", False, "4111111111111111", 0),  # cards only with --redact
        ("12345678901234567890123", True, "12345678901234567890123", 0),  # too long for a card
        ("amex 3782 822463 10005", True, "amex [card ***0005]", 1),
    ],
)  # fmt: skip
def test_mask_secrets(text: str, cards: bool, expected: str, count: int) -> None:
    assert mask_secrets(text, cards=cards) == (expected, count)


def test_the_configured_key_is_masked_whatever_its_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "vllm-token-42-xyz")
    assert mask_secrets("got vllm-token-42-xyz from you") == ("got ***-xyz from you", 1)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")  # a placeholder, not a secret
    assert mask_secrets("EMPTY response") == ("EMPTY response", 0)


def test_a_key_in_a_failed_batchs_errors_is_masked_before_it_is_stored(db_url: str) -> None:
    """Each message is masked on its own, before the errors become JSON (where a newline in
    front of the key would be escaped into a letter and hide it from the pattern)."""
    ledger = Ledger(db_url)
    job = new_job(ledger, 2)
    batch_id, _ = ledger.open_batch(job, "token", "/v1/chat/completions", "m1", [1, 2], 10)
    ledger.record_batch_errors(batch_id, [("invalid_request", f"bad line:\n{TEST_KEY}", 2)])
    (batch,) = ledger.batches_of(job)
    assert batch.errors is not None and SECRET_PART not in batch.errors
    assert orjson.loads(batch.errors) == [
        {"code": "invalid_request", "message": f"bad line:\n{MASKED_KEY}", "line": 2}
    ]


def test_a_key_quoted_by_a_missing_models_404_is_masked_on_the_items_failed_unsent(
    tmp_path: Path, fake: FakeServer
) -> None:
    """The 404's words fail the model's pending items in one statement, not through the
    outcome writer: they are masked there too."""
    fake.config.echo_auth = True
    fake.config.models = ("gpt-4o-mini",)
    lines = [chat_line(i, model="gpt-4o-mnii") for i in range(CLAIM_PAGE + 20)]  # some unclaimed
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    db = f"sqlite:///{tmp_path}/ledger.db"
    result = batchrunner(
        "submit", str(job), "--db", db, "--base-url", fake.base_url, "--concurrency", "1"
    )
    assert result.returncode == 1, result.stderr
    exported = invoke("export", "results", "--db", db)
    assert exported.stdout.count(f"Bearer {MASKED_KEY}") == CLAIM_PAGE + 20  # unsent ones too
    for file in tmp_path.glob("ledger.db*"):
        assert_no_key(file.name, file.read_bytes())
    assert_no_key("export results", exported.output)
