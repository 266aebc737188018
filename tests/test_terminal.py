"""Control characters from elsewhere (custom_ids, job and model names, servers' error messages)
reach the terminal escaped, in every log line and table, while the ledger and the exports keep
them exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson

from batchrunner.fake import FakeServer
from batchrunner.terminal import printable
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke

# A window title set, the screen cleared, a line overwritten, a NUL, a C1 CSI, DEL.
HOSTILE = ["\x1b]0;owned\x07", "\x1b[2J", "over\rwrite", "nul\x00l", "csi\x9b31m", "del\x7f"]
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every control character but the newline


def assert_safe(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw control characters {found!r} in {text!r}"


def test_printable_escapes_every_control_character_visibly() -> None:
    assert printable("\x1b]0;owned\x07") == "\\x1b]0;owned\\x07"
    assert printable("a\r\x00\x9b\x7fb\tc") == "a\\x0d\\x00\\x9b\\x7fb\\x09c"
    assert printable("two\nlines") == "two\nlines"
    assert printable("one\nline", lines=False) == "one\\x0aline"
    text = '{"id": "csi\x9b31m"}'
    assert json.loads(printable(text, json=True)) == json.loads(text)  # the same value


def test_ids_names_and_server_messages_are_escaped_in_logs_and_tables_not_in_the_ledger(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    lines = [{**chat_line(n), "custom_id": cid} for n, cid in enumerate(HOSTILE)]
    lines.append(chat_line(99, model="gpt-4o-mini\x1b[2J"))
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    name = "name\x1b]0;owned\x07"
    common = ["--db", db_url, "--base-url", fake.base_url]
    submitted = invoke("submit", str(job), "--name", name, *common, "-v")
    assert submitted.exit_code == 0, submitted.stderr
    assert_safe(submitted.stderr)
    assert "custom_id=\\x1b]0;owned\\x07 " in submitted.stderr  # visible, escaped
    assert "gpt-4o-mini\\x1b[2J" in submitted.stderr  # the model, in the summary

    shown = invoke("status", *common[:2])
    assert_safe(shown.stdout)
    assert "gpt-4o-mini\\x1b[2J:" in shown.stdout
    as_json = invoke("status", "--json", *common[:2])
    assert_safe(as_json.stdout)
    (status,) = json.loads(as_json.stdout)["jobs"]
    assert status["name"] == name  # the JSON escapes parse back to the name itself

    exported = invoke("export", "results", *common[:2]).stdout.splitlines()
    assert [orjson.loads(r)["custom_id"] for r in exported][: len(HOSTILE)] == HOSTILE

    # A server's error message with escape sequences, in the reason the run stopped for.
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    fake.config.force_message = "Incorrect key \x1b]0;owned\x07\x1b[2J\r"
    job2 = write_jsonl(tmp_path / "job2.jsonl", [chat_line(0)])
    refused = invoke("submit", str(job2), *common, "--log-json")
    assert refused.exit_code == 3, refused.stderr
    assert_safe(refused.stderr)
    assert "Incorrect key \\x1b]0;owned\\x07\\x1b[2J\\x0d" in refused.stderr
