"""What one request came to, in either mode: the one result record batchrunner writes.

`Result` is the list of result columns, spelled here and nowhere else: an `Outcome` carries
one, so does an item read back from the ledger (ledger/records.py `ItemRow.result`); the ledger
writes them by these names (an item's row takes all of them, an attempt's row those the
attempts table has), `--reuse` copies them, and export reads them. A new result column is a
field here, a column in ledger/models.py with its migration, the line that fills it
(runner/outcomes.py) and, to show it, an entry in export.py's column table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter

from batchrunner.structured import SCHEMA_BROKEN


@dataclass(slots=True)
class Result:
    """What came back for an item: the answer or the error, its usage, cost and latency."""

    http_status: int | None = None
    finish_reason: str | None = None  # length / content_filter: kept as a flag (it was billed)
    response: str | None = None  # the answer's body as JSON text, exactly as received
    error_kind: str | None = None  # a failures.ErrorKind value
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None  # reasoning tokens included
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    # A structured answer (its request asked for a JSON schema or a JSON object) checked: True
    # or False (kept as a flag: it was billed), None when nothing was asked; and why not valid.
    output_valid: bool | None = None
    invalid_reason: str | None = None


# Answers that were billed but cut short (by the output cap, or a content filter): they count as
# succeeded, and `status` counts them apart.
FLAGGED_FINISH_REASONS: tuple[str, ...] = ("length", "content_filter")
# How `status` names the succeeded answers that failed their structured-output check.
INVALID_OUTPUT = "invalid_output"
RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Result))
result_values = attrgetter(*RESULT_COLUMNS)  # a Result's values, in RESULT_COLUMNS order


@dataclass(slots=True, kw_only=True)
class Outcome:
    """One request's outcome (or one batch output line's), ready for the ledger.

    `state` is the item's next state: None while this run tries it again; PENDING hands it back
    to the ledger (with `not_before`, no run claims it before then); succeeded or failed ends
    it. The item is the one its holder holds: concurrent mode names it (`item_id`, `run_id`,
    `number`); a batch line names it by `custom_id` in `batch_id`, and the ledger finds it.
    """

    job_id: int
    custom_id: str
    state: str | None
    attempt_outcome: str  # the attempt row's: succeeded | retry | failed | stopped | unknown
    started_at: datetime
    ended_at: datetime
    run_id: str | None = None  # the run holding the item (concurrent mode)
    batch_id: int | None = None  # the batch holding the item (batch mode)
    item_id: int | None = None
    number: int = 0  # this attempt's number: the item's attempts, once it is recorded
    is_attempt: bool = True  # False: the request never ran (an expired batch's line)
    not_before: datetime | None = None
    model: str | None = None  # the item's model: for the run's metrics (the ledger has it)
    result: Result = field(default_factory=Result)


def mendable(result: Result) -> bool:
    """An answer that failed its structured-output check and that asking again could mend:
    not one whose request's own schema is broken."""
    return result.output_valid is False and not (result.invalid_reason or "").startswith(
        SCHEMA_BROKEN
    )
