"""Shared fixtures: a ledger file in a temp folder, the fake server on 127.0.0.1, job files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrunner.fake import FakeConfig, FakeServer, run_in_thread

TEST_KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test ever reaches a real API or a ledger outside its temp folder."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("BATCHRUNNER_DB", f"sqlite:///{tmp_path}/default.db")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with run_in_thread(FakeConfig(seed=7)) as server:
        yield server


def chat_line(index: int, text: str | None = None, **body: Any) -> dict[str, Any]:
    """A Batch API line whose prompt names its own id, so answers can be matched to it."""
    return {
        "custom_id": f"item-{index}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text or f"question number {index}"}],
            **body,
        },
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
