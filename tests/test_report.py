"""`report` (issue 18): one self-contained HTML file per job, its plots drawn by a real browser
and its figures those of `status --json`; the history behind it, on both ledger backends.

The browser is headless Chromium (Debian's `chromium`, which .ci/run installs): without it
these tests skip locally, and fail under CI."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from batchrunner.fake import FakeServer
from batchrunner.ledger import Ledger
from batchrunner.ledger.history import Timeline, _spread
from batchrunner.ledger.models import pauses_t
from tests import test_run
from tests.conftest import TEST_KEY, chat_line, in_ci, write_jsonl
from tests.test_cli import invoke, status_json

ESCAPE_ID = "odd-\x1b[2J-id"  # a custom_id holding an escape sequence
# Every plot a concurrent job's report draws, and what each must show for the job below.
PLOTS = (
    "finished",
    "throughput",
    "rate-limits",
    "paused",
    "errors-over-time",
    "latency",
    "tokens",
    "workers",
)


def mixed_job_lines() -> list[dict[str, Any]]:
    """Two models; items that fail (400), are retried after 503s and 429s, and succeed."""
    lines = [{**chat_line(99, "this one fails [fake:400]"), "custom_id": ESCAPE_ID}]
    for i in range(40):
        model = "gpt-4o" if i % 2 else "gpt-4o-mini"
        marker = {0: "[fake:503x2]", 1: "[fake:400]", 2: "[fake:429x1]"}.get(i % 8, "")
        lines.append(chat_line(i, f"question {i} {marker}", model=model))
    return lines


def finished_job(tmp_path: Path, db_url: str, fake: FakeServer) -> tuple[Ledger, int]:
    fake.config.latency_ms, fake.config.latency_jitter_ms = 5.0, 20.0
    fake.config.echo_auth = True  # the servers' error messages quote the key: masked everywhere
    ledger, job = test_run.submit(tmp_path, db_url, fake, mixed_job_lines())
    assert test_run.run(ledger, job, concurrency=4).state == "completed"
    return ledger, job


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    how = "install Debian's chromium (apt-get install -y chromium; .ci/run does)"
    if in_ci():
        pytest.fail(f"the report's browser tests cannot run, and CI requires them: {how}")
    pytest.skip(f"browser tests skipped: no headless Chromium here; {how}")


def headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


# Injected into a copy of the report before the browser opens it: measures, after layout, every
# plot's box and its marks (bars, points, lines) that have a size, and writes them down.
PROBE = """<pre id='probe'></pre><script>
const plots = {};
for (const svg of document.querySelectorAll('svg[data-plot]')) {
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('.mark')].filter(m => {
    const b = m.getBBox(); return b.width > 0 || b.height > 0; }).length;
  plots[svg.dataset.plot] = {width: box.width, height: box.height, drawn: drawn};
}
document.getElementById('probe').textContent = JSON.stringify(plots);
</script>"""


class Figures(HTMLParser):
    """The report's figures (data-figure), model rows and error rows, and the probe's text."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.models: dict[str, dict[str, str]] = {}
        self.kinds: dict[str, dict[str, str]] = {}
        self.batches: list[str] = []
        self.probe = ""
        self._row: dict[str, str] | None = None
        self._in_probe = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-figure" in a:
            self.figures[a["data-figure"]] = a["data-value"]
        if tag == "tr" and "data-model" in a:
            self._row = self.models.setdefault(a["data-model"], {})
        elif tag == "tr" and "data-kind" in a:
            self._row = self.kinds.setdefault(a["data-kind"], {})
        elif tag == "tr" and "data-batch" in a:
            self.batches.append(a["data-batch"])
        if "data-field" in a and self._row is not None:
            self._row[a["data-field"]] = a["data-value"]
        self._in_probe = tag == "pre" and a.get("id") == "probe"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        self._in_probe = False

    def handle_data(self, data: str) -> None:
        if self._in_probe:
            self.probe += data


def figures_of(html: str) -> Figures:
    parsed = Figures()
    parsed.feed(html)
    return parsed


def write_report(db_url: str, job: int, path: Path) -> str:
    result = invoke("report", str(job), "--db", db_url, "-o", str(path))
    assert result.exit_code == 0, result.output
    assert f"wrote the report of job {job} to {path}" in result.stderr
    return path.read_text()


def test_the_report_of_a_finished_job_draws_its_plots_in_a_browser_with_status_figures(
    tmp_path: Path, db_url: str, fake: FakeServer, chromium: str
) -> None:
    _, job = finished_job(tmp_path, db_url, fake)
    html = write_report(db_url, job, tmp_path / "report.html")
    (status,) = status_json(db_url, str(job))["jobs"]
    assert status["counts"]["failed"] == 6 and len(status["models"]) == 2  # failures, 2 models

    # Self-contained: nothing to fetch when opened; no key, no raw control character.
    for outside in ("src=", "href=", "<script", "<link", "@import", "url("):
        assert outside not in html
    assert TEST_KEY not in html and "\x1b" not in html
    assert "odd-\\x1b[2J-id" in html  # the escape shown, not obeyed

    # A real browser lays the page out: every plot has a size and marks drawn in it.
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = headless(chromium, tmp_path / "profile", "--dump-dom", probed.as_uri()).stdout
    shown = figures_of(dom)
    plots = json.loads(shown.probe)
    for plot in PLOTS:
        assert plots[plot]["width"] > 300 and plots[plot]["height"] > 50, (plot, plots[plot])
        assert plots[plot]["drawn"] > 0, (plot, plots)

    # The figures are status --json's, as the browser read them.
    for name in ("total", "attempts", "input_tokens", "cached_tokens", "output_tokens"):
        assert int(shown.figures[name]) == status[name], name
    for state, count in status["counts"].items():
        assert int(shown.figures.get(f"counts.{state}", 0)) == count, state
    assert float(shown.figures["cost_usd"]) == pytest.approx(status["cost_usd"])
    assert shown.figures["state"] == status["state"] == "completed"
    assert shown.figures["next_step"] == status["next_step"]
    assert set(shown.models) == set(status["models"])
    for model, totals in status["models"].items():
        row = shown.models[model]
        for field in ("items", "input_tokens", "output_tokens"):
            assert int(row[field]) == totals[field], (model, field)
        assert float(row["cost_usd"]) == pytest.approx(totals["cost_usd"])
    failed_by_kind = {kind: int(row["failed_items"]) for kind, row in shown.kinds.items()}
    assert {k: n for k, n in failed_by_kind.items() if n} == status["failures_by_kind"]
    assert int(shown.kinds["rate_limit"]["attempts"]) == 5  # [fake:429x1] on items 2, 10, ...
    assert int(shown.kinds["server_error"]["attempts"]) == 10  # [fake:503x2] on 5 items

    # And it renders to pixels: the screenshot the README shows is made the same way.
    png = tmp_path / "report.png"
    headless(
        chromium,
        tmp_path / "profile",
        "--window-size=1000,2400",
        f"--screenshot={png}",
        (tmp_path / "report.html").as_uri(),
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1000, 2400)
    assert len(data) > 20_000  # not a blank page


def test_the_history_sums_to_the_ledger_on_both_backends_across_runs(
    tmp_path: Path, ledger_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, ledger_url, fake, mixed_job_lines())
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    assert test_run.run(ledger, job, concurrency=1).state == "stopped"  # stopped by a bad key
    fake.config.force_status = fake.config.force_code = None
    assert test_run.run(ledger, job, concurrency=4).state == "completed"
    summary = ledger.summary(job)
    history = ledger.history(job, list(summary.models))

    timeline = history.timeline
    assert 1 <= timeline.buckets <= 60
    assert {state: sum(v) for state, v in history.finished.items()} == summary.counts
    attempts = sum(history.attempts)
    assert attempts == summary.attempts
    assert history.latency_overall.count == attempts  # every answer here was timed
    assert sum(p.count for p in history.latency) == attempts
    p = history.latency_overall
    assert p.p50 is not None and p.p90 is not None and p.p99 is not None
    assert 0 < p.p50 <= p.p90 <= p.p99
    assert history.run_count == 2 and len(history.runs) == 2
    assert sum(run.attempts for run in history.runs) == attempts
    kinds = {kind.kind: kind for kind in history.errors}
    assert kinds["auth"].attempts >= 1 and kinds["auth"].failed_items == 0
    assert kinds["invalid_request"].failed_items == summary.failures_by_kind["invalid_request"]
    assert all(len(kind.examples) <= 3 for kind in history.errors)
    assert sum(history.rate_limited) == kinds["rate_limit"].attempts == 5
    # Each 429 held every request back: the run kept those pauses, the report sums them.
    paused = sum(history.paused_s)
    assert paused > 0 and paused <= history.timeline.bucket_s * history.timeline.buckets
    with ledger.engine.connect() as conn:
        windows = conn.execute(select(pauses_t.c.started_at, pauses_t.c.until_at)).all()
    assert windows and all(start < until for start, until in windows)
    held = sum((until - start).total_seconds() for start, until in windows)
    assert paused <= held + 0.0005 * history.timeline.buckets  # each slice rounded to 1 ms
    # Where the database has no logarithm, the attempts are paged through instead: the same.
    paged = ledger.history(job, list(summary.models), bins_in_sql=False)
    assert (paged.latency, paged.latency_overall) == (history.latency, history.latency_overall)


def test_a_stopped_job_reports_why_and_what_to_do_next_as_status_does(
    tmp_path: Path, db_url: str, fake: FakeServer
) -> None:
    ledger, job = test_run.submit(tmp_path, db_url, fake, [chat_line(i) for i in range(10)])
    fake.config.force_status, fake.config.force_code = 401, "invalid_api_key"
    assert test_run.run(ledger, job).state == "stopped"
    shown = figures_of(write_report(db_url, job, tmp_path / "stopped.html"))
    (status,) = status_json(db_url, str(job))["jobs"]
    assert shown.figures["state"] == "stopped"
    assert shown.figures["next_step"] == status["next_step"]
    assert shown.figures["next_step"] == f"set a valid OPENAI_API_KEY, then batchrunner run {job}"
    assert shown.figures["stop_story"].startswith("auth: Incorrect API key provided")


def test_a_batch_jobs_report_shows_its_batches(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(i) for i in range(30)] + [chat_line(30, "[fake:400]")]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    submitted = invoke(
        "submit", str(path), "--db", db_url, "--simulate", "--mode", "batch",
        "--batch-max-requests", "16", "--poll-interval", "0.1",
    )  # fmt: skip
    assert submitted.exit_code == 1, submitted.output  # one item failed
    html = write_report(db_url, 1, tmp_path / "batch.html")
    shown = figures_of(html)
    (status,) = status_json(db_url, "1")["jobs"]
    assert len(shown.batches) == len(status["batches"]) == 2
    assert "data-plot='batches'" in html
    assert int(shown.figures["counts.succeeded"]) == status["counts"]["succeeded"] == 30


def test_report_of_no_such_job_is_a_usage_error(tmp_path: Path, db_url: str) -> None:
    path = write_jsonl(tmp_path / "j.jsonl", [chat_line(0)])
    assert invoke("submit", str(path), "--db", db_url, "--detach").exit_code == 0
    result = invoke("report", "7", "--db", db_url, "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 2 and "no job '7'" in result.stderr
    assert not (tmp_path / "r.html").exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("bucket_s", [0.05, 0.1, 0.2, 1.0])
def test_a_pause_is_spread_over_every_slice_it_covers(bucket_s: float) -> None:
    """Review finding: with slices of 0.05, 0.1 or 0.2 s (short jobs) the slice's end in
    floats, divided again, gave the same slice (43 * 0.1 / 0.1 < 43), and the rest of the
    window was dropped (a 1 s pause from 4 s shown as 0.3 s)."""
    start = datetime(2026, 12, 1, 12, 0, 0)
    timeline = Timeline(start, bucket_s, 60)
    span = bucket_s * 60
    per_bucket = [0.0] * 60
    window = (start + timedelta(seconds=span * 0.1), start + timedelta(seconds=span * 0.9))
    _spread(window, timeline, per_bucket)
    assert sum(per_bucket) == pytest.approx(span * 0.8)
    past_the_end = [0.0] * 60  # clipped at the timeline's end, the last slice full
    _spread(
        (start + timedelta(seconds=span / 2), start + timedelta(seconds=span * 2)),
        timeline,
        past_the_end,
    )
    assert sum(past_the_end) == pytest.approx(span / 2)
    assert past_the_end[-1] == pytest.approx(bucket_s)
