"""`report`: one self-contained HTML file about a job, to look at after (or during) its life.

The summary at the top is `status`'s (status.py, stops.py: what ran, what it cost, why it
stopped, what to do next); below it, plots over the job's life and tables, all from the ledger
alone (`Ledger.history`, ledger/history.py, which aggregates as it reads). The plots are inline
SVG written here: no script, no style sheet or font from elsewhere, nothing fetched when the
file is opened, so it can be mailed, archived or opened offline years later.

Every text that came from elsewhere (names, custom_ids, servers' error messages) is masked
(`redact.mask`), its control characters shown as escapes (`terminal.printable`) and
HTML-escaped. Each summary figure carries its raw value (`data-figure`, `data-value`), so a
program (the tests) can read the report's figures back and compare them with `status --json`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, Any

from batchrunner.ledger import Ledger
from batchrunner.ledger.batches import BATCH_STATES
from batchrunner.ledger.history import JobHistory, Percentiles, Timeline
from batchrunner.ledger.models import ITEM_STATES
from batchrunner.ledger.records import RunRow, utcnow
from batchrunner.redact import mask
from batchrunner.status import FLAG_WORDS, job_status
from batchrunner.stops import stopped_story
from batchrunner.terminal import printable
from batchrunner.usage import format_usd

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 30
STATE_COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#757575",
    "pending": "#f9a825",
    "running": "#1565c0",
}
PALETTE = ("#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f", "#4e342e")
MESSAGE_CHARS = 300  # of an error example's message


def write_report(ledger: Ledger, job_id: int, out: IO[bytes]) -> None:
    """The report of one job, as HTML, to `out`."""
    out.write(report_html(ledger, job_id).encode())


def report_html(ledger: Ledger, job_id: int) -> str:
    summary = ledger.summary(job_id)
    workers = ledger.runs_of(job_id) if summary.live_run else []  # live runs only, as status
    status = job_status(summary, workers=workers, batches=ledger.batches_of(job_id, BATCH_STATES))
    return render(status, ledger.history(job_id, list(summary.models)), utcnow())


def render(status: dict[str, Any], history: JobHistory, now: datetime) -> str:
    """The page: the job's summary, then each section that has something to show."""
    title = f"batchrunner job {status['id']}: {status['name']}"
    sections = [
        _summary(status),
        _over_time(history),
        _latency(history),
        _models(status),
        _errors(history, status),
        _batches(history, now),
        _workers(history),
    ]
    body = "\n".join(section for section in sections if section)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_text(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f"<h1>{_text(title)}</h1>\n{body}\n"
        f"<footer>Written by batchrunner at {_iso(now)} from the ledger alone; times are UTC. "
        "Latency percentiles are read from a histogram (within about 6%).</footer>\n"
        "</body></html>\n"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;
max-width:1000px;color:#212121;padding:0 16px}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;text-align:left;
border-bottom:1px solid #eee;vertical-align:top}td.n,th.n{text-align:right;
font-variant-numeric:tabular-nums}
.story{padding:8px 12px;background:#fff8e1;border-left:4px solid #f9a825;margin:8px 0}
.next{padding:8px 12px;background:#e3f2fd;border-left:4px solid #1565c0;margin:8px 0}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:11px;
height:11px;margin-right:4px;vertical-align:-1px}
svg{display:block;margin:4px 0}svg text{font-size:11px;fill:#555}
code{font-size:12px;background:#f5f5f5;padding:0 3px}.msg{max-width:520px;word-break:break-word}
footer{margin-top:32px;color:#777;font-size:12px}
"""


# -- the summary ---------------------------------------------------------------------------------


def _summary(status: dict[str, Any]) -> str:
    """What ran, what it came to and cost, why it stopped, and what to do next: `status`."""
    counts = status["counts"]
    rows = [
        ("state", _figure("state", status["state"])),
        ("mode", _text(status["mode"]) + (" (simulated)" if status["simulated"] else "")),
        ("source", f"<code>{_text(status['source_file'])}</code>"),
        ("items", _figure("total", status["total"])),
        (
            "where they stand",
            ", ".join(
                f"{state} {_figure(f'counts.{state}', counts[state])}"
                for state in ITEM_STATES
                if counts[state]
            )
            or "none",
        ),
        ("requests sent", _figure("attempts", status["attempts"])),
        (
            "tokens",
            f"{_figure('input_tokens', status['input_tokens'])} in "
            f"({_figure('cached_tokens', status['cached_tokens'])} cached), "
            f"{_figure('output_tokens', status['output_tokens'])} out "
            f"({_figure('reasoning_tokens', status['reasoning_tokens'])} reasoning)",
        ),
        ("cost", _cost(status)),
        ("created / finished", f"{status['created_at']} / {status['finished_at'] or '-'}"),
    ]
    flagged = [
        f"{_figure(f'flagged.{reason}', n)} {words}"
        for reason, words in FLAG_WORDS.items()
        if (n := status["flagged"].get(reason))
    ]
    if flagged:
        rows.append(("flagged answers", ", ".join(flagged)))
    if status["reused"]:
        rows.append(("reused answers", _figure("reused", status["reused"])))
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    parts = [f"<section id='summary'><h2>Summary</h2><table>{table}</table>"]
    story = stopped_story(status)
    if story:
        parts.append(f"<div class='story'>Stopped: {_figure('stop_story', story)}</div>")
    if status["next_step"]:
        parts.append(f"<div class='next'>Next: {_figure('next_step', status['next_step'])}</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _cost(status: dict[str, Any]) -> str:
    cost = status["cost_usd"]
    text = f"<span data-figure='cost_usd' data-value='{cost}'>{format_usd(cost)}</span>"
    if status["estimate_usd"] is not None:
        text += f" (estimated {format_usd(status['estimate_usd'])})"
    if status["budget_usd"] is not None:
        text += f", budget {format_usd(status['budget_usd'])}"
    if status["unpriced_models"]:
        text += f"; no price for {_text(', '.join(status['unpriced_models']))}"
    return text


def _figure(name: str, value: Any) -> str:
    """A summary figure, shown formatted, with its raw value beside for programs."""
    shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return (
        f"<span data-figure='{_text(name)}' data-value='{_text(str(value))}'>{_text(shown)}</span>"
    )


# -- over time -----------------------------------------------------------------------------------


def _over_time(history: JobHistory) -> str:
    timeline = history.timeline
    per_s = timeline.bucket_s
    finished = {
        state: history.finished[state] for state in ITEM_STATES if state in history.finished
    }
    done = [sum(values) for values in zip(*finished.values(), strict=True)] or [0] * len(
        history.attempts
    )
    throughput = {
        "items finished/s": [n / per_s for n in done],
        "requests answered/s": [n / per_s for n in history.attempts],
    }
    return "\n".join(
        [
            "<section id='over-time'><h2>Over the job's life</h2>",
            f"<p>{timeline.buckets} slices of {_seconds(per_s)} from {_iso(timeline.start)}.</p>",
            "<h3>Items finished, by state</h3>",
            _bars("finished", timeline, finished, "items", STATE_COLOURS),
            "<h3>Throughput</h3>",
            _lines("throughput", timeline, throughput, "per second"),
            "<h3>Rate-limit answers (429)</h3>",
            _bars(
                "rate-limits",
                timeline,
                {"rate_limit answers": history.rate_limited},
                "answers",
                {"rate_limit answers": "#ef6c00"},
            ),
            "<h3>Paused for rate limits</h3>",
            _bars(
                "paused",
                timeline,
                {"seconds every request was held back": history.paused_s},
                "seconds",
                {"seconds every request was held back": "#8d6e63"},
            ),
            "<h3>Error answers, by kind</h3>",
            _bars("errors-over-time", timeline, history.errors_over_time, "answers"),
            "</section>",
        ]
    )


def _latency(history: JobHistory) -> str:
    overall = history.latency_overall
    series = {
        f"p{p}": [getattr(bucket, f"p{p}") for bucket in history.latency] for p in (50, 90, 99)
    }
    return "\n".join(
        [
            "<section id='latency'><h2>Request latency</h2>",
            _percentile_table(overall),
            _lines("latency", history.timeline, series, "ms"),
            "</section>",
        ]
    )


def _percentile_table(overall: Percentiles) -> str:
    cells = "".join(
        f"<td class='n' data-figure='latency.{name}' data-value='{value}'>{_ms(value)}</td>"
        for name, value in (("p50", overall.p50), ("p90", overall.p90), ("p99", overall.p99))
    )
    return (
        "<table><tr><th>answers timed</th><th class='n'>p50</th><th class='n'>p90</th>"
        f"<th class='n'>p99</th></tr><tr><td class='n'>{overall.count:,}</td>{cells}</tr></table>"
    )


# -- models, errors, batches, workers ------------------------------------------------------------


def _models(status: dict[str, Any]) -> str:
    """Tokens and cost by model: `status`'s own figures (the summary sums them once)."""
    rows = []
    stacks: dict[str, dict[str, float]] = {}
    for name, usage in status["models"].items():
        share = usage["cached_share"] or 0.0
        model = _text(name)
        cost = format_usd(usage["cost_usd"])
        rows.append(
            f"<tr data-model='{model}'><td>{model}</td>"
            + "".join(
                f"<td class='n' data-field='{field}' data-value='{usage[field]}'>"
                f"{usage[field]:,}</td>"
                for field in ("items", "input_tokens", "cached_tokens")
            )
            + f"<td class='n' data-field='cached_share' data-value='{share:.4f}'>{share:.1%}</td>"
            + "".join(
                f"<td class='n' data-field='{field}' data-value='{usage[field]}'>"
                f"{usage[field]:,}</td>"
                for field in ("output_tokens", "reasoning_tokens")
            )
            + f"<td class='n' data-field='cost_usd' data-value='{usage['cost_usd']}'>{cost}</td>"
            "</tr>"
        )
        stacks[name] = {
            "input, not cached": usage["input_tokens"] - usage["cached_tokens"],
            "input, cached": usage["cached_tokens"],
            "output": usage["output_tokens"],
        }
    head = (
        "<tr><th>model</th><th class='n'>items</th><th class='n'>input tokens</th>"
        "<th class='n'>cached</th><th class='n'>cached share</th><th class='n'>output tokens</th>"
        "<th class='n'>reasoning</th><th class='n'>cost</th></tr>"
    )
    return "\n".join(
        [
            "<section id='models'><h2>Tokens and cost by model</h2>",
            f"<table>{head}{''.join(rows)}</table>",
            _hbars("tokens", stacks, "tokens"),
            "</section>",
        ]
    )


def _errors(history: JobHistory, status: dict[str, Any]) -> str:
    if not history.errors:
        return "<section id='errors'><h2>Errors</h2><p>No error answers.</p></section>"
    rows = []
    for kind in history.errors:
        examples = "".join(
            f"<li><code>{_text(e.custom_id)}</code> {e.http_status or ''} "
            f"{_text(e.error_code or '')}: <span class='msg'>"
            f"{_text(_cut(e.error_message or ''))}</span></li>"
            for e in kind.examples
        )
        name = _text(kind.kind)
        rows.append(
            f"<tr data-kind='{name}'><td>{name}</td>"
            f"<td class='n' data-field='failed_items' data-value='{kind.failed_items}'>"
            f"{kind.failed_items:,}</td>"
            f"<td class='n' data-field='attempts' data-value='{kind.attempts}'>"
            f"{kind.attempts:,}</td><td><ul>{examples}</ul></td></tr>"
        )
    head = (
        "<tr><th>kind</th><th class='n'>failed items</th><th class='n'>error answers</th>"
        "<th>examples (keys masked)</th></tr>"
    )
    return (
        "<section id='errors'><h2>Errors by kind</h2>"
        "<p>Failed items are where they ended; error answers count every answer that carried "
        "the error, retried ones included.</p>"
        f"<table>{head}{''.join(rows)}</table></section>"
    )


def _batches(history: JobHistory, now: datetime) -> str:
    if not history.batches:
        return ""
    rows = "".join(
        f"<tr data-batch='{b.id}'><td>{b.id}</td><td><code>{_text(b.remote_id or '-')}</code></td>"
        f"<td>{_text(b.state)}</td><td>{_text(b.remote_status or '-')}</td>"
        f"<td>{_text(b.model)}</td><td class='n'>{b.request_count:,}</td>"
        f"<td class='n'>{b.completed:,}</td><td class='n'>{b.failed:,}</td>"
        f"<td>{_iso(b.created_at)}</td><td>{_iso(b.finished_at) if b.finished_at else '-'}</td>"
        "</tr>"
        for b in history.batches
    )
    head = (
        "<tr><th>batch</th><th>remote id</th><th>state</th><th>API status</th><th>model</th>"
        "<th class='n'>requests</th><th class='n'>completed</th><th class='n'>failed</th>"
        "<th>created</th><th>ended</th></tr>"
    )
    spans = [
        (
            f"batch {b.id} ({b.remote_status or b.state})",
            b.created_at,
            b.finished_at or now,
            b.remote_status or b.state,
        )
        for b in history.batches
    ]
    return (
        "<section id='batches'><h2>Batches</h2>"
        f"{_gantt('batches', history.timeline, spans)}<table>{head}{rows}</table></section>"
    )


def _workers(history: JobHistory) -> str:
    if not history.runs:
        return ""
    rows = "".join(
        f"<tr data-run='{_text(a.run.id)}'><td>{_text(a.run.hostname)}:{a.run.pid}</td>"
        f"<td><code>{_text(a.run.id)}</code></td><td>{_iso(a.run.started_at)}</td>"
        f"<td>{_run_end(a.run)}</td>"
        f"<td class='n' data-field='attempts' data-value='{a.attempts}'>{a.attempts:,}</td>"
        f"<td class='n'>{a.succeeded:,}</td><td class='n'>{a.errors:,}</td></tr>"
        for a in history.runs
    )
    head = (
        "<tr><th>worker</th><th>run</th><th>started</th><th>ended</th>"
        "<th class='n'>requests</th><th class='n'>succeeded</th><th class='n'>errors</th></tr>"
    )
    more = len(history.runs) < history.run_count
    note = f"<p>The busiest {len(history.runs)} of {history.run_count} runs.</p>" if more else ""
    bars: dict[str, dict[str, float]] = {
        f"{a.run.hostname}:{a.run.pid} ({a.run.id[:8]})": {
            "succeeded": a.succeeded,
            "other answers": a.attempts - a.succeeded,
        }
        for a in history.runs
    }
    colours = {"succeeded": STATE_COLOURS["succeeded"], "other answers": "#ef6c00"}
    return (
        f"<section id='workers'><h2>Runs and workers</h2>{note}"
        f"{_hbars('workers', bars, 'requests', colours)}"
        f"<table>{head}{rows}</table></section>"
    )


def _run_end(run: RunRow) -> str:
    if run.ended_at is not None:
        return _iso(run.ended_at)
    return f"open, last heartbeat {_iso(run.heartbeat_at)}"


# -- SVG -----------------------------------------------------------------------------------------


def _bars(
    plot: str,
    timeline: Timeline,
    series: Mapping[str, Sequence[float]],
    unit: str,
    colours: dict[str, str] | None = None,
) -> str:
    """Stacked bars per time bucket; one rect per non-empty piece, with a tooltip."""
    colours = _colours(series, colours)
    totals = [sum(values) for values in zip(*series.values(), strict=True)] if series else []
    top = _nice(max(totals, default=0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / timeline.buckets
    marks = []
    for index in range(timeline.buckets):
        base = 0.0
        for name, values in series.items():
            value = values[index]
            if not value:
                continue
            height = value / top * inner_h
            y = TOP + inner_h - (base + height)
            marks.append(
                f"<rect class='mark' x='{LEFT + index * slot + 0.5:.1f}' y='{y:.1f}' "
                f"width='{max(slot - 1, 0.5):.1f}' height='{max(height, 0.5):.1f}' "
                f"fill='{colours[name]}'><title>{_text(name)}: {_amount(value)} {unit} at "
                f"{_iso(timeline.at(index))}</title></rect>"
            )
            base += height
    empty = "" if marks else _note("none in this job")
    return _svg(plot, timeline, top, unit, "".join(marks) + empty) + _legend(colours)


def _amount(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _lines(plot: str, timeline: Timeline, series: dict[str, list[float | None]], unit: str) -> str:
    """One line per series over the buckets; a bucket with no value breaks its line."""
    colours = _colours(series, None)
    top = _nice(max((v for values in series.values() for v in values if v), default=0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / timeline.buckets
    marks = []
    for name, values in series.items():
        path, pen_down = [], False
        for index, value in enumerate(values):
            if value is None:
                pen_down = False
                continue
            x = LEFT + (index + 0.5) * slot
            y = TOP + inner_h - value / top * inner_h
            path.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
            pen_down = True
            marks.append(
                f"<circle class='mark' cx='{x:.1f}' cy='{y:.1f}' r='2' fill='{colours[name]}'>"
                f"<title>{_text(name)}: {value:,.2f} {unit} at {_iso(timeline.at(index))}"
                "</title></circle>"
            )
        if path:
            marks.insert(
                0,
                f"<path class='mark line' d='{' '.join(path)}' fill='none' "
                f"stroke='{colours[name]}' stroke-width='1.6'/>",
            )
    empty = "" if marks else _note("nothing timed in this job")
    return _svg(plot, timeline, top, unit, "".join(marks) + empty) + _legend(colours)


def _hbars(
    plot: str,
    stacks: dict[str, dict[str, float]],
    unit: str,
    colours: dict[str, str] | None = None,
) -> str:
    """Horizontal stacked bars, one per row of `stacks`."""
    names = sorted(
        {part for parts in stacks.values() for part in parts},
        key=list(dict.fromkeys(part for parts in stacks.values() for part in parts)).index,
    )
    colours = _colours(dict.fromkeys(names), colours)
    top = _nice(max((sum(parts.values()) for parts in stacks.values()), default=0))
    label_w, bar_h = 230, 20
    height = TOP + len(stacks) * (bar_h + 8) + BOTTOM
    inner_w = WIDTH - label_w - RIGHT
    marks = []
    for row, (label, parts) in enumerate(stacks.items()):
        y = TOP + row * (bar_h + 8)
        marks.append(
            f"<text x='{label_w - 6}' y='{y + bar_h * 0.7:.1f}' text-anchor='end'>"
            f"{_text(_cut(label, 36))}</text>"
        )
        x = float(label_w)
        for part, value in parts.items():
            if value <= 0:
                continue
            width = value / top * inner_w
            marks.append(
                f"<rect class='mark' x='{x:.1f}' y='{y}' width='{max(width, 0.5):.1f}' "
                f"height='{bar_h}' fill='{colours[part]}'><title>{_text(label)}, {_text(part)}: "
                f"{value:,.0f} {unit}</title></rect>"
            )
            x += width
    axis_y = height - BOTTOM + 4
    ticks = "".join(
        f"<text x='{label_w + inner_w * i / 4:.1f}' y='{axis_y + 12}' text-anchor='middle'>"
        f"{_short(top * i / 4)}</text>"
        for i in range(5)
    )
    return (
        f"<svg data-plot='{plot}' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
        f"height='{height}' viewBox='0 0 {WIDTH} {height}' role='img'>"
        f"<line x1='{label_w}' y1='{axis_y}' x2='{WIDTH - RIGHT}' y2='{axis_y}' stroke='#999'/>"
        f"{ticks}{''.join(marks)}</svg>" + _legend(colours)
    )


def _gantt(
    plot: str, timeline: Timeline, spans: Sequence[tuple[str, datetime, datetime, str]]
) -> str:
    """Each batch as a bar from its creation to its end, coloured by where it ended."""
    inner_w = WIDTH - LEFT - RIGHT
    span_s = timeline.buckets * timeline.bucket_s
    row_h = max(3.0, min(14.0, 300 / max(1, len(spans))))
    height = TOP + len(spans) * row_h + BOTTOM
    statuses = list(dict.fromkeys(status for *_, status in spans))
    colours = {
        status: {"completed": "#2e7d32", "failed": "#c62828", "expired": "#757575"}.get(
            status, PALETTE[i % len(PALETTE)]
        )
        for i, status in enumerate(statuses)
    }
    marks = []
    for row, (label, began, ended, status) in enumerate(spans):
        x0 = LEFT + max(0.0, (began - timeline.start).total_seconds()) / span_s * inner_w
        x1 = LEFT + min(span_s, (ended - timeline.start).total_seconds()) / span_s * inner_w
        marks.append(
            f"<rect class='mark' x='{x0:.1f}' y='{TOP + row * row_h:.1f}' "
            f"width='{max(x1 - x0, 1.0):.1f}' height='{max(row_h - 1, 1):.1f}' "
            f"fill='{colours[status]}'><title>{_text(label)}: {_iso(began)} to {_iso(ended)}"
            "</title></rect>"
        )
    axis = _time_axis(timeline, height - BOTTOM)
    return (
        f"<svg data-plot='{plot}' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
        f"height='{height:.0f}' viewBox='0 0 {WIDTH} {height:.0f}' role='img'>"
        f"{axis}{''.join(marks)}</svg>" + _legend(colours)
    )


def _svg(plot: str, timeline: Timeline, top: float, unit: str, marks: str) -> str:
    """A plot's frame: the y axis with its ticks, the time axis, then the marks."""
    inner_h = HEIGHT - TOP - BOTTOM
    grid = []
    for i in range(5):
        y = TOP + inner_h - inner_h * i / 4
        grid.append(
            f"<line x1='{LEFT}' y1='{y:.1f}' x2='{WIDTH - RIGHT}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end'>{_short(top * i / 4)}</text>"
        )
    return (
        f"<svg data-plot='{plot}' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
        f"height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' role='img'>"
        f"{''.join(grid)}{_time_axis(timeline, TOP + inner_h)}"
        f"<text x='12' y='{TOP + inner_h / 2:.0f}' transform='rotate(-90 12 "
        f"{TOP + inner_h / 2:.0f})' text-anchor='middle'>{_text(unit)}</text>{marks}</svg>"
    )


def _time_axis(timeline: Timeline, y: float) -> str:
    inner_w = WIDTH - LEFT - RIGHT
    ticks = []
    for i in range(7):
        index = round(timeline.buckets * i / 6)
        x = LEFT + inner_w * index / timeline.buckets
        moment = timeline.at(index)
        span = timeline.buckets * timeline.bucket_s
        label = (
            moment.strftime("%H:%M:%S.%f")[:10]
            if span < 10
            else moment.strftime("%H:%M:%S" if span < 3600 else "%m-%d %H:%M")
        )
        anchor = "start" if i == 0 else "end" if i == 6 else "middle"
        ticks.append(
            f"<line x1='{x:.1f}' y1='{y}' x2='{x:.1f}' y2='{y + 4}' stroke='#999'/>"
            f"<text x='{x:.1f}' y='{y + 16}' text-anchor='{anchor}'>{label}</text>"
        )
    return f"<line x1='{LEFT}' y1='{y}' x2='{WIDTH - RIGHT}' y2='{y}' stroke='#999'/>" + "".join(
        ticks
    )


def _note(text: str) -> str:
    return (
        f"<text class='empty' x='{WIDTH / 2:.0f}' y='{HEIGHT / 2:.0f}' "
        f"text-anchor='middle'>{_text(text)}</text>"
    )


def _legend(colours: dict[str, str]) -> str:
    if not colours:
        return ""
    return (
        "<div class='legend'>"
        + "".join(
            f"<span><i style='background:{colour}'></i>{_text(name)}</span>"
            for name, colour in colours.items()
        )
        + "</div>"
    )


def _colours(series: Mapping[str, Any], given: dict[str, str] | None) -> dict[str, str]:
    given = given or {}
    return {
        name: given.get(name) or PALETTE[index % len(PALETTE)] for index, name in enumerate(series)
    }


def _nice(value: float) -> float:
    """The axis top, at or above `value` (1 for nothing): four ticks of 1, 2, 2.5 or 5 times a
    power of ten each, so every tick is a round number."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value / 4))
    return next(4 * s * power for s in (1.0, 2.0, 2.5, 5.0, 10.0) if 4 * s * power >= value)


# -- text ------------------------------------------------------------------------------------


def _text(value: object) -> str:
    """Text from elsewhere, safe in HTML: keys masked, control characters escaped, escaped."""
    return html.escape(printable(mask(str(value)), lines=False), quote=True)


def _cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds") + "Z"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:g} h"


def _short(value: float) -> str:
    """An axis label: 1.2k, 3M, 0.5."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"
