"""Shared fixtures: a ledger file in a temp folder, a fresh PostgreSQL database, the fake server
on 127.0.0.1, job files.

PostgreSQL comes from BATCHRUNNER_TEST_PG, a SQLAlchemy URL of a server the tests may create
databases on (.ci/run starts one). Without it the PostgreSQL cases skip, loudly; under CI (or
BATCHRUNNER_REQUIRE_PG=1) they fail instead, so a CI that lost its server cannot pass green.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from batchrunner import redact
from batchrunner.fake import FakeConfig, FakeServer, run_in_thread

TEST_KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
PG_ENV = "BATCHRUNNER_TEST_PG"
PG_EXAMPLE = "postgresql+psycopg://postgres@127.0.0.1:5432/batchrunner_test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs the PostgreSQL server of BATCHRUNNER_TEST_PG"
    )


def postgres_required() -> bool:
    """CI must test PostgreSQL: there a missing server is a failure, not a skip."""
    if os.environ.get("BATCHRUNNER_REQUIRE_PG", "") == "1":
        return True
    return in_ci()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


LITELLM_ENV = "BATCHRUNNER_TEST_LITELLM"


@pytest.fixture(scope="session")
def litellm_binary() -> str:
    """The `litellm` command of a venv holding `litellm[proxy]` (.ci/run makes one): a server
    batchrunner did not write. Without it the interop tests skip, loudly; under CI they fail."""
    path = os.environ.get(LITELLM_ENV, "").strip()
    if path and os.access(path, os.X_OK):
        return path
    how = f"set {LITELLM_ENV} to the litellm command of a venv with 'litellm[proxy]'"
    if in_ci():
        pytest.fail(f"the LiteLLM interop tests cannot run, and CI requires them: {how}")
    pytest.skip(f"LiteLLM interop tests skipped: {how}")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test ever reaches a real API or a ledger outside its temp folder."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("BATCHRUNNER_DB", f"sqlite:///{tmp_path}/default.db")
    monkeypatch.delenv("BATCHRUNNER_METRICS_PORT", raising=False)  # a shell's: not the tests'
    monkeypatch.setattr(redact, "_SECRETS", set())  # what one test's run masks, it alone


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the test server, to create and drop one database per test."""
    url = os.environ.get(PG_ENV, "").strip()
    if not url:
        how = (
            f"set {PG_ENV} to a SQLAlchemy URL of a server where databases may be created, "
            f"e.g. {PG_EXAMPLE} (.ci/run starts one)"
        )
        if postgres_required():
            pytest.fail(
                f"PostgreSQL tests cannot run, and CI (or BATCHRUNNER_REQUIRE_PG=1) requires "
                f"them: {how}",
                pytrace=False,
            )
        pytest.skip(f"PostgreSQL tests skipped: {how}")
    given = make_url(url)
    problems = []
    # The URL's own database if it exists, else the maintenance database every server has.
    for database in dict.fromkeys([given.database, "postgres"]):
        engine = create_engine(
            given.set(database=database), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            with engine.connect():
                pass
        except OperationalError as exc:
            problems.append(str(exc.orig).strip())
            continue
        yield engine
        engine.dispose()
        return
    shown = given.render_as_string(hide_password=True)
    pytest.fail(f"{PG_ENV}={shown} is set but unusable: {' / '.join(problems)}", pytrace=False)


@pytest.fixture
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards (with any connection left)."""
    prefix = (make_url(os.environ[PG_ENV]).database or "batchrunner_test")[:40]
    name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(os.environ[PG_ENV]).set(database=name).render_as_string(hide_password=False)
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty ledger database: every test using it runs on both backends."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("db_url"))


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


def free_port() -> int:
    """A port nothing listens on now (for a server a test starts later, or never)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
