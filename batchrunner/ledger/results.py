"""Writing results: every `Outcome`, from either mode, goes through `write_outcomes`, and
`--reuse` copies earlier answers. The result columns come from outcome.RESULT_COLUMNS; no
statement here spells them out.

Outcomes go straight to the driver as tuples (executemany): SQLAlchemy's per-row parameter work
was a large share of the writer's time at thousands of results per second. An item's row is
updated only while its holder still holds it (`run_id` in concurrent mode, `batch_id` in batch
mode), so a late answer for an item that was taken back changes no result; its attempt row is
still written (what was paid for stays visible).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any, Final, Literal

from sqlalchemy import Connection, select

from batchrunner.ledger.models import CANCELLED, FINISHED_STATES, PENDING, RUNNING, attempts_t
from batchrunner.ledger.records import TimeToSql, driver_sql, time_to_sql
from batchrunner.outcome import RESULT_COLUMNS, Outcome, result_values
from batchrunner.redact import mask_answer

Holder = Literal["run_id", "batch_id"]

# The attempt row: who and when, then the result columns the attempts table has.
ATTEMPT_KEYS = ("item_id", "job_id", "run_id", "number", "started_at", "ended_at", "outcome")
ATTEMPT_RESULT_COLUMNS: Final = tuple(name for name in RESULT_COLUMNS if name in attempts_t.c)
_attempt_result_values = attrgetter(*ATTEMPT_RESULT_COLUMNS)
RECORD_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_KEYS + ATTEMPT_RESULT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(ATTEMPT_KEYS) + len(ATTEMPT_RESULT_COLUMNS)))})"
)
# A repeated write (its first try's commit may have landed) first removes what that try wrote:
# one run numbers an item's attempts once each.
FORGET_ATTEMPT = "DELETE FROM attempts WHERE item_id = ? AND run_id = ? AND number = ?"
# The item row: its holder, state and counters, then every result column.
ITEM_STATE_COLUMNS = ("state", "not_before", "attempts", "updated_at", "finished_at")


def _record_item(holder: Holder) -> str:
    columns = (holder, *ITEM_STATE_COLUMNS, *RESULT_COLUMNS)
    settings = ", ".join(f"{name} = ?" for name in columns)
    return f"UPDATE items SET {settings} WHERE id = ? AND {holder} = ?"


RECORD_ITEM = {holder: _record_item(holder) for holder in ("run_id", "batch_id")}
GIVEN_BACK = (PENDING, CANCELLED)  # states in which an item leaves its holder


def mask_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Every result passes here before it is written, whatever mode produced it (and before the
    write transaction begins: it is CPU work), so this is where keys echoed by a server, in an
    error message or a non-200 body, are masked before they are stored."""
    for outcome in outcomes:
        result = outcome.result
        result.error_message, result.response = mask_answer(
            result.error_message, result.response, result.http_status
        )


def write_outcomes(
    conn: Connection, outcomes: Sequence[Outcome], holder: Holder, again: bool = False
) -> None:
    """Write a batch of masked outcomes whose items are known (`item_id`, `number`): an
    attempt row for each that was an attempt, and each item's new state where `holder` still
    holds it. `again`: the same batch once more after a try whose commit may have landed (the
    item updates are the same either way; the attempt rows must not be doubled)."""
    time = time_to_sql(conn.dialect)
    attempts, items = [], []
    for outcome in outcomes:
        ended = time(outcome.ended_at)  # the driver's form, once: most of a row's cost
        if outcome.is_attempt:
            attempts.append(_attempt_row(outcome, ended, time))
        items.append(_item_row(outcome, holder, ended, time))
    if attempts and again:
        forgotten = [(row[0], row[2], row[3]) for row in attempts]  # item_id, run_id, number
        conn.exec_driver_sql(driver_sql(conn.dialect, FORGET_ATTEMPT), forgotten)
    if attempts:
        conn.exec_driver_sql(driver_sql(conn.dialect, RECORD_ATTEMPT), attempts)
    if items:
        conn.exec_driver_sql(driver_sql(conn.dialect, RECORD_ITEM[holder]), items)


# The job's options that keep what requests abandoned in flight may have cost (their worst
# case, an estimate): the spend counts it, as no item's cost does.
POSSIBLY_BILLED_REQUESTS = "possibly_billed_requests"
POSSIBLY_BILLED_USD = "possibly_billed_usd"
COUNT_ATTEMPT = "UPDATE items SET attempts = ?, updated_at = ? WHERE id = ? AND run_id = ?"


def write_abandoned(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    """Requests abandoned in flight, their outcome unknown: an attempt row each (its cost the
    estimate), and its item's count of attempts; the item keeps its state and result (the run
    that holds it gives it back to pending as it ends), and no item cost counts the estimate."""
    time = time_to_sql(conn.dialect)
    attempts = [_attempt_row(o, time(o.ended_at), time) for o in outcomes]
    counts = [(o.number, time(o.ended_at), o.item_id, o.run_id) for o in outcomes]
    conn.exec_driver_sql(driver_sql(conn.dialect, RECORD_ATTEMPT), attempts)
    conn.exec_driver_sql(driver_sql(conn.dialect, COUNT_ATTEMPT), counts)


def _attempt_row(outcome: Outcome, ended: Any, time: TimeToSql) -> tuple[Any, ...]:
    return (
        outcome.item_id,
        outcome.job_id,
        outcome.run_id,
        outcome.number,
        time(outcome.started_at),
        ended,
        outcome.attempt_outcome,
        *_attempt_result_values(outcome.result),
    )


def _item_row(outcome: Outcome, holder: Holder, ended: Any, time: TimeToSql) -> tuple[Any, ...]:
    """The item's holder (cleared when the item is given back), state, counters and result,
    then the key of the update: its id and holder.

    Only a finished item gets `finished_at`: one handed back to pending is not done, and
    counting it would inflate the run's rate in `status`."""
    held_by = outcome.run_id if holder == "run_id" else outcome.batch_id
    state = outcome.state or RUNNING
    given_back = state in GIVEN_BACK
    return (
        None if given_back else held_by,
        state,
        time(outcome.not_before) if state == PENDING else None,
        outcome.number,
        ended,
        ended if state in FINISHED_STATES else None,
        *result_values(outcome.result),
        outcome.item_id,
        held_by,
    )


def count_invalid_answers(conn: Connection, floors: dict[int, int]) -> dict[int, int]:
    """How many answers that failed their structured-output check each item (id -> its
    attempts_floor: the attempts before `run --retry-failed` do not count) got; items with
    none are left out. Read from the attempts table (ix_attempts_item), so a kill or a batch
    in between loses no count."""
    if not floors:
        return {}
    rows = conn.execute(
        select(attempts_t.c.item_id, attempts_t.c.number).where(
            attempts_t.c.item_id.in_(list(floors)), attempts_t.c.output_valid.is_(False)
        )
    ).all()
    counts: dict[int, int] = {}
    for item_id, number in rows:
        if number > floors[item_id]:
            counts[item_id] = counts.get(item_id, 0) + 1
    return counts


# An answer `--reuse` copies: its result, less what belonged to its own request.
NOT_REUSED = ("cost_usd", "latency_ms")
REUSED_COLUMNS = tuple(name for name in RESULT_COLUMNS if name not in NOT_REUSED)


def reuse_answers(conn: Connection, job_id: int, simulated: bool, now: datetime) -> int:
    """Give each pending item of the job whose request (`request_hash`) already succeeded in an
    earlier job that answer: succeeded, `reused`, no attempt, no cost now. The answer is the
    earliest such item; a simulated job's answers serve only simulated jobs (they come from the
    fake server).

    request_hash has no index (it cost every answered item a random insert, see migration
    0005), so the job's requests go into an indexed temporary table, one pass over the ledger's
    succeeded items looks each up there, and the answers are copied by primary key: seconds on
    a ledger of millions, once per `submit --reuse`, whatever the planner's statistics."""
    postgres = conn.dialect.name == "postgresql"
    temporary = "ON COMMIT DROP" if postgres else ""
    statements = [
        "CREATE TEMPORARY TABLE reuse_pairs (item_id INTEGER PRIMARY KEY, "
        f"request_hash VARCHAR(64) NOT NULL, answer_id INTEGER) {temporary}",
        "CREATE INDEX reuse_pairs_hash ON reuse_pairs (request_hash)",
        "INSERT INTO reuse_pairs (item_id, request_hash) SELECT id, request_hash FROM items "
        "WHERE job_id = ? AND state = 'pending' AND request_hash IS NOT NULL",
        "CREATE TEMPORARY TABLE reuse_first (request_hash VARCHAR(64) PRIMARY KEY, "
        f"answer_id INTEGER NOT NULL) {temporary}",
        "INSERT INTO reuse_first (request_hash, answer_id) "
        "SELECT earlier.request_hash, min(earlier.id) FROM items AS earlier "
        "JOIN jobs ON jobs.id = earlier.job_id "
        "WHERE earlier.state = 'succeeded' AND earlier.job_id != ? AND jobs.simulated = ? "
        "AND earlier.request_hash IN (SELECT request_hash FROM reuse_pairs) "
        "GROUP BY earlier.request_hash",
    ]
    parameters: list[tuple[Any, ...]] = [(), (), (job_id,), (), (job_id, simulated)]
    for statement, values in zip(statements, parameters, strict=True):
        conn.exec_driver_sql(driver_sql(conn.dialect, statement), values)
    time = time_to_sql(conn.dialect)
    copied = ", ".join(f"{name} = answer.{name}" for name in REUSED_COLUMNS)
    result = conn.exec_driver_sql(
        driver_sql(
            conn.dialect,
            f"UPDATE items SET state = 'succeeded', reused = ?, {copied}, "
            "cost_usd = 0.0, updated_at = ?, finished_at = ? "
            "FROM reuse_pairs JOIN reuse_first "
            "ON reuse_first.request_hash = reuse_pairs.request_hash "
            "JOIN items AS answer ON answer.id = reuse_first.answer_id "
            "WHERE items.id = reuse_pairs.item_id",
        ),
        (True, time(now), time(now)),
    )
    if not postgres:  # a SQLite temporary table lives as long as the pooled connection
        conn.exec_driver_sql("DROP TABLE reuse_pairs")
        conn.exec_driver_sql("DROP TABLE reuse_first")
    return result.rowcount
