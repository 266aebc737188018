"""On PostgreSQL, the statements a run repeats for every page, answer and beat (claims, result
writes, heartbeats, what other workers hold, dead runs' items, the next deferred time, the
run's start and end) are served by indexes: EXPLAIN shows no sequential scan of items, and
the hottest ones use the index made for them.

Sequential scans are priced out (enable_seqscan off): the planner then takes any index that can
serve a statement, so only a statement no index serves still shows "Seq Scan on items", and a
later change that loses an index (or writes a predicate none fits) fails here, whatever the
table's size."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from batchrunner.ledger import Ledger
from tests.test_ledger import new_job
from tests.test_summary_index import outcome

pytestmark = pytest.mark.postgres

# The statements of a run's hot path, by how they begin, and the index made for each.
MADE_FOR: dict[str, str] = {
    "WITH claimable AS MATERIALIZED": "ix_items_pending",  # a claim
    "UPDATE items SET run_id = ": "items_pkey",  # an item's result
    "SELECT count(*) AS count_1 FROM items WHERE items.job_id = ": "ix_items_running",
    "SELECT min(items.not_before)": "ix_items_deferred",
}


def test_the_statements_of_a_run_scan_no_items_table(pg_url: str) -> None:
    ledger = Ledger(pg_url)
    new_job(ledger, 2000)  # another job's items in the same table
    job = new_job(ledger, 2000)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        executemany = rest[-1]
        if "items" in statement and not statement.lstrip().upper().startswith("INSERT"):
            seen.append((statement, parameters[0] if executemany else parameters))

    event.listen(ledger.engine, "before_cursor_execute", capture)
    run = ledger.start_run(job, max_attempts=5, shared=True)
    other = ledger.start_run(job, max_attempts=5, shared=True)
    mine = ledger.claim_pending(job, run, 50)
    ledger.claim_pending(job, other, 50)
    ledger.record_outcomes(
        [outcome(item.id, job, run, 1, "succeeded", input_tokens=3) for item in mine[:40]]
        + [outcome(item.id, job, run, 1, "pending") for item in mine[40:]]
    )
    ledger.heartbeat(run)
    ledger.held_by_others(job, run)
    ledger.reclaim(job)
    ledger.next_not_before(job)
    ledger.end_run(job, run)
    event.remove(ledger.engine, "before_cursor_execute", capture)
    assert len(seen) >= 8  # every call above was seen

    found: set[str] = set()
    with ledger.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE items")
        conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in seen:
            plan = "\n".join(
                row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            )
            assert "Seq Scan on items" not in plan, f"{statement}\n{plan}"
            flat = " ".join(statement.split())
            for start, index in MADE_FOR.items():
                if flat.startswith(start) and "items.state IN" not in flat:
                    assert f"using {index} on items" in plan, f"{statement}\n{plan}"
                    found.add(start)
    assert found == set(MADE_FOR)  # each was seen, and served by its own index
    ledger.close()
