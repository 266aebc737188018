"""The rule table, read as a table: every kind of failure, what it means in each mode."""

from __future__ import annotations

import pytest

from batchrunner.failures import FAIL, RETRY, RULES, STOP, SUCCEED, ErrorKind, Verdict, action_of
from batchrunner.ledger.models import FAILED, PENDING, SUCCEEDED
from batchrunner.runner.outcomes import BATCH_EFFECTS, CONCURRENT_EFFECTS

# kind: (concurrent action, item state after it in concurrent mode, in batch mode,
#        pauses every worker, possibly billed, an attempt)
TABLE = {
    ErrorKind.RATE_LIMIT: (RETRY, None, PENDING, True, False, True),
    ErrorKind.QUOTA: (STOP, PENDING, FAILED, False, False, True),
    ErrorKind.AUTH: (STOP, PENDING, FAILED, False, False, True),
    ErrorKind.PERMISSION: (STOP, PENDING, FAILED, False, False, True),
    ErrorKind.MODEL_NOT_FOUND: (FAIL, FAILED, FAILED, False, False, True),
    ErrorKind.NOT_FOUND: (FAIL, FAILED, FAILED, False, False, True),
    ErrorKind.INVALID_REQUEST: (FAIL, FAILED, FAILED, False, False, True),
    ErrorKind.TIMEOUT: (RETRY, None, PENDING, False, True, True),
    ErrorKind.UNREACHABLE: (RETRY, None, PENDING, False, False, False),
    ErrorKind.CONNECTION: (RETRY, None, PENDING, False, False, True),
    ErrorKind.SERVER_ERROR: (RETRY, None, PENDING, False, False, True),
    ErrorKind.BAD_RESPONSE: (RETRY, None, PENDING, False, False, True),
    ErrorKind.NOT_RUN: (RETRY, None, PENDING, False, False, False),
    ErrorKind.BATCH_VALIDATION: (FAIL, FAILED, FAILED, False, False, True),
    ErrorKind.TOKEN_LIMIT: (RETRY, None, PENDING, False, False, True),
}


def test_every_kind_has_a_rule_and_a_row_here() -> None:
    assert set(RULES) == set(ErrorKind) == set(TABLE)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_what_each_kind_means_in_each_mode(kind: ErrorKind) -> None:
    action, concurrent, batch, pauses, billed, attempt = TABLE[kind]
    rule = RULES[kind]
    assert action_of(kind) == action
    assert CONCURRENT_EFFECTS[action].state == concurrent
    # a batch line never stops a job: a stop-the-job kind fails just that line's item
    assert BATCH_EFFECTS[action].state == batch
    if action == STOP:
        assert (CONCURRENT_EFFECTS[action].attempt, BATCH_EFFECTS[action].attempt) == (
            "stopped",
            "failed",
        )
    assert (rule.pauses_all, rule.possibly_billed, rule.is_attempt) == (pauses, billed, attempt)
    assert not (rule.retry and rule.stops_job)


def test_a_success_succeeds_in_both_modes_and_says_so_in_its_attempt() -> None:
    verdict = Verdict(SUCCEED, body={"choices": []})
    assert (verdict.kind, verdict.rule) == (None, None)
    assert CONCURRENT_EFFECTS[verdict.action] == BATCH_EFFECTS[verdict.action]
    assert CONCURRENT_EFFECTS[verdict.action] == (SUCCEEDED, "succeeded")


def test_a_rate_limit_without_a_time_pauses_for_the_rules_minimum() -> None:
    assert RULES[ErrorKind.RATE_LIMIT].min_wait_s == 1.0
    assert all(rule.min_wait_s == 0 for kind, rule in RULES.items() if kind != "rate_limit")


def test_kinds_are_stored_as_their_plain_names() -> None:
    """What the ledger holds in error_kind, and what status groups failures by."""
    assert [str(kind) for kind in ErrorKind] == [kind.value for kind in ErrorKind]
    assert str(ErrorKind.NOT_RUN) == "batch" and str(ErrorKind.TIMEOUT) == "timeout"
