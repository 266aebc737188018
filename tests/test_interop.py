"""Against a server batchrunner did not write: LiteLLM's proxy (the pip package, started here on
127.0.0.1 with mock models), in concurrent mode, its error dialect included."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from tests.conftest import chat_line, free_port, write_jsonl
from tests.test_cli import exported_records, invoke, status_json

MASTER_KEY = "sk-litellm-master-key-0123456789"
CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      mock_response: "A mock answer from LiteLLM"
  - model_name: gpt-4.1-mini
    litellm_params:
      model: openai/gpt-4.1-mini
      mock_response: "Another mock answer"
general_settings:
  master_key: {key}
"""
START_S = 120.0


@pytest.fixture(scope="module")
def litellm(litellm_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A LiteLLM proxy on 127.0.0.1, its base URL; stopped when the module's tests are done."""
    folder = tmp_path_factory.mktemp("litellm")
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(key=MASTER_KEY))
    port = free_port()
    log = (folder / "litellm.log").open("wb")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(folder),
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: its own price map, no download
        "NO_PROXY": "*",
    }
    command = [litellm_binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health/liveliness", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        else:
            log.flush()
            tail = (folder / "litellm.log").read_text()[-3000:]
            pytest.fail(f"LiteLLM's proxy did not start within {START_S:.0f} s:\n{tail}")
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def submit(
    tmp_path: Path, base_url: str, lines: list[dict[str, object]], *extra: str
) -> tuple[Result, str]:
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    db = f"sqlite:///{tmp_path}/ledger.db"
    return invoke("submit", str(job), "--db", db, "--base-url", base_url, *extra), db


def test_a_job_through_litellm_is_answered_once_each_and_priced(
    tmp_path: Path, litellm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LiteLLM proxy on this machine that forwards to OpenAI: --hosted-prices says so."""
    monkeypatch.setenv("OPENAI_API_KEY", MASTER_KEY)
    lines = [chat_line(i) for i in range(20)]
    lines += [chat_line(i, model="gpt-4.1-mini") for i in range(20, 30)]
    result, db = submit(tmp_path, litellm, lines, "--concurrency", "8", "--hosted-prices")
    assert result.exit_code == 0, result.stderr
    records = exported_records(db)
    assert len(records) == 30 and {r["status"] for r in records} == {"succeeded"}
    assert {r["attempts"] for r in records} == {1}
    texts = {r["response"]["choices"][0]["message"]["content"] for r in records}
    assert texts == {"A mock answer from LiteLLM", "Another mock answer"}
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in records)
    (status,) = status_json(db)["jobs"]
    assert set(status["models"]) == {"gpt-4o-mini", "gpt-4.1-mini"}
    assert status["cost_usd"] > 0 and status["unpriced_models"] == []


def test_models_on_a_local_litellm_are_unpriced_unless_the_user_prices_them(
    tmp_path: Path, litellm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default a local server's models are its owner's: no hosted price, and the job says
    why; --price-as prices one as a known model; a budget wants every model priced."""
    monkeypatch.setenv("OPENAI_API_KEY", MASTER_KEY)
    lines = [chat_line(i) for i in range(4)]
    lines += [chat_line(i, model="gpt-4.1-mini") for i in range(4, 8)]
    result, db = submit(tmp_path, litellm, lines, "--price-as", "gpt-4.1-mini=gpt-4.1-mini")
    assert result.exit_code == 0, result.stderr
    assert "no price known for gpt-4o-mini: served by a local or self-hosted server" in (
        result.stderr
    )
    (status,) = status_json(db)["jobs"]
    assert status["counts"]["succeeded"] == 8 and status["unpriced_models"] == ["gpt-4o-mini"]
    assert status["models"]["gpt-4o-mini"]["cost_usd"] is None
    assert status["models"]["gpt-4.1-mini"]["cost_usd"] > 0
    assert "--hosted-prices" in status["unpriced_reasons"]["gpt-4o-mini"]
    budgeted, _ = submit(tmp_path, litellm, lines, "--new", "--budget", "1")
    assert budgeted.exit_code == 2
    assert 'needs a price for every model, and "gpt-4o-mini" has none: served by a local' in (
        budgeted.stderr
    )


def test_a_model_litellm_does_not_serve_fails_its_items_only_as_openais_404_does(
    tmp_path: Path, litellm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM answers 400 "Invalid model name" where OpenAI answers 404 model_not_found:
    both prove that model's lines would all fail; the other model's lines go on."""
    monkeypatch.setenv("OPENAI_API_KEY", MASTER_KEY)
    lines = [
        chat_line(i, model="gpt-9-imaginary" if i % 3 == 0 else "gpt-4o-mini") for i in range(9)
    ]
    result, db = submit(tmp_path, litellm, lines, "--concurrency", "1")
    assert result.exit_code == 1, result.stderr
    assert "gpt-9-imaginary" in result.stderr and "fail unsent, the rest go on" in result.stderr
    counts = status_json(db)["jobs"][0]["counts"]
    assert {state: n for state, n in counts.items() if n} == {"succeeded": 6, "failed": 3}
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        sent = conn.execute(
            "SELECT count(*) FROM attempts a JOIN items i ON i.id = a.item_id"
            " WHERE i.model = 'gpt-9-imaginary'"
        ).fetchone()[0]
        kinds = {
            row[0] for row in conn.execute("SELECT error_kind FROM items WHERE state = 'failed'")
        }
    assert sent == 1  # one proof; the other two were never sent
    assert kinds == {"model_not_found"}


def test_a_key_litellm_cannot_check_stops_the_job_as_a_bad_key(
    tmp_path: Path, litellm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a database LiteLLM answers a key that is not its master key with 400 "No
    connected db.": an auth failure, not one item's bad request."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-the-master-key-000000")
    result, db = submit(tmp_path, litellm, [chat_line(i) for i in range(5)])
    assert result.exit_code == 3, result.stderr
    assert "auth: No connected db." in result.stderr
    assert status_json(db)["jobs"][0]["counts"]["pending"] == 5
