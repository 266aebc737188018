"""The ledger on a real SQLite file: schema, atomic job creation, claims, runs and outcomes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text, update

from batchrunner.errors import JobBusyError
from batchrunner.jobfile import JobItem
from batchrunner.ledger import AttemptRecord, Ledger
from batchrunner.ledger import migrate as migrations
from batchrunner.ledger.models import Base
from batchrunner.ledger.store import runs_t, utcnow


def items(n: int, start: int = 1) -> Iterator[JobItem]:
    for i in range(start, start + n):
        yield JobItem(
            position=i,
            custom_id=f"c{i}",
            url="/v1/chat/completions",
            body=b'{"model":"m","messages":[{"role":"user","content":"x"}]}',
            extra=None,
            model="m",
        )


def new_job(ledger: Ledger, n: int) -> int:
    return ledger.create_job(
        name="t",
        mode="concurrent",
        source_path="t.jsonl",
        source_sha256="0" * 64,
        options={},
        simulated=False,
        items=items(n),
    )


def record(item_id: int, job_id: int, run_id: str, number: int, state: str | None) -> AttemptRecord:
    now = utcnow()
    return AttemptRecord(
        item_id=item_id,
        job_id=job_id,
        run_id=run_id,
        number=number,
        started_at=now,
        ended_at=now,
        outcome="succeeded" if state == "succeeded" else "retry",
        item_state=state,
        http_status=200 if state == "succeeded" else 500,
        input_tokens=10 if state == "succeeded" else None,
        output_tokens=3 if state == "succeeded" else None,
        error_kind=None if state == "succeeded" else "server_error",
    )


def test_migrations_build_exactly_the_declared_schema(db_url: str) -> None:
    ledger = Ledger(db_url)
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    indexes = {ix["name"] for ix in inspect(ledger.engine).get_indexes("items")}
    assert {"ix_items_pending", "ix_items_running", "ix_items_job_position"} <= indexes


def test_migrations_go_down_and_up_again(db_url: str) -> None:
    ledger = Ledger(db_url)
    migrations.downgrade(ledger.engine, "base")
    assert "items" not in inspect(ledger.engine).get_table_names()
    migrations.upgrade(ledger.engine)
    assert "items" in inspect(ledger.engine).get_table_names()


def test_sqlite_runs_in_wal_mode(db_url: str) -> None:
    ledger = Ledger(db_url)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_job_is_recorded_whole_or_not_at_all(db_url: str) -> None:
    ledger = Ledger(db_url)

    def broken() -> Iterator[JobItem]:
        yield from items(4500)
        raise RuntimeError("the file changed under us")

    with pytest.raises(RuntimeError):
        ledger.create_job(
            name="t",
            mode="concurrent",
            source_path="t",
            source_sha256="0" * 64,
            options={},
            simulated=False,
            items=broken(),
        )
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0


def test_claims_come_in_file_order_and_never_twice(db_url: str) -> None:
    ledger = Ledger(db_url)
    job = new_job(ledger, 25)
    run = ledger.start_run(job, max_attempts=5)
    first = ledger.claim_pending(job, run, 10)
    second = ledger.claim_pending(job, run, 10)
    third = ledger.claim_pending(job, run, 10)
    assert [i.position for i in first + second + third] == list(range(1, 26))
    assert ledger.claim_pending(job, run, 10) == []


def test_outcomes_update_items_and_keep_every_attempt(db_url: str) -> None:
    ledger = Ledger(db_url)
    job = new_job(ledger, 3)
    run = ledger.start_run(job, max_attempts=5)
    a, b, _unfinished = ledger.claim_pending(job, run, 3)
    ledger.record_attempts([record(a.id, job, run, 1, None), record(b.id, job, run, 1, "failed")])
    ledger.record_attempts([record(a.id, job, run, 2, "succeeded")])
    assert ledger.end_run(job, run) == "stopped"  # c was claimed but never finished
    summary = ledger.summary(job)
    assert summary.counts == {"succeeded": 1, "failed": 1, "pending": 1}
    assert (summary.input_tokens, summary.output_tokens, summary.attempts) == (10, 3, 3)
    assert [r.outcome for r in ledger.attempts_of(a.id)] == ["retry", "succeeded"]
    assert summary.failures_by_kind == {"server_error": 1}


def test_an_outcome_from_a_run_that_lost_the_item_changes_nothing(db_url: str) -> None:
    ledger = Ledger(db_url)
    job = new_job(ledger, 1)
    run = ledger.start_run(job, max_attempts=5)
    (item,) = ledger.claim_pending(job, run, 1)
    ledger.record_attempts([record(item.id, job, "some-other-run", 1, "succeeded")])
    assert ledger.summary(job).counts == {"running": 1}
    assert len(ledger.attempts_of(item.id)) == 1  # the attempt itself is still on record


def test_a_second_live_run_is_refused(db_url: str) -> None:
    ledger = Ledger(db_url)
    job = new_job(ledger, 2)
    ledger.start_run(job, max_attempts=5)
    with pytest.raises(JobBusyError, match="already running in process"):
        Ledger(db_url).start_run(job, max_attempts=5)


def test_a_dead_run_is_detected_and_its_items_go_back_to_pending(db_url: str) -> None:
    ledger = Ledger(db_url)
    job = new_job(ledger, 5)
    run = ledger.start_run(job, max_attempts=5)
    ledger.claim_pending(job, run, 3)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    with ledger.engine.begin() as conn:  # pretend a process that has exited held the run
        conn.execute(update(runs_t).where(runs_t.c.id == run).values(pid=int(dead.stdout)))
    assert ledger.summary(job).state == "stopped"
    second = ledger.start_run(job, max_attempts=5)
    assert second != run
    assert ledger.summary(job).counts == {"pending": 5}


def test_items_that_used_every_attempt_fail_at_the_next_start(db_url: str) -> None:
    ledger = Ledger(db_url)
    job = new_job(ledger, 2)
    run = ledger.start_run(job, max_attempts=2)
    a, _ = ledger.claim_pending(job, run, 2)
    ledger.record_attempts([record(a.id, job, run, 1, None), record(a.id, job, run, 2, None)])
    ledger.end_run(job, run)
    ledger.start_run(job, max_attempts=2)
    assert ledger.summary(job).counts == {"failed": 1, "pending": 1}


def test_find_job_by_id_name_or_latest(db_url: str) -> None:
    ledger = Ledger(db_url)
    first, second = new_job(ledger, 1), new_job(ledger, 1)
    assert ledger.find_job(None) == second
    assert ledger.find_job(str(first)) == first
    assert ledger.find_job("t") == second


def test_the_ledger_file_is_created_in_a_new_folder(tmp_path: Path) -> None:
    Ledger(f"sqlite:///{tmp_path}/deep/er/ledger.db")
    assert os.path.exists(tmp_path / "deep" / "er" / "ledger.db")
