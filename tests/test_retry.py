"""The verdict table: each kind of answer gets its own treatment."""

from __future__ import annotations

import random

import orjson
import pytest

from batchrunner.dialects.openai import judge_reply
from batchrunner.failures import (
    BACKOFF_CAP_S,
    FAIL,
    RETRY,
    STOP,
    SUCCEED,
    ErrorKind,
    Verdict,
    backoff_delay,
    final_verdict,
)


def error_body(code: str | None, kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": f"msg {code}", "type": kind, "code": code}})


@pytest.mark.parametrize(
    ("status", "body", "action", "kind"),
    [
        (200, b'{"choices": []}', SUCCEED, None),
        (200, b"<html>oops", RETRY, "bad_response"),
        (200, b"[1]", RETRY, "bad_response"),
        (429, error_body("rate_limit_exceeded", "requests"), RETRY, "rate_limit"),
        (429, error_body("insufficient_quota", "insufficient_quota"), STOP, "quota"),
        (401, error_body("invalid_api_key"), STOP, "auth"),
        (403, error_body(None), STOP, "permission"),
        (404, error_body("model_not_found"), FAIL, "model_not_found"),
        (
            404,
            b'{"error": "model \'llama9\' not found, try pulling it first"}',
            FAIL,
            "model_not_found",
        ),
        (404, b'{"detail": "The model `x` does not exist."}', FAIL, "model_not_found"),
        (404, b"File Not Found", FAIL, "not_found"),
        (404, error_body("DeploymentNotFound"), FAIL, "model_not_found"),  # Azure
        (404, error_body(None), FAIL, "not_found"),
        (400, error_body("context_length_exceeded"), FAIL, "invalid_request"),
        (422, error_body(None), FAIL, "invalid_request"),
        (408, b"", RETRY, "timeout"),
        (409, error_body(None), RETRY, "server_error"),
        (500, error_body(None, "server_error"), RETRY, "server_error"),
        (502, b"<html>Bad Gateway</html>", RETRY, "server_error"),
        (503, b"", RETRY, "server_error"),
    ],
)
def test_verdict_table(status: int, body: bytes, action: str, kind: str | None) -> None:
    verdict = judge_reply(status, body, retry_after=None)
    assert (verdict.action, verdict.kind) == (action, kind)


def test_the_api_message_and_code_are_kept() -> None:
    verdict = judge_reply(400, error_body("context_length_exceeded"), None)
    assert verdict.code == "context_length_exceeded"
    assert verdict.message == "msg context_length_exceeded"


def test_a_retry_on_the_last_attempt_fails_the_item() -> None:
    verdict = Verdict.failure(ErrorKind.TIMEOUT, None, "no answer")
    assert final_verdict(verdict, attempt=4, max_attempts=5).action == RETRY
    last = final_verdict(verdict, attempt=5, max_attempts=5)
    assert (last.action, last.kind, last.message) == (FAIL, "timeout", "no answer")
    fatal = judge_reply(400, error_body(None), None)
    assert final_verdict(fatal, attempt=1, max_attempts=5).action == FAIL


def test_backoff_grows_with_full_jitter_and_honours_the_server() -> None:
    rng = random.Random(1)
    first = [backoff_delay(1, rng) for _ in range(200)]
    late = [backoff_delay(12, rng) for _ in range(200)]
    assert max(first) <= 0.5 and min(first) >= 0
    assert max(late) <= BACKOFF_CAP_S and max(late) > 30  # capped, yet spread out
    assert min(backoff_delay(1, rng, retry_after=7.0) for _ in range(50)) == 7.0


@pytest.mark.parametrize(
    ("body", "action", "kind"),
    [
        (  # LiteLLM's proxy, asked for a model it does not serve
            b'{"error": {"message": "/chat/completions: Invalid model name passed in '
            b'model=gpt-9. Call `/v1/models` to view available models for your key.", '
            b'"type": "invalid_request_error", "param": null, "code": "400"}}',
            FAIL,
            "model_not_found",
        ),
        (  # LiteLLM's proxy without a database, given a key that is not its master key
            b'{"error": {"message": "No connected db.", "type": "no_db_connection", '
            b'"param": null, "code": "400"}}',
            STOP,
            "auth",
        ),
        (error_body("invalid_value"), FAIL, "invalid_request"),  # any other 400 stays one
    ],
)
def test_other_servers_words_for_the_same_refusals(body: bytes, action: str, kind: str) -> None:
    verdict = judge_reply(400, body, retry_after=None)
    assert (verdict.action, verdict.kind) == (action, kind)
