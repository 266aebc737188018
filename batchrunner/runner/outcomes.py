"""From a verdict to an outcome's result, one way for both modes: the answer's usage, cost and
finish_reason, or the error's kind, code and message.

What a verdict does to its item differs by mode only where the mode differs: concurrent mode
retries in place and can stop the job; batch mode can only hand a line's item back for the next
batch, and one line never stops a job (the rest of the batch was answered).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, NamedTuple

import orjson

from batchrunner.dialects import Dialect
from batchrunner.failures import FAIL, RETRY, STOP, SUCCEED, Action, Verdict
from batchrunner.ledger.models import FAILED, PENDING, SUCCEEDED
from batchrunner.ledger.records import utcnow
from batchrunner.outcome import Outcome, Result
from batchrunner.pricing import PriceTable, price_item
from batchrunner.structured import OutputChecker, OutputFormat
from batchrunner.usage import Usage


class Effect(NamedTuple):
    """What an action does to its item: the item's next state (None: this run tries it
    again) and what the attempt's row says."""

    state: str | None
    attempt: str


CONCURRENT_EFFECTS: Final[dict[Action, Effect]] = {
    SUCCEED: Effect(SUCCEEDED, "succeeded"),
    RETRY: Effect(None, "retry"),
    FAIL: Effect(FAILED, "failed"),
    STOP: Effect(PENDING, "stopped"),  # the job stops; the item waits for `run`
}
# A retry is the next batch's; a stop-the-job answer on one line proves only that line failed.
BATCH_EFFECTS: Final[dict[Action, Effect]] = {
    SUCCEED: Effect(SUCCEEDED, "succeeded"),
    RETRY: Effect(PENDING, "retry"),
    FAIL: Effect(FAILED, "failed"),
    STOP: Effect(FAILED, "failed"),
}


# An attempt row's outcome for a request abandoned in flight (a second Ctrl-C): it was sent, and
# the server may have answered and billed it; nobody will know. (An attempt's outcome is
# otherwise succeeded, retry, failed or stopped.)
UNKNOWN: Final = "unknown"
ABANDONED_MESSAGE = (
    "abandoned in flight (a second Ctrl-C): the server may have answered and billed it; "
    "cost_usd is its worst case, an estimate"
)


def abandoned_outcome(
    job_id: int,
    run_id: str,
    item_id: int,
    custom_id: str,
    number: int,
    sent_at: datetime,
    worst_usd: float | None,
) -> Outcome:
    """The attempt of a request abandoned in flight: outcome unknown, possibly billed, priced
    at its worst case (None when its model has no price). Its item waits for `run`."""
    outcome = Outcome(
        job_id=job_id,
        custom_id=custom_id,
        state=PENDING,
        attempt_outcome=UNKNOWN,
        started_at=sent_at,
        ended_at=utcnow(),
        run_id=run_id,
        item_id=item_id,
        number=number,
    )
    outcome.result.error_message = ABANDONED_MESSAGE
    outcome.result.cost_usd = worst_usd
    return outcome


class AnswerReader:
    """Reads answers in one provider's dialect, prices them at one mode's rates, and checks
    structured ones against what their requests asked (each schema compiled once a run)."""

    def __init__(self, dialect: Dialect, prices: PriceTable | None, batch: bool) -> None:
        self._dialect = dialect
        self._prices = prices
        self._batch = batch
        self._checker = OutputChecker()

    def wanted(self, url: str, body: str) -> OutputFormat | None:
        """The structured output a request body asks for; a body that cannot name one (no
        "json_" in it: most of them) is not parsed."""
        if "json_" not in body:
            return None
        parsed = orjson.loads(body)
        return self._dialect.requested_format(url, parsed) if isinstance(parsed, dict) else None

    def fill(
        self,
        result: Result,
        verdict: Verdict,
        model: str,
        response: str | None,
        wanted: OutputFormat | None = None,
    ) -> None:
        """Put what `verdict` says into `result`: for a success its usage, cost, finish_reason,
        `response` (the body as received) and, when its request asked for a structured output
        (`wanted`), whether the answer is one; else its error."""
        if verdict.action == SUCCEED and verdict.body is not None:
            usage = self._dialect.read_usage(verdict.body)
            result.cost_usd = self.cost(model, usage)
            result.input_tokens = usage.input_tokens
            result.cached_tokens = usage.cached_tokens
            result.output_tokens = usage.output_tokens
            result.reasoning_tokens = usage.reasoning_tokens
            result.finish_reason = self._dialect.read_finish_reason(verdict.body)
            result.response = response
            if wanted is not None:
                check = self._checker.check(wanted, self._dialect.answer_texts(verdict.body))
                result.output_valid = check.valid
                result.invalid_reason = check.reason
        else:
            result.error_kind = verdict.kind.value if verdict.kind is not None else None
            result.error_code = verdict.code
            result.error_message = verdict.message

    def cost(self, model: str, usage: Usage) -> float | None:
        priced = price_item(
            model, usage, batch=self._batch, when=datetime.now(UTC), overrides=self._prices
        )
        return priced.usd if priced is not None else None
