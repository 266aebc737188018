"""The ledger's queries for Batch API mode: remote batches and the items they hold.

An item packed into a batch is `running` with `batch_id` set (and no run_id), so a dead
process's leftovers are not put back to pending while the batch may still answer for them.
Every write is fenced on the batch: a line answered for an item that has left the batch changes
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import func, insert, or_, select, update

from batchrunner.failures import retries_invalid
from batchrunner.ledger.models import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    batches_t,
    items_t,
)
from batchrunner.ledger.records import BatchRow, PackedItem, QueriesMixin, row_columns, utcnow
from batchrunner.ledger.results import count_invalid_answers, mask_outcomes, write_outcomes
from batchrunner.outcome import Outcome, mendable
from batchrunner.redact import mask

PACKING, UPLOADED, SUBMITTED, SETTLED, ABANDONED = (
    "packing",
    "uploaded",
    "submitted",
    "settled",
    "abandoned",
)
UNSETTLED = (PACKING, UPLOADED, SUBMITTED)
BATCH_STATES = (*UNSETTLED, SETTLED, ABANDONED)
ASSIGN_CHUNK = 500
PAGE = 1000


class BatchQueries(QueriesMixin):
    """Mixed into `Ledger`."""

    def open_batch(
        self,
        job_id: int,
        token: str,
        endpoint: str,
        model: str,
        item_ids: Sequence[int],
        prompt_tokens: int,
    ) -> tuple[int, int]:
        """Record a batch before anything is uploaded and hand it its items (those still
        pending), in one transaction. Returns (batch id, items assigned)."""
        now = utcnow()
        with self._write("record a batch in") as conn:
            batch_id = conn.execute(
                insert(batches_t).returning(batches_t.c.id),
                {
                    "job_id": job_id,
                    "token": token,
                    "state": PACKING,
                    "endpoint": endpoint,
                    "model": model,
                    "request_count": 0,
                    "prompt_tokens": prompt_tokens,
                    "completed": 0,
                    "failed": 0,
                    "created_at": now,
                },
            ).scalar_one()
            assigned = 0
            for start in range(0, len(item_ids), ASSIGN_CHUNK):
                chunk = list(item_ids[start : start + ASSIGN_CHUNK])
                assigned += conn.execute(
                    update(items_t)
                    .where(items_t.c.id.in_(chunk), items_t.c.state == PENDING)
                    .values(state=RUNNING, batch_id=batch_id, run_id=None, updated_at=now)
                ).rowcount
            conn.execute(
                update(batches_t).where(batches_t.c.id == batch_id).values(request_count=assigned)
            )
        return int(batch_id), assigned

    def update_batch(
        self,
        batch_id: int,
        *,
        state: str | None = None,
        input_file_id: str | None = None,
        remote_id: str | None = None,
        remote_status: str | None = None,
        completed: int | None = None,
        failed: int | None = None,
        output_file_id: str | None = None,
        error_file_id: str | None = None,
        usage: str | None = None,
    ) -> None:
        """Record what became known of a batch; what is None stays as it was."""
        given = {
            "state": state,
            "input_file_id": input_file_id,
            "remote_id": remote_id,
            "remote_status": remote_status,
            "completed": completed,
            "failed": failed,
            "output_file_id": output_file_id,
            "error_file_id": error_file_id,
            "usage": usage,
        }
        values = {name: value for name, value in given.items() if value is not None}
        self._update_batch(batch_id, values)

    def forget_batch_file(self, batch_id: int, file_id: str) -> None:
        """A file of the batch was deleted from the API: the batch no longer names it (a
        settled batch that still names a file has one left to delete)."""
        with self._write("update a batch in") as conn:
            for column in ("input_file_id", "output_file_id", "error_file_id"):
                conn.execute(
                    update(batches_t)
                    .where(batches_t.c.id == batch_id, batches_t.c[column] == file_id)
                    .values({column: None, "updated_at": utcnow()})
                )

    def record_batch_errors(
        self, batch_id: int, problems: Iterable[tuple[str | None, str | None, int | None]]
    ) -> None:
        """A failed batch's errors.data, as (code, message, line): each message masked like
        every answer's before it is stored as JSON."""
        errors = [
            {"code": code, "message": mask(message or ""), "line": line}
            for code, message, line in problems
        ]
        self._update_batch(batch_id, {"errors": json.dumps(errors)})

    def _update_batch(self, batch_id: int, values: dict[str, Any]) -> None:
        with self._write("update a batch in") as conn:
            conn.execute(
                update(batches_t)
                .where(batches_t.c.id == batch_id)
                .values(updated_at=utcnow(), **values)
            )

    def batches_of(self, job_id: int, states: tuple[str, ...] = UNSETTLED) -> list[BatchRow]:
        with self._read() as conn:
            rows = conn.execute(
                select(*row_columns(batches_t, BatchRow))
                .where(batches_t.c.job_id == job_id, batches_t.c.state.in_(states))
                .order_by(batches_t.c.id)
            )
            return [BatchRow(*row) for row in rows]

    def enqueued_tokens(self, job_id: int) -> dict[str, int]:
        """Prompt tokens held by the job's unsettled batches, per model."""
        with self._read() as conn:
            rows = conn.execute(
                select(batches_t.c.model, func.sum(batches_t.c.prompt_tokens))
                .where(batches_t.c.job_id == job_id, batches_t.c.state.in_(UNSETTLED))
                .group_by(batches_t.c.model)
            )
            return {model: int(tokens or 0) for model, tokens in rows}

    def batch_items(self, batch_id: int) -> Iterator[PackedItem]:
        """The batch's items in file order (line N of its input file is the Nth), paged."""
        after = -1
        while True:
            with self._read() as conn:
                rows = [
                    PackedItem(*row)
                    for row in conn.execute(
                        select(*row_columns(items_t, PackedItem))
                        .where(items_t.c.batch_id == batch_id, items_t.c.position > after)
                        .order_by(items_t.c.position)
                        .limit(PAGE)
                    )
                ]
            if not rows:
                return
            yield from rows
            after = rows[-1].position

    def structured_requests(
        self, batch_id: int, custom_ids: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        """custom_id -> (url, body) of those of the batch's items whose body may ask for a
        structured output (it names json_schema or json_object): the rest are not read."""
        if not custom_ids:
            return {}
        body = items_t.c.body
        with self._read() as conn:
            rows = conn.execute(
                select(items_t.c.custom_id, items_t.c.url, body).where(
                    items_t.c.batch_id == batch_id,
                    items_t.c.custom_id.in_(custom_ids),
                    or_(body.contains("json_schema"), body.contains("json_object")),
                )
            ).all()
        return {custom_id: (url, text) for custom_id, url, text in rows}

    def settle_batch_lines(
        self,
        job_id: int,
        batch_id: int,
        lines: Sequence[Outcome],
        max_attempts: int,
        retry_invalid: int = 0,
    ) -> list[Outcome]:
        """Write the outcomes of a batch's output lines, which name their items by custom_id:
        one attempt row for each line that ran, and the item's new state. Lines for items no
        longer in this batch are skipped, a repeated line counts once. A line that would go
        again after the item's last allowed attempt fails it instead (as `fail_exhausted`
        does, and concurrent mode's final verdict). An answer that failed its structured
        check goes again (to pending, for the next batch) while `retry_invalid` allows
        (`failures.retries_invalid`), else it stays, flagged. Returns the outcomes written, as
        written (the lines whose items it held, each with its item's new state)."""
        if not lines:
            return []
        mask_outcomes(lines)
        with self._write("record batch results in") as conn:
            held = {
                row.custom_id: (row.id, row.attempts, row.attempts_floor)
                for row in conn.execute(
                    select(
                        items_t.c.id,
                        items_t.c.custom_id,
                        items_t.c.attempts,
                        items_t.c.attempts_floor,
                    ).where(
                        items_t.c.job_id == job_id,
                        items_t.c.batch_id == batch_id,
                        items_t.c.state == RUNNING,
                        items_t.c.custom_id.in_([line.custom_id for line in lines]),
                    )
                )
            }
            found = []
            invalid_floors: dict[int, int] = {}  # item id -> attempts_floor, of invalid answers
            for line in lines:
                item = held.pop(line.custom_id, None)
                if item is not None:
                    item_id, previous, floor = item
                    number = previous + 1 if line.is_attempt else previous
                    line = replace(line, item_id=item_id, number=number)
                    used = number - floor  # a retried item's earlier attempts do not count
                    if line.state == PENDING and line.is_attempt and used >= max_attempts:
                        line = replace(line, state=FAILED, attempt_outcome="failed")
                    if retry_invalid and line.state == SUCCEEDED and mendable(line.result):
                        invalid_floors[item_id] = floor
                    found.append(line)
            if invalid_floors:
                before = count_invalid_answers(conn, invalid_floors)
                for index, line in enumerate(found):
                    floor = invalid_floors.get(line.item_id or 0, -1)
                    used = line.number - floor
                    if floor >= 0 and retries_invalid(
                        before.get(line.item_id or 0, 0), retry_invalid, used, max_attempts
                    ):
                        found[index] = replace(line, state=PENDING, attempt_outcome="retry")
            write_outcomes(conn, found, "batch_id")
        return found

    def release_batch(self, batch_id: int, state: str, leftover: str = PENDING) -> int:
        """Close a batch: its items that got no answer go to `leftover` (pending to be sent
        again, or cancelled). Returns how many."""
        now = utcnow()
        values: dict[str, Any] = {"state": leftover, "batch_id": None, "updated_at": now}
        if leftover == CANCELLED:
            values["finished_at"] = now
        with self._write("close a batch in") as conn:
            released = conn.execute(
                update(items_t)
                .where(items_t.c.batch_id == batch_id, items_t.c.state == RUNNING)
                .values(**values)
            ).rowcount
            conn.execute(
                update(batches_t)
                .where(batches_t.c.id == batch_id)
                .values(state=state, updated_at=now, finished_at=now)
            )
        return int(released)
