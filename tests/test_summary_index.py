"""`status` on a big job: the summary is read from a covering index (migration 0004), and a
ledger already at the newest revision opens without importing Alembic.

Every test taking `ledger_url` runs once per backend (see conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect

from batchrunner.ledger import Ledger
from batchrunner.ledger import migrate as migrations
from batchrunner.ledger.models import Base
from batchrunner.ledger.records import utcnow
from batchrunner.ledger.store import SCHEMA_HEAD
from batchrunner.outcome import Outcome, Result
from tests.test_ledger import new_job

INDEX = "ix_items_summary"
MODELS = ["m1", "m1", "m2", "m1", "m2", "m1", "m1"]


def outcome(
    item_id: int, job: int, run: str, number: int, state: str | None, **usage: Any
) -> Outcome:
    now = utcnow()
    return Outcome(
        item_id=item_id,
        job_id=job,
        custom_id="",
        run_id=run,
        number=number,
        started_at=now,
        ended_at=now,
        attempt_outcome=state or "retry",
        state=state,
        result=Result(
            http_status=200 if state == "succeeded" else 500,
            error_kind=None if state == "succeeded" else usage.pop("kind", "server_error"),
            **usage,
        ),
    )


def work_on(ledger: Ledger, job: int) -> None:
    """Every kind of item a summary counts: succeeded (priced, unpriced), failed (two kinds),
    retried and handed back to pending, still running, never claimed. Costs are exact binary
    fractions, so sums do not depend on the order the database adds them in."""
    run = ledger.start_run(job, max_attempts=5)
    a, b, c, d, e, f = ledger.claim_pending(job, run, 6)
    ledger.record_outcomes(
        [
            outcome(a.id, job, run, 1, None),
            outcome(b.id, job, run, 1, "failed", kind="invalid_request"),
            outcome(c.id, job, run, 1, "succeeded", input_tokens=7, output_tokens=5,
                    cached_tokens=2, reasoning_tokens=1, cost_usd=0.25),
            outcome(d.id, job, run, 1, "failed", kind="server_error"),
            outcome(e.id, job, run, 1, "succeeded", input_tokens=3, output_tokens=4),
            outcome(f.id, job, run, 1, "pending", input_tokens=1),
        ]
    )  # fmt: skip
    ledger.record_outcomes(
        [
            outcome(a.id, job, run, 2, "succeeded", input_tokens=10, output_tokens=3,
                    cost_usd=0.5),
        ]
    )  # fmt: skip


def check(ledger: Ledger, job: int) -> None:
    summary = ledger.summary(job)
    assert summary.counts == {"succeeded": 3, "failed": 2, "pending": 2}
    assert (summary.input_tokens, summary.cached_tokens) == (21, 2)
    assert (summary.output_tokens, summary.reasoning_tokens) == (12, 1)
    assert (summary.attempts, summary.cost_usd, summary.finished_in_run) == (7, 0.75, 5)
    assert summary.failures_by_kind == {"invalid_request": 1, "server_error": 1}
    models = {name: asdict(t) for name, t in summary.models.items()}
    assert models == {
        "m1": {
            "items": 5,
            "input_tokens": 11,
            "cached_tokens": 0,
            "output_tokens": 3,
            "reasoning_tokens": 0,
            "cost_usd": 0.5,
            "unpriced": 0,
        },
        "m2": {
            "items": 2,
            "input_tokens": 10,
            "cached_tokens": 2,
            "output_tokens": 9,
            "reasoning_tokens": 1,
            "cost_usd": 0.25,
            "unpriced": 1,
        },
    }
    assert summary.unpriced_models == ["m2"]


def indexes(ledger: Ledger) -> set[str]:
    return {str(ix["name"]) for ix in inspect(ledger.engine).get_indexes("items")}


def test_schema_head_is_the_newest_migration() -> None:
    """A ledger at SCHEMA_HEAD skips Alembic when opened: it must be the real head."""
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_current_head() == SCHEMA_HEAD


def test_a_0003_ledger_is_upgraded_and_its_summary_stays_exact(ledger_url: str) -> None:
    """The items are recorded by today's code (which needs 0006's columns), then the ledger
    goes back to 0003 with them and comes up again."""
    ledger = Ledger(ledger_url)
    job = new_job(ledger, len(MODELS), MODELS)
    work_on(ledger, job)
    check(ledger, job)
    before = ledger.summary(job)
    migrations.downgrade(ledger.engine, "0003")
    assert INDEX not in indexes(ledger)
    ledger.close()

    ledger = Ledger(ledger_url)  # opening it upgrades it
    assert INDEX in indexes(ledger)
    with ledger.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (SCHEMA_HEAD,)
        assert list(compare_metadata(MigrationContext.configure(conn), Base.metadata)) == []
    check(ledger, job)  # from the index
    assert ledger.summary(job) == before


def test_the_summary_is_read_from_the_covering_index(ledger_url: str) -> None:
    """The SQL `summary` sends, explained by the database itself: no item row is read."""
    ledger = Ledger(ledger_url)
    job = new_job(ledger, len(MODELS), MODELS)
    work_on(ledger, job)
    sent: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM items" in statement:
            sent.append((statement, parameters))

    event.listen(ledger.engine, "before_cursor_execute", grab)
    check(ledger, job)
    event.remove(ledger.engine, "before_cursor_execute", grab)
    assert len(sent) == 2  # the counts and sums, the failures by kind
    with ledger.engine.connect() as conn:
        plans = []
        for statement, parameters in sent:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # tiny tables
                rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
                plans.append("\n".join(r[0] for r in rows))
                assert f"Index Only Scan using {INDEX}" in plans[-1], plans[-1]
            else:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                plans.append("\n".join(str(r[-1]) for r in rows))
                assert f"USING COVERING INDEX {INDEX}" in plans[-1], plans[-1]
    if ledger.engine.dialect.name == "sqlite":
        assert "TEMP B-TREE" not in plans[0]  # grouped in the index's order: no sort


def test_a_current_ledger_opens_and_shows_status_without_alembic(db_url: str) -> None:
    """Alembic is about a tenth of a second of start-up: `status` must not import it."""
    ledger = Ledger(db_url)
    work_on(ledger, new_job(ledger, len(MODELS), MODELS))
    ledger.close()
    code = (
        "import sys\n"
        "from batchrunner.cli import cli\n"
        f"cli(['status', '--db', {db_url!r}], standalone_mode=False)\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "succeeded 3, failed 2" in done.stdout
