"""What only PostgreSQL does: row locks instead of one writer at a time, concurrent openers of a
new ledger, and a whole job through the command line with `--db postgresql+psycopg://...`.

The tests taking `pg_url` get a database of their own on the server of BATCHRUNNER_TEST_PG
(see conftest.py); the others only compile SQL and need no server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.dialects import sqlite

from batchrunner.cli import cli
from batchrunner.errors import JobBusyError, UsageError
from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from batchrunner.ledger.engine import open_engine
from batchrunner.ledger.models import items_t, jobs_t, runs_t
from batchrunner.ledger.records import utcnow
from batchrunner.ledger.store import claim_statement
from tests.conftest import chat_line, write_jsonl
from tests.test_ledger import new_job

pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SAWarning")


def test_the_postgres_claim_locks_and_fences_its_pick_and_sqlite_needs_neither() -> None:
    statement = claim_statement("postgresql", 1, "run", 10, utcnow())
    sql = str(statement.compile(dialect=create_engine("postgresql+psycopg://").dialect))
    assert "WITH claimable AS MATERIALIZED" in sql
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "UPDATE items SET" in sql and "RETURNING" in sql
    plain = str(claim_statement("sqlite", 1, "run", 10, utcnow()).compile(dialect=sqlite.dialect()))
    assert "MATERIALIZED" not in plain and "FOR UPDATE" not in plain
    assert "items.id IN (SELECT items.id" in plain


def test_only_sqlite_and_postgresql_ledgers_are_opened() -> None:
    with pytest.raises(UsageError, match="unsupported ledger database"):
        open_engine("mysql://someone@localhost/ledger")


@pytest.mark.postgres
def test_a_plain_postgresql_url_uses_psycopg(pg_url: str) -> None:
    engine = open_engine(pg_url.replace("postgresql+psycopg://", "postgresql://", 1))
    assert engine.dialect.driver == "psycopg"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_setting('application_name')")).scalar() == (
            "batchrunner"
        )
    engine.dispose()


def _lock_timeout(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '5s'")
    dbapi_connection.commit()


@pytest.mark.postgres
def test_a_claim_skips_items_another_transaction_holds(pg_url: str) -> None:
    ledger = Ledger(pg_url)
    job = new_job(ledger, 20)
    run = ledger.start_run(job, max_attempts=5)
    ledger.engine.dispose()  # a claim that waits for a lock fails in 5 s instead of hanging
    event.listen(ledger.engine, "connect", _lock_timeout)
    other = create_engine(pg_url)
    with other.begin() as conn:  # a claimer that has not committed yet holds items 1-5
        held = conn.execute(
            select(items_t.c.id)
            .where(items_t.c.job_id == job, items_t.c.position <= 5)
            .with_for_update()
        ).all()
        assert len(held) == 5
        claimed = ledger.claim_pending(job, run, 5)  # passes them by rather than waiting
        assert [i.position for i in claimed] == [6, 7, 8, 9, 10]  # exactly the limit
    assert [i.position for i in ledger.claim_pending(job, run, 100)] == [
        *range(1, 6),
        *range(11, 21),
    ]
    other.dispose()


@pytest.mark.postgres
def test_a_run_starting_while_another_starts_waits_and_is_refused(pg_url: str) -> None:
    ledger = Ledger(pg_url)
    job = new_job(ledger, 2)
    outcome: list[BaseException | str] = []

    def start() -> None:
        try:
            outcome.append(ledger.start_run(job, max_attempts=5))
        except BaseException as exc:
            outcome.append(exc)

    rival = create_engine(pg_url)
    with rival.begin() as conn:  # another process in the middle of its own start_run
        conn.execute(select(jobs_t.c.id).where(jobs_t.c.id == job).with_for_update())
        thread = threading.Thread(target=start)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # queued behind the job's row lock
        now = utcnow()
        conn.execute(
            insert(runs_t),
            {
                "id": "rival",
                "job_id": job,
                "hostname": "elsewhere",
                "pid": 1,
                "started_at": now,
                "heartbeat_at": now,
            },
        )
    thread.join(30)
    rival.dispose()
    assert len(outcome) == 1 and isinstance(outcome[0], JobBusyError)


@pytest.mark.postgres
def test_processes_opening_a_new_ledger_at_once_all_succeed(pg_url: str) -> None:
    opener = "import sys; from batchrunner.ledger import Ledger; Ledger(sys.argv[1]).close()"
    processes = [
        subprocess.Popen([sys.executable, "-c", opener, pg_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
    assert new_job(Ledger(pg_url), 1) == 1  # one schema, complete


@pytest.mark.postgres
def test_a_whole_job_through_the_command_line(
    tmp_path: Path, pg_url: str, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "reviews.jsonl", [chat_line(i) for i in range(300)])
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["submit", str(job), "--db", pg_url, "--base-url", fake.base_url, "--concurrency", "32"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    status = runner.invoke(cli, ["status", "--json", "--db", pg_url], catch_exceptions=False)
    (summary,) = json.loads(status.stdout)["jobs"]
    assert summary["state"] == "completed" and summary["counts"]["succeeded"] == 300
    exported = runner.invoke(cli, ["export", "results", "--db", pg_url], catch_exceptions=False)
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["custom_id"] for r in records] == [f"item-{i}" for i in range(300)]
    assert set(fake.requests_by_id.values()) == {1}  # each request sent once
