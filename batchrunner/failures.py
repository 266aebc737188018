"""What went wrong, and what it means: one enum of error kinds and one table of rules (pure).

Every failure is classified once into an `ErrorKind`: HTTP replies and batch output lines by the
provider's dialect (dialects/openai.py), transport failures by the request backend, refused
Files/Batch API calls by the batch backend (as a `BackendError`). Both modes then decide from
`RULES` alone; the kinds' values are what the ledger stores as `error_kind`.

| kind             | what happened                            | rule                           |
|------------------|------------------------------------------|--------------------------------|
| rate_limit       | 429 rate limited                         | retry; pauses every worker     |
|                  |                                          | (1 s when the server names no  |
|                  |                                          | time)                          |
| quota            | 429 insufficient_quota                   | stops the job                  |
| auth             | 401                                      | stops the job                  |
| permission       | 403                                      | stops the job                  |
| model_not_found  | 404 model_not_found (or a server's words | fails the item, and the items  |
|                  | for it): no such model here              | of that model on that endpoint |
|                  |                                          | unsent                         |
| not_found        | any other 404: no such endpoint here     | fails the item, and the items  |
|                  |                                          | of that endpoint unsent        |
| invalid_request  | 400, 422, other 4xx                      | fails the item                 |
| timeout          | 408, or no answer in time                | retry; possibly billed         |
| unreachable      | nothing reached the server: refused, no  | retry, not an attempt; the     |
|                  | such host, TLS or connect timeout        | breaker stops the job when the |
|                  |                                          | endpoint stays down            |
| connection       | a connection broken mid-request          | retry                          |
| server_error     | 409, 5xx                                 | retry                          |
| bad_response     | a 200 that is not a JSON object          | retry                          |
| batch            | a batch line never run (expired,         | retry; not an attempt          |
|                  | cancelled)                               |                                |
| batch_validation | a batch's validation named the line      | fails the item                 |
| token_limit      | a batch over the enqueued-token cap      | retry: wait, then resubmit     |

A retry after the last allowed attempt fails the item (`final_verdict`). What each mode does
with a rule: concurrent mode retries with backoff (`backoff_delay`), pauses every worker where
the rule says, stops the job where it says, and fails unsent the items a failure proves would
fail alike (`fails_alike`: one missing model, or one missing endpoint, never the whole job);
batch mode puts a retryable line's item back to
pending for the next batch and fails the others (a batch line proves nothing about the rest of
the job), and for a refused Files/Batch API call stops the job, gives up the batch (a call
refused for good), or tries again on the next pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, Literal

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0


class ErrorKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    AUTH = "auth"
    PERMISSION = "permission"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    INVALID_REQUEST = "invalid_request"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    CONNECTION = "connection"
    SERVER_ERROR = "server_error"
    BAD_RESPONSE = "bad_response"
    NOT_RUN = "batch"  # a line a batch never ran; stored as "batch" since the first ledgers
    BATCH_VALIDATION = "batch_validation"
    TOKEN_LIMIT = "token_limit"


@dataclass(frozen=True, slots=True)
class Rule:
    """What a kind of failure means for the item, the workers and the job."""

    retry: bool  # worth another attempt (while attempts are left)
    stops_job: bool = False  # every other item would meet it too: stop, resumably
    pauses_all: bool = False  # every worker waits (the account's limit, not this item's)
    min_wait_s: float = 0.0  # the wait when the server names none
    possibly_billed: bool = False  # sent, outcome unknown: the budget counts it as spent
    is_attempt: bool = True  # False: the request never ran (no attempt is recorded)
    breaks_circuit: bool = False  # evidence that the endpoint is down (runner/breaker.py)
    # What one such answer proves for the job's other items: that every item of the same
    # model on the same endpoint ("model"), or of the same endpoint ("endpoint"), fails alike.
    fails_alike: Literal["model", "endpoint"] | None = None


RULES: Final[dict[ErrorKind, Rule]] = {
    ErrorKind.RATE_LIMIT: Rule(retry=True, pauses_all=True, min_wait_s=1.0),
    ErrorKind.QUOTA: Rule(retry=False, stops_job=True),
    ErrorKind.AUTH: Rule(retry=False, stops_job=True),
    ErrorKind.PERMISSION: Rule(retry=False, stops_job=True),
    ErrorKind.MODEL_NOT_FOUND: Rule(retry=False, fails_alike="model"),
    ErrorKind.NOT_FOUND: Rule(retry=False, fails_alike="endpoint"),
    ErrorKind.INVALID_REQUEST: Rule(retry=False),
    ErrorKind.TIMEOUT: Rule(retry=True, possibly_billed=True),
    ErrorKind.UNREACHABLE: Rule(retry=True, is_attempt=False, breaks_circuit=True),
    ErrorKind.CONNECTION: Rule(retry=True),
    ErrorKind.SERVER_ERROR: Rule(retry=True),
    ErrorKind.BAD_RESPONSE: Rule(retry=True),
    ErrorKind.NOT_RUN: Rule(retry=True, is_attempt=False),
    ErrorKind.BATCH_VALIDATION: Rule(retry=False),
    ErrorKind.TOKEN_LIMIT: Rule(retry=True),
}

SUCCEED: Final = "succeed"
RETRY: Final = "retry"
FAIL: Final = "fail"
STOP: Final = "stop"
Action = Literal["succeed", "retry", "fail", "stop"]


def action_of(kind: ErrorKind | None) -> Action:
    """What the table says to do with one failure (None: there was none)."""
    if kind is None:
        return SUCCEED
    rule = RULES[kind]
    if rule.stops_job:
        return STOP
    return RETRY if rule.retry else FAIL


@dataclass(frozen=True, slots=True)
class Verdict:
    """One answer, classified: its kind (None for a success) and what to do about it."""

    action: Action
    kind: ErrorKind | None = None
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    body: dict[str, Any] | None = None  # the parsed 200 body

    @classmethod
    def failure(
        cls,
        kind: ErrorKind,
        code: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> Verdict:
        return cls(action_of(kind), kind, code, message, retry_after)

    @property
    def rule(self) -> Rule | None:
        return RULES[self.kind] if self.kind is not None else None


def final_verdict(verdict: Verdict, attempt: int, max_attempts: int) -> Verdict:
    """A retry after the last allowed attempt becomes a failure of the item."""
    if verdict.action == RETRY and attempt >= max_attempts:
        return replace(verdict, action=FAIL, retry_after=None)
    return verdict


def retries_invalid(invalid_before: int, retry_invalid: int, used: int, max_attempts: int) -> bool:
    """Whether an answer that failed its structured-output check is asked for again: while the
    item has had fewer than `retry_invalid` such answers before this one, and attempts are left
    (--max-attempts bounds every attempt). Else the answer stays the result, flagged: it was
    billed, as a length-cut one."""
    return invalid_before < retry_invalid and used < max_attempts


def backoff_delay(attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than what the server asked."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)
