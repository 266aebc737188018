"""Prometheus metrics (issue 18): /metrics scraped while a run goes on against the fake server,
its counters checked against the ledger once the run is over; the CLI's --metrics-port (and
its environment variable); the Grafana dashboard asks only for metrics the exporter has."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchrunner import metrics
from batchrunner.fake import FakeServer
from batchrunner.logs import worker_name
from batchrunner.runner.report import RunReport
from tests import test_run
from tests.conftest import chat_line, free_port, write_jsonl
from tests.test_crash import batchrunner

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana-batchrunner.json"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    """Every sample of /metrics, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def served() -> Iterator[metrics.Metrics]:
    exporter = metrics.serve("127.0.0.1", 0)
    try:
        yield exporter
    finally:
        metrics.stop_serving()


def mixed_lines(count: int) -> list[dict[str, Any]]:
    """Two models; some items retried after a 503, some failed by a 400; near the end, two
    429s (each pauses the run)."""
    lines = []
    for i in range(count):
        marker = {3: "[fake:503x1]", 7: "[fake:400]"}.get(i % 10, "")
        marker = "[fake:429x1]" if i in (count - 50, count - 10) else marker
        lines.append(chat_line(i, f"q{i} {marker}", model="gpt-4o" if i % 2 else "gpt-4o-mini"))
    return lines


def test_metrics_during_a_run_and_counters_that_match_the_ledger_after_it(
    tmp_path: Path, db_url: str, fake: FakeServer, served: metrics.Metrics
) -> None:
    fake.config.latency_ms = 40.0  # 200 items, 8 at a time: a run of a second or more
    fake.config.rpm_limit = 100_000  # its headers tell the run its limit: learned
    ledger, job = test_run.submit(tmp_path, db_url, fake, mixed_lines(200))
    reports: list[RunReport] = []
    running = threading.Thread(
        target=lambda: reports.append(test_run.run(ledger, job, concurrency=8, rpm=60_000))
    )
    running.start()
    during: list[Samples] = []
    deadline = time.monotonic() + 60
    while running.is_alive() and time.monotonic() < deadline:  # bounded in time
        during.append(scrape(served.port))
        time.sleep(0.05)
    running.join(timeout=60)
    assert reports and reports[0].state == "completed"
    labels = {"job_id": str(job), "worker": worker_name()}

    # While it ran: requests in flight, the limit in force, items being counted.
    assert any(total(s, "batchrunner_requests_in_flight", **labels) > 0 for s in during)
    in_force = [
        total(s, "batchrunner_rate_limit", limit="rpm", source="in_force", **labels) for s in during
    ]
    assert 60_000 in in_force  # --rpm, tighter than the server's
    learned = [
        total(s, "batchrunner_rate_limit", limit="rpm", source="learned", **labels) for s in during
    ]
    assert 100_000 in learned
    seen = [total(s, "batchrunner_items_total", **labels) for s in during]
    assert any(0 < n < 200 for n in seen) and seen == sorted(seen)  # counted as it went

    # After it: the counters are the ledger's.
    after = scrape(served.port)
    summary = ledger.summary(job)
    for state, count in summary.counts.items():
        assert total(after, "batchrunner_items_total", outcome=state, **labels) == count, state
    assert summary.failures_by_kind == {"invalid_request": 20}
    assert total(after, "batchrunner_items_total", error_kind="invalid_request") == 20
    for model, totals in summary.models.items():
        assert total(after, "batchrunner_items_total", model=model) == totals.items, model
    db = Path(db_url.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(db)) as conn:
        (attempts, inp, cached, out, reasoning, cost, timed, waited_ms) = conn.execute(
            "SELECT count(*), sum(input_tokens), coalesce(sum(cached_tokens), 0), "
            "sum(output_tokens), coalesce(sum(reasoning_tokens), 0), sum(cost_usd), "
            "count(latency_ms), sum(latency_ms) FROM attempts WHERE job_id = ?",
            (job,),
        ).fetchone()
        retried = conn.execute(
            "SELECT count(*) FROM attempts WHERE job_id = ? AND outcome = 'retry'", (job,)
        ).fetchone()[0]
    assert attempts == 222 and retried == 22  # the 503s and 429s answered once, then again
    assert total(after, "batchrunner_attempts_total", **labels) == attempts
    assert total(after, "batchrunner_attempts_total", outcome="retry") == retried
    assert total(after, "batchrunner_attempts_total", error_kind="server_error") == 20
    assert total(after, "batchrunner_attempts_total", error_kind="rate_limit") == 2
    assert 1 <= total(after, "batchrunner_rate_limit_pauses_total", **labels) <= 2
    for kind, expected in (("input", inp), ("cached", cached), ("output", out)):
        assert total(after, "batchrunner_tokens_total", kind=kind, **labels) == expected, kind
    assert total(after, "batchrunner_tokens_total", kind="reasoning") == reasoning
    assert total(after, "batchrunner_cost_usd_total", **labels) == pytest.approx(cost)
    assert total(after, "batchrunner_request_latency_seconds_count", **labels) == timed
    waited = total(after, "batchrunner_request_latency_seconds_sum")
    assert waited == pytest.approx(waited_ms / 1000, rel=1e-3)
    assert total(after, "batchrunner_ledger_write_seconds_count", **labels) >= 1
    assert total(after, "batchrunner_requests_in_flight", **labels) == 0
    assert not after.get("batchrunner_rate_limit")  # the run is over: no limits in force

    # Bounded labels: job, model, worker and the fixed kinds; never a custom_id.
    values = {v for samples in after.values() for found, _ in samples for v in found.values()}
    assert not any(value.startswith("item-") for value in values)
    assert {found["model"] for found, _ in after["batchrunner_items_total"]} == {
        "gpt-4o",
        "gpt-4o-mini",
    }


def test_the_cli_serves_metrics_on_the_port_of_its_environment_variable(
    tmp_path: Path, db_url: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.config.latency_ms = 50.0
    path = write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(80)])
    port = free_port()
    monkeypatch.setenv("BATCHRUNNER_METRICS_PORT", str(port))
    args = ["--db", db_url, "--base-url", fake.base_url, "--concurrency", "2"]
    child = batchrunner("submit", str(path), *args, stderr=tmp_path / "stderr")
    try:
        seen: Samples = {}
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            try:
                seen = scrape(port)
            except OSError:
                time.sleep(0.05)  # not serving yet
                continue
            if total(seen, "batchrunner_items_total") > 0:
                break
            time.sleep(0.05)
        assert child.wait(timeout=120) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert total(seen, "batchrunner_items_total", job_id="1", outcome="succeeded") > 0
    (worker,) = {found["worker"] for found, _ in seen["batchrunner_items_total"]}
    assert worker == f"{socket.gethostname()}:{child.pid}"
    assert f"metrics on http://127.0.0.1:{port}/metrics" in (tmp_path / "stderr").read_text()


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path: Path, db_url: str) -> None:
    from tests.test_cli import invoke

    path = write_jsonl(tmp_path / "j.jsonl", [chat_line(0)])
    assert invoke("submit", str(path), "--db", db_url, "--detach").exit_code == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("run", "--db", db_url, "--metrics-port", str(port))
    assert result.exit_code == 2
    assert f"--metrics-port {port}: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert nothing_ran(db_url)


def nothing_ran(db_url: str) -> bool:
    """The job was not run: its item is still pending."""
    db = Path(db_url.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT state FROM items").fetchall() == [("pending",)]


def exported_names() -> set[str]:
    """Every sample name the exporter can show (counters' _total, histograms' parts)."""
    names = set()
    for family in metrics.Metrics().registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return names


def test_the_grafana_dashboard_asks_only_for_metrics_the_exporter_has() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 8
    asked = {name for expr in exprs for name in re.findall(r"batchrunner_[a-z_]+", expr)}
    known = exported_names()
    assert asked <= known, asked - known
    # every metric the exporter has is on the dashboard, in one form or another
    bases = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in known}
    assert bases <= {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in asked}


def test_a_batch_runs_settled_lines_are_counted_as_the_ledger_has_them(
    tmp_path: Path, db_url: str, served: metrics.Metrics
) -> None:
    from tests.test_cli import invoke

    lines = [chat_line(i, model="gpt-4o" if i % 2 else "gpt-4o-mini") for i in range(20)]
    path = write_jsonl(tmp_path / "b.jsonl", [*lines, chat_line(20, "[fake:400]")])
    result = invoke(
        "submit", str(path), "--db", db_url, "--simulate", "--mode", "batch",
        "--poll-interval", "0.1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the 400 failed its item
    after = scrape(served.port)
    with closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
        inp, out, cost, attempts = conn.execute(
            "SELECT sum(input_tokens), sum(output_tokens), sum(cost_usd), count(*) FROM attempts"
        ).fetchone()
    assert states == {"succeeded": 20, "failed": 1}
    labels = {"job_id": "1", "worker": worker_name()}
    for state, count in states.items():
        assert total(after, "batchrunner_items_total", outcome=state, **labels) == count
    assert total(after, "batchrunner_items_total", model="gpt-4o", outcome="succeeded") == 10
    assert total(after, "batchrunner_attempts_total", **labels) == attempts == 21
    assert total(after, "batchrunner_tokens_total", kind="input", **labels) == inp
    assert total(after, "batchrunner_tokens_total", kind="output", **labels) == out
    assert total(after, "batchrunner_cost_usd_total", **labels) == pytest.approx(cost)
