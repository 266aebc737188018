"""The ledger on a real SQLite file and a real PostgreSQL database: schema and migrations,
atomic job creation, claims, deferred items, runs and outcomes.

Every test taking `ledger_url` runs once per backend (see conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, select, text, update

from batchrunner.errors import JobBusyError
from batchrunner.items import JobItem
from batchrunner.ledger import Ledger
from batchrunner.ledger import migrate as migrations
from batchrunner.ledger.models import Base, attempts_t, batches_t, items_t, jobs_t, runs_t
from batchrunner.ledger.records import (
    ITEM_ROW_COLUMNS,
    AttemptRow,
    BatchRow,
    RunRow,
    utcnow,
)
from batchrunner.ledger.results import ATTEMPT_RESULT_COLUMNS
from batchrunner.outcome import RESULT_COLUMNS, Outcome, Result
from batchrunner.runner.outcomes import abandoned_outcome
from batchrunner.status import job_status

LATEST = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()


def items(n: int, start: int = 1, models: list[str] | None = None) -> Iterator[JobItem]:
    """`n` chat items from position `start`, of model "m" or of `models` in turn."""
    for i in range(start, start + n):
        yield JobItem(
            position=i,
            custom_id=f"c{i}",
            url="/v1/chat/completions",
            body=b'{"model":"m","messages":[{"role":"user","content":"x"}]}',
            extra=None,
            model=models[i - start] if models else "m",
        )


def new_job(ledger: Ledger, n: int, models: list[str] | None = None) -> int:
    return ledger.create_job(
        name="t",
        mode="concurrent",
        source_path="t.jsonl",
        source_sha256="0" * 64,
        options={},
        simulated=False,
        items=items(n, models=models),
    )


def record(
    item_id: int,
    job_id: int,
    run_id: str,
    number: int,
    state: str | None,
    not_before: datetime | None = None,
) -> Outcome:
    now = utcnow()
    return Outcome(
        item_id=item_id,
        job_id=job_id,
        custom_id="",
        run_id=run_id,
        number=number,
        started_at=now,
        ended_at=now,
        attempt_outcome="succeeded" if state == "succeeded" else "retry",
        state=state,
        not_before=not_before,
        result=Result(
            http_status=200 if state == "succeeded" else 500,
            input_tokens=10 if state == "succeeded" else None,
            output_tokens=3 if state == "succeeded" else None,
            error_kind=None if state == "succeeded" else "server_error",
        ),
    )


def item_column(ledger: Ledger, item_id: int, column: str) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(select(items_t.c[column]).where(items_t.c.id == item_id)).scalar()


def schema_diff(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_migrations_build_exactly_the_declared_schema(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    assert schema_diff(ledger) == []
    indexes = {ix["name"] for ix in inspect(ledger.engine).get_indexes("items")}
    assert {
        "ix_items_pending",
        "ix_items_running",
        "ix_items_deferred",
        "ix_items_job_position",
    } <= indexes


def test_migrations_go_down_and_up_again(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    new_job(ledger, 3)
    migrations.downgrade(ledger.engine, "0001")
    columns = {c["name"] for c in inspect(ledger.engine).get_columns("items")}
    assert "not_before" not in columns and "batch_id" not in columns and "position" in columns
    with ledger.engine.connect() as conn:  # going down one step keeps the data
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 3
    migrations.downgrade(ledger.engine, "base")
    assert inspect(ledger.engine).get_table_names() == ["alembic_version"]
    migrations.upgrade(ledger.engine)
    assert {"jobs", "items", "attempts", "runs"} <= set(inspect(ledger.engine).get_table_names())
    assert schema_diff(ledger) == []
    with ledger.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (LATEST,)
    job = new_job(ledger, 2)  # and the rebuilt ledger works
    run = ledger.start_run(job, max_attempts=5)
    assert len(ledger.claim_pending(job, run, 5)) == 2


def test_sqlite_runs_in_wal_mode(db_url: str) -> None:
    ledger = Ledger(db_url)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_job_is_recorded_whole_or_not_at_all(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)

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


def test_claims_come_in_file_order_and_never_twice(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 25)
    run = ledger.start_run(job, max_attempts=5)
    first = ledger.claim_pending(job, run, 10)
    second = ledger.claim_pending(job, run, 10)
    third = ledger.claim_pending(job, run, 10)
    assert [i.position for i in first + second + third] == list(range(1, 26))
    assert ledger.claim_pending(job, run, 10) == []


def test_outcomes_update_items_and_keep_every_attempt(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 3)
    run = ledger.start_run(job, max_attempts=5)
    a, b, _unfinished = ledger.claim_pending(job, run, 3)
    ledger.record_outcomes([record(a.id, job, run, 1, None), record(b.id, job, run, 1, "failed")])
    ledger.record_outcomes([record(a.id, job, run, 2, "succeeded")])
    assert ledger.end_run(job, run) == "stopped"  # c was claimed but never finished
    summary = ledger.summary(job)
    assert summary.counts == {"succeeded": 1, "failed": 1, "pending": 1}
    assert (summary.input_tokens, summary.output_tokens, summary.attempts) == (10, 3, 3)
    assert [r.outcome for r in ledger.attempts_of(a.id)] == ["retry", "succeeded"]
    assert summary.failures_by_kind == {"server_error": 1}


def test_requests_abandoned_in_flight_are_attempts_the_spend_counts_and_their_items_resume(
    ledger_url: str,
) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 3)
    run = ledger.start_run(job, max_attempts=5)
    a, b, c = ledger.claim_pending(job, run, 3)
    answered = record(c.id, job, run, 1, "succeeded")
    answered.result.cost_usd = 0.5
    ledger.record_outcomes([answered])
    sent = utcnow()
    ledger.record_abandoned(
        job,
        [
            abandoned_outcome(job, run, a.id, a.custom_id, 1, sent, 0.25),
            abandoned_outcome(job, run, b.id, b.custom_id, 1, sent, None),  # no price
        ],
    )
    assert ledger.end_run(job, run) == "stopped"
    summary = ledger.summary(job)
    assert summary.counts == {"pending": 2, "succeeded": 1}
    assert summary.attempts == 3 and summary.cost_usd == pytest.approx(0.75)
    assert summary.options["possibly_billed_requests"] == 2
    (attempt,) = ledger.attempts_of(a.id)
    assert (attempt.outcome, attempt.number, attempt.result.cost_usd) == ("unknown", 1, 0.25)
    assert item_column(ledger, a.id, "cost_usd") is None  # the item's own cost: none yet
    # The next run numbers the item's next attempt after the abandoned one.
    again = ledger.start_run(job, max_attempts=5)
    assert sorted(i.attempts for i in ledger.claim_pending(job, again, 3)) == [1, 1]


def test_job_options_merged_while_another_worker_adds_to_them_keep_both(pg_url: str) -> None:
    """Review finding: update_job_options read the options without locking the job's row, so
    a worker's learned limits (each heartbeat) or run_concurrency (each run's start) written
    while another worker's record_abandoned added to the possibly-billed total (its row
    locked) wrote the old options back: the possibly-billed requests, which the budget
    counts, were lost."""
    ledger = Ledger(pg_url)
    job = new_job(ledger, 1)
    other = create_engine(pg_url)
    try:
        with other.begin() as worker, other.connect() as watch:
            locked = select(jobs_t.c.options).where(jobs_t.c.id == job).with_for_update()
            options = dict(worker.execute(locked).scalar_one())
            merging = threading.Thread(
                target=ledger.update_job_options, args=(job, {"server_rpm": 500})
            )
            merging.start()
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            for _ in range(400):  # until the merge waits for this worker's lock (or 20 s)
                if watch.execute(waiting).scalar_one():
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the merge never waited for the job's row")
            options["possibly_billed_requests"] = 1
            worker.execute(update(jobs_t).where(jobs_t.c.id == job).values(options=options))
        merging.join(timeout=20)
        assert not merging.is_alive()
    finally:
        other.dispose()
    stored, _ = ledger.job_options(job)
    assert stored["server_rpm"] == 500 and stored["possibly_billed_requests"] == 1


def test_results_written_through_the_driver_read_back_like_any_other_time(
    ledger_url: str,
) -> None:
    """record_outcomes bypasses SQLAlchemy's parameter processing; its times must still be
    stored the way SQLAlchemy stores them (on SQLite: text that sorts and compares with the
    text it writes itself, even for a time on a whole second)."""
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 2)
    run = ledger.start_run(job, max_attempts=5)
    first, second = ledger.claim_pending(job, run, 2)
    on_the_second = datetime(2030, 1, 2, 3, 4, 5)
    done = record(first.id, job, run, 1, "succeeded")
    done.started_at = done.ended_at = on_the_second
    later = record(second.id, job, run, 1, "succeeded")
    later.started_at = later.ended_at = on_the_second + timedelta(microseconds=1)
    ledger.record_outcomes([done, later])
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(items_t.c.id, items_t.c.finished_at)
            .where(items_t.c.job_id == job, items_t.c.finished_at >= on_the_second)
            .order_by(items_t.c.finished_at)
        ).all()
    assert rows == [(first.id, on_the_second), (second.id, later.ended_at)]
    assert [a.ended_at for a in ledger.attempts_of(first.id)] == [on_the_second]


def test_an_outcome_from_a_run_that_lost_the_item_changes_nothing(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 1)
    run = ledger.start_run(job, max_attempts=5)
    (item,) = ledger.claim_pending(job, run, 1)
    ledger.record_outcomes([record(item.id, job, "some-other-run", 1, "succeeded")])
    assert ledger.summary(job).counts == {"running": 1}
    assert len(ledger.attempts_of(item.id)) == 1  # the attempt itself is still on record


def test_a_second_live_run_is_refused(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 2)
    ledger.start_run(job, max_attempts=5)
    with pytest.raises(JobBusyError, match="already running in process"):
        Ledger(ledger_url).start_run(job, max_attempts=5)


def test_a_dead_run_is_detected_and_its_items_go_back_to_pending(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
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


def test_workers_share_a_job_and_a_silent_ones_items_come_back_after_its_lease(
    ledger_url: str,
) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 6)
    first = ledger.start_run(job, max_attempts=5, shared=True)
    second = ledger.start_run(job, max_attempts=5, shared=True)  # joins: no JobBusyError
    assert len(ledger.claim_pending(job, first, 2)) == 2
    assert len(ledger.claim_pending(job, second, 2)) == 2
    assert ledger.held_by_others(job, second) == 2
    assert ledger.reclaim(job, lease_s=60) == 2  # both alive: nothing taken back
    with ledger.engine.begin() as conn:  # the first worker's machine went quiet
        conn.execute(
            update(runs_t)
            .where(runs_t.c.id == first)
            .values(hostname="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=30))
        )
    assert ledger.reclaim(job, lease_s=60) == 2  # within its lease: still alive
    assert ledger.reclaim(job, lease_s=10) == 1  # past it: dead, its items are free again
    assert ledger.summary(job).counts == {"pending": 4, "running": 2}
    assert len(ledger.claim_pending(job, second, 10)) == 4
    assert [w.id for w in ledger.runs_of(job, lease_s=10)] == [second]


def test_items_that_used_every_attempt_fail_at_the_next_start(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 2)
    run = ledger.start_run(job, max_attempts=2)
    a, _ = ledger.claim_pending(job, run, 2)
    ledger.record_outcomes([record(a.id, job, run, 1, None), record(a.id, job, run, 2, None)])
    ledger.end_run(job, run)
    ledger.start_run(job, max_attempts=2)
    assert ledger.summary(job).counts == {"failed": 1, "pending": 1}


def test_find_job_by_id_name_or_latest(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    first, second = new_job(ledger, 1), new_job(ledger, 1)
    assert ledger.find_job(None) == second
    assert ledger.find_job(str(first)) == first
    assert ledger.find_job("t") == second


def test_the_ledger_file_is_created_in_a_new_folder(tmp_path: Path) -> None:
    Ledger(f"sqlite:///{tmp_path}/deep/er/ledger.db")
    assert os.path.exists(tmp_path / "deep" / "er" / "ledger.db")


def test_a_deferred_item_is_not_claimed_before_its_time(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 4)
    run = ledger.start_run(job, max_attempts=5)
    a, b, c, _d = ledger.claim_pending(job, run, 4)
    later = utcnow().replace(microsecond=0) + timedelta(hours=1)
    ledger.record_outcomes(
        [
            record(a.id, job, run, 1, "pending", not_before=later),
            record(b.id, job, run, 1, "pending", not_before=utcnow() - timedelta(seconds=1)),
            record(c.id, job, run, 1, "pending"),  # stopped: back to pending, no wait
        ]
    )
    assert item_column(ledger, a.id, "not_before") == later
    assert item_column(ledger, a.id, "finished_at") is None  # handed back is not finished
    assert item_column(ledger, a.id, "run_id") is None
    assert item_column(ledger, c.id, "not_before") is None
    assert [i.position for i in ledger.claim_pending(job, run, 10)] == [b.position, c.position]
    assert item_column(ledger, b.id, "not_before") is None  # a claim clears a past wait
    assert ledger.claim_pending(job, run, 10) == []
    assert ledger.next_not_before(job) == later
    assert ledger.summary(job).counts == {"pending": 1, "running": 3}
    with ledger.engine.begin() as conn:  # time passes
        conn.execute(
            update(items_t)
            .where(items_t.c.id == a.id)
            .values(not_before=utcnow() - timedelta(seconds=1))
        )
    assert ledger.next_not_before(job) is None
    assert [i.id for i in ledger.claim_pending(job, run, 10)] == [a.id]


def test_only_a_hand_back_to_pending_keeps_not_before(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 3)
    run = ledger.start_run(job, max_attempts=5)
    items_ = ledger.claim_pending(job, run, 3)
    later = utcnow() + timedelta(minutes=5)
    with ledger.engine.begin() as conn:  # as if each had been deferred before
        conn.execute(update(items_t).where(items_t.c.job_id == job).values(not_before=later))
    retry, done, failed = (
        record(items_[0].id, job, run, 1, None, not_before=later),
        record(items_[1].id, job, run, 1, "succeeded", not_before=later),
        record(items_[2].id, job, run, 1, "failed", not_before=later),
    )
    ledger.record_outcomes([retry, done, failed])
    for item in items_:
        assert item_column(ledger, item.id, "not_before") is None
    assert ledger.next_not_before(job) is None


def test_next_not_before_is_the_earliest_future_wait_of_this_job(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job, other = new_job(ledger, 4), new_job(ledger, 1)
    assert ledger.next_not_before(job) is None
    now = utcnow().replace(microsecond=0)
    waits = {1: now + timedelta(minutes=9), 2: now + timedelta(minutes=3), 3: now - timedelta(1)}
    with ledger.engine.begin() as conn:
        for position, when in waits.items():
            conn.execute(
                update(items_t)
                .where(items_t.c.job_id == job, items_t.c.position == position)
                .values(not_before=when)
            )
        conn.execute(  # a finished item's leftover wait does not count
            update(items_t)
            .where(items_t.c.job_id == job, items_t.c.position == 4)
            .values(not_before=now + timedelta(minutes=1), state="succeeded")
        )
        conn.execute(
            update(items_t)
            .where(items_t.c.job_id == other)
            .values(not_before=now + timedelta(minutes=1))
        )
    assert ledger.next_not_before(job) == now + timedelta(minutes=3)
    assert ledger.next_not_before(other) == now + timedelta(minutes=1)
    run = ledger.start_run(job, max_attempts=5)
    assert [i.position for i in ledger.claim_pending(job, run, 10)] == [3]


def test_concurrent_claimers_share_the_items_without_overlap(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 400)
    run = ledger.start_run(job, max_attempts=5)
    claims: list[list[int]] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        own = Ledger(ledger_url)
        try:
            while page := own.claim_pending(job, run, 7):
                claims.append([item.position for item in page])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert all(1 <= len(page) <= 7 for page in claims)
    positions = [p for page in claims for p in page]
    assert sorted(positions) == list(range(1, 401))  # every item once, none twice


def test_claims_and_waits_are_answered_from_the_partial_indexes(ledger_url: str) -> None:
    """The SQL the ledger sends, explained by the database itself."""
    ledger = Ledger(ledger_url)
    job = new_job(ledger, 300)
    run = ledger.start_run(job, max_attempts=5)
    sent: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "items" in statement:
            sent.append((statement, parameters))

    event.listen(ledger.engine, "before_cursor_execute", grab)
    ledger.claim_pending(job, run, 10)
    ledger.next_not_before(job)
    event.remove(ledger.engine, "before_cursor_execute", grab)
    (claim, claim_params), (wait, wait_params) = sent
    with ledger.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # tiny tables: judge the indexes

            def plan(sql: str, params: Any) -> str:
                return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql, params))
        else:

            def plan(sql: str, params: Any) -> str:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
                return "\n".join(str(r[-1]) for r in rows)

        assert "ix_items_pending" in plan(claim, claim_params)
        assert "ix_items_deferred" in plan(wait, wait_params)


def test_typed_rows_hold_every_column_of_their_table() -> None:
    """Rows leave the ledger as dataclasses: each holds all of its table (a new column that a
    row forgets fails here), and the result columns are Result's, spelled once."""
    items = {c.name for c in items_t.columns}
    assert set(ITEM_ROW_COLUMNS) | set(RESULT_COLUMNS) == items
    assert not set(ITEM_ROW_COLUMNS) & set(RESULT_COLUMNS)
    assert [f.name for f in fields(BatchRow)] == [c.name for c in batches_t.columns]
    assert {f.name for f in fields(RunRow)} == {c.name for c in runs_t.columns}
    attempt_keys = {f.name for f in fields(AttemptRow)} - {"result"}
    assert attempt_keys | set(ATTEMPT_RESULT_COLUMNS) == {c.name for c in attempts_t.columns}
    assert set(RESULT_COLUMNS) - set(ATTEMPT_RESULT_COLUMNS) == {"finish_reason", "response"}


def test_a_job_whose_only_spend_is_possibly_billed_unpriced_requests_is_not_shown_free(
    db_url: str,
) -> None:
    """Review finding: `status` showed cost $0.00 ("spent nothing") for a job with nothing
    answered whose requests were abandoned in flight (possibly billed) on a model without a
    price: their cost is unknown, not zero."""
    ledger = Ledger(db_url)
    job = new_job(ledger, 1)  # model "m": no price known
    run = ledger.start_run(job, max_attempts=5)
    (a,) = ledger.claim_pending(job, run, 1)
    ledger.record_abandoned(
        job, [abandoned_outcome(job, run, a.id, a.custom_id, 1, utcnow(), None)]
    )
    ledger.end_run(job, run)
    shown = job_status(ledger.summary(job))
    assert shown["possibly_billed_requests"] == 1
    assert shown["cost_usd"] is None
