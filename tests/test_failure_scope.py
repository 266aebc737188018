"""A failure fails only what it proves: a 404 for a model fails that model's items (on that
endpoint), a 404 for a path fails that endpoint's items, after one answer and without sending
the rest; every other item goes on. The fake server on 127.0.0.1, a real ledger on both
backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrunner.commands import exit_code
from batchrunner.fake import FakeServer
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import invoke, status_json
from tests.test_run import exported, run, submit

TYPO = "gpt-4o-mnii"


def mixed_models(count: int) -> list[dict[str, Any]]:
    """Every third line names a model the server does not have."""
    return [chat_line(i, model=TYPO if i % 3 == 1 else "gpt-4o-mini") for i in range(count)]


def of_model(records: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The records of `model`'s lines (mixed_models: every third, from the second)."""
    typo = {f"item-{i}" for i in range(1, len(records), 3)}
    return [r for r in records if (r["custom_id"] in typo) == (model == TYPO)]


def sends_of(fake: FakeServer, records: list[dict[str, Any]], model: str) -> int:
    return sum(fake.requests_by_id[r["custom_id"]] for r in of_model(records, model))


def test_a_missing_model_fails_its_items_after_one_answer_and_the_rest_go_on(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    fake.config.models = ("gpt-4o-mini",)
    ledger, job = submit(tmp_path, ledger_url, fake, mixed_models(30))
    report = run(ledger, job, concurrency=1)
    assert report.state == "completed"
    assert exit_code(ledger, report) == 1  # finished, with failures
    assert ledger.summary(job).counts == {"succeeded": 20, "failed": 10}
    records = exported(ledger, job)
    failed = [r for r in records if r["status"] == "failed"]
    assert failed == of_model(records, TYPO)
    assert {r["error"]["kind"] for r in failed} == {"model_not_found"}
    assert sends_of(fake, records, TYPO) == 1  # one proof; nine never sent
    proof, *unsent = sorted(failed, key=lambda r: r["attempts"], reverse=True)
    assert proof["attempts"] == 1 and f"`{TYPO}` does not exist" in proof["error"]["message"]
    assert {r["attempts"] for r in unsent} == {0}
    said = f"not sent: {proof['custom_id']} got 404: "
    assert all(r["error"]["message"].startswith(said) for r in unsent)


def test_with_many_workers_at_most_those_in_flight_are_sent_before_the_proof(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    fake.config.models = ("gpt-4o-mini",)
    fake.config.latency_ms = 20
    ledger, job = submit(tmp_path, ledger_url, fake, mixed_models(300))
    assert run(ledger, job, concurrency=8).state == "completed"
    records = exported(ledger, job)
    assert ledger.summary(job).counts == {"succeeded": 200, "failed": 100}
    assert 1 <= sends_of(fake, records, TYPO) <= 8
    assert sends_of(fake, records, "gpt-4o-mini") == 200


def test_an_endpoint_the_server_lacks_fails_its_items_only(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    """As llama.cpp's server without /v1/responses: a bare 404 to the path."""
    fake.config.endpoints = ("/v1/chat/completions",)
    lines = [chat_line(i) for i in range(10)] + [
        {
            "custom_id": f"resp-{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": f"question {i}"},
        }
        for i in range(10)
    ]
    ledger, job = submit(tmp_path, ledger_url, fake, lines, concurrency=2)
    assert run(ledger, job).state == "completed"
    records = exported(ledger, job)
    by_id = {r["custom_id"]: r for r in records}
    assert {by_id[f"item-{i}"]["status"] for i in range(10)} == {"succeeded"}
    assert {by_id[f"resp-{i}"]["status"] for i in range(10)} == {"failed"}
    assert {by_id[f"resp-{i}"]["error"]["kind"] for i in range(10)} == {"not_found"}
    assert sum(fake.requests_by_id[f"resp-{i}"] for i in range(10)) <= 2


def test_the_cli_says_what_failed_and_run_does_not_send_them_again(
    tmp_path: Path, fake: FakeServer
) -> None:
    fake.config.models = ("gpt-4o-mini",)
    db = f"sqlite:///{tmp_path}/ledger.db"
    job_file = write_jsonl(tmp_path / "job.jsonl", mixed_models(9))
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url}
    result = invoke("submit", str(job_file), "--db", db, "--hosted-prices", env=env)
    assert result.exit_code == 1, result.output
    assert f"model {TYPO} at /v1/chat/completions is missing here" in result.output
    counts = status_json(db)["jobs"][0]["counts"]
    assert {state: n for state, n in counts.items() if n} == {"succeeded": 6, "failed": 3}
    sent = fake.total_requests
    again = invoke("run", "--db", db, env=env)
    assert fake.total_requests == sent  # nothing left to send: failed items stay failed
    assert again.exit_code == 1, again.output


def test_status_says_what_failed_and_what_to_do_first(tmp_path: Path, fake: FakeServer) -> None:
    fake.config.models = ("gpt-4o-mini",)
    db = f"sqlite:///{tmp_path}/ledger.db"
    job_file = write_jsonl(tmp_path / "job.jsonl", mixed_models(6))
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url}
    assert invoke("submit", str(job_file), "--db", db, env=env).exit_code == 1
    status = status_json(db)["jobs"][0]
    assert status["next_step"] == (
        "serve the missing models (or fix their names in a new job: batchrunner export errors), "
        "then batchrunner run 1 --retry-failed (failed: model_not_found 2; add --kind KIND to "
        "retry only those)"
    )
    fake.config.models = None  # the model is served now (pulled, or added to the gateway)
    again = invoke("run", "--db", db, "--retry-failed", "--kind", "model_not_found", env=env)
    assert again.exit_code == 0, again.output
    assert status_json(db)["jobs"][0]["counts"]["succeeded"] == 6
