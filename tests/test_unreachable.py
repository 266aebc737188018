"""An endpoint that is down stops the job, resumably, and fails nothing (issue 15): a circuit
breaker, not each item's attempts, decides; the run waits for the endpoint (bounded) and goes
on by itself when it answers again; `run` resumes what was left."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchrunner.fake import FakeServer, run_in_thread
from batchrunner.fake.server import FakeConfig
from tests.conftest import chat_line, free_port, write_jsonl
from tests.test_cache_aware import invoice_lines
from tests.test_cli import exported_records, invoke, status_json


@contextmanager
def server_later(
    port: int, after_s: float, config: FakeConfig | None = None
) -> Iterator[list[FakeServer]]:
    """The fake server on `port`, started `after_s` from now in a thread of its own."""
    started: list[FakeServer] = []
    done = threading.Event()

    def serve() -> None:
        time.sleep(after_s)
        with run_in_thread(config, port=port) as server:
            started.append(server)
            done.wait(timeout=60)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield started
    finally:
        done.set()
        thread.join(timeout=15)


def test_a_dead_endpoint_stops_the_job_resumably_and_run_finishes_it(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    db = f"sqlite:///{tmp_path}/ledger.db"
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(20)])
    started = time.monotonic()
    down = invoke("submit", str(job), "--db", db, "--base-url", base, "--unreachable-wait", "1")
    assert down.exit_code == 3, down.stderr
    assert time.monotonic() - started < 30
    assert f"stopped early (unreachable: no answer for 1s: cannot reach {base}" in down.stderr
    assert "resume with: batchrunner run 1" in down.stderr
    (status,) = status_json(db)["jobs"]
    assert status["counts"]["pending"] == 20 and status["counts"]["failed"] == 0
    assert status["attempts"] == 0  # nothing reached a server: no attempt, nothing spent

    with run_in_thread(port=port) as server:
        back = invoke("run", "--db", db, "--base-url", base)
    assert back.exit_code == 0, back.stderr
    records = exported_records(db)
    assert {r["status"] for r in records} == {"succeeded"} and len(records) == 20
    assert {r["attempts"] for r in records} == {1}  # each sent once, when it could be
    assert server.total_requests == 20


def test_a_run_waits_for_an_endpoint_that_comes_back_and_goes_on_by_itself(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    db = f"sqlite:///{tmp_path}/ledger.db"
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(30)])
    with server_later(port, after_s=1.5) as started:
        result = invoke(
            "submit", str(job), "--db", db, "--base-url", base, "--unreachable-wait", "30",
            "--concurrency", "8",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "waiting up to 30s for it" in result.stderr
    assert "the endpoint answers again: going on" in result.stderr
    records = exported_records(db)
    assert {r["status"] for r in records} == {"succeeded"} and len(records) == 30
    assert {r["attempts"] for r in records} == {1}
    assert started and started[0].total_requests == 30


def test_a_probe_refused_for_the_cache_key_it_carried_closes_the_circuit(tmp_path: Path) -> None:
    """Review finding: the probe sent while the endpoint was down carried a prompt_cache_key
    and came back refused for it (a server that does not take the parameter): that answer went
    back for the item's request without telling the circuit breaker, whose probe then stayed
    out for good; nothing more was sent and the job stopped as unreachable though the server
    answered."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    db = f"sqlite:///{tmp_path}/ledger.db"
    job = write_jsonl(tmp_path / "job.jsonl", invoice_lines(10))
    refusing = FakeConfig(refuse_params=("prompt_cache_key",))
    with server_later(port, after_s=1.5, config=refusing):
        result = invoke(
            "submit", str(job), "--db", db, "--base-url", base, "--unreachable-wait", "8",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "the endpoint answers again: going on" in result.stderr
    records = exported_records(db)
    assert {r["status"] for r in records} == {"succeeded"} and len(records) == 10
