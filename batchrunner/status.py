"""Turn a job's ledger summary into what `status` shows: counts, tokens, progress, rate, ETA."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from batchrunner.ledger import BatchRow, JobSummary, WorkerStatus
from batchrunner.ledger.models import CONCURRENT, FINISHED_STATES, ITEM_STATES, RUNNING, SUCCEEDED
from batchrunner.ledger.records import utcnow
from batchrunner.settings import RUN_CONCURRENCY, RunSettings
from batchrunner.stops import next_step, stopped_story
from batchrunner.usage import format_usd


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


def job_status(
    summary: JobSummary,
    now: datetime | None = None,
    workers: list[WorkerStatus] | None = None,
    batches: list[BatchRow] | None = None,
) -> dict[str, Any]:
    """The `status --json` record of one job."""
    now = now or utcnow()
    counts = {state: summary.counts.get(state, 0) for state in ITEM_STATES}
    done = sum(counts[state] for state in FINISHED_STATES)
    total = summary.item_count
    rate = None
    eta = None
    if summary.run_started_at is not None and summary.finished_in_run:
        # a job not running now ran until its latest item ended: its rate stays what it was
        until = now if summary.live_run else (summary.last_finished_at or now)
        elapsed = max((until - summary.run_started_at).total_seconds(), 1e-3)
        rate = summary.finished_in_run / elapsed
        if summary.live_run and rate > 0:
            eta = (total - done) / rate
    saved = _cache_savings(summary)
    status = {
        "id": summary.id,
        "name": summary.name,
        "mode": summary.mode,
        "state": summary.state,
        "stop_reason": summary.stop_reason if summary.state == "stopped" else None,
        "stopped_at": _iso(summary.stopped_at) if summary.state == "stopped" else None,
        "next_step": None,
        "simulated": summary.simulated,
        "source_file": summary.source_path,
        "total": total,
        "counts": counts,
        # succeeded, but cut (by length, by a content filter) or invalid structured output
        "flagged": summary.flagged,
        "reused": summary.reused,
        "progress": round(done / total, 4) if total else 1.0,
        "attempts": summary.attempts,
        "input_tokens": summary.input_tokens,
        "cached_tokens": summary.cached_tokens,
        "cached_share": _share(summary.cached_tokens, summary.input_tokens),
        "output_tokens": summary.output_tokens,
        "reasoning_tokens": summary.reasoning_tokens,
        # nothing answered (or nothing billed) spent nothing; unknown only for unpriced answers
        "cost_usd": 0.0 if _spent_nothing(summary) else summary.cost_usd,
        # what the prompt cache saved against the uncached input price (the priced models')
        "cache_saved_usd": round(sum(v for v in saved.values() if v is not None), 10),
        # requests abandoned in flight (a second Ctrl-C), possibly billed: their worst case, in
        # cost_usd too (an estimate)
        "possibly_billed_requests": summary.options.get("possibly_billed_requests", 0),
        "possibly_billed_usd": summary.options.get("possibly_billed_usd"),
        "estimate_usd": summary.options.get("estimate_usd"),
        "budget_usd": summary.options.get("budget"),
        "unpriced_models": summary.unpriced_models,
        "unpriced_reasons": _unpriced_reasons(summary.unpriced_models, summary.options),
        "models": {
            name: {
                "items": t.items,
                "input_tokens": t.input_tokens,
                "cached_tokens": t.cached_tokens,
                "cached_share": _share(t.cached_tokens, t.input_tokens),
                "cache_saved_usd": saved.get(name, 0.0),
                "output_tokens": t.output_tokens,
                "reasoning_tokens": t.reasoning_tokens,
                "cost_usd": None if t.unpriced and not t.cost_usd else round(t.cost_usd, 10),
                "unpriced_items": t.unpriced,
            }
            for name, t in sorted(summary.models.items())
        },
        "failures_by_kind": summary.failures_by_kind,
        # claimed ("running") is not in flight: a run claims pages and sends --concurrency at
        # a time; null when no live run is known (or in batch mode: those are in batches)
        "in_flight_at_most": _in_flight_at_most(summary, counts["running"], workers),
        "rate_per_s": round(rate, 2) if rate is not None else None,
        "eta_s": round(eta, 1) if eta is not None else None,
        "created_at": _iso(summary.created_at),
        "started_at": _iso(summary.started_at),
        "finished_at": _iso(summary.finished_at),
        "options": summary.options,
        "batches": [_batch(b) for b in batches or []],
        "workers": [
            {
                "id": worker.id,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "started_at": _iso(worker.started_at),
                "heartbeat_at": _iso(worker.heartbeat_at),
                "requests_last_minute": worker.requests_last_minute,
            }
            for worker in workers or []
        ],
    }
    status["next_step"] = next_step(status)
    return status


def format_job(status: dict[str, Any]) -> str:
    """A few human lines for one job."""
    flag = " [simulated]" if status["simulated"] else ""
    lines = [
        f"job {status['id']} {status['name']!r} ({status['mode']}){flag}: {status['state']}, "
        f"{status['progress'] * 100:.1f}% of {status['total']:,} items",
        "  " + _counts_line(status),
        f"  tokens: {status['input_tokens']:,} in ({_cached(status)}), "
        f"{status['output_tokens']:,} out ({status['reasoning_tokens']:,} reasoning); "
        f"{status['attempts']:,} requests sent",
        "  cost: " + _cost_line(status),
    ]
    if len(status["models"]) > 1:
        for name, model in status["models"].items():
            lines.append(
                f"    {name}: {model['items']:,} items, {model['input_tokens']:,} in"
                + (f" ({model['cached_tokens']:,} cached)" if model["cached_tokens"] else "")
                + ", "
                f"{model['output_tokens']:,} out, {format_usd(model['cost_usd'])}"
            )
    if status["rate_per_s"] is not None:
        eta = f", ETA {_duration(status['eta_s'])}" if status["eta_s"] is not None else ""
        lines.append(f"  rate: {status['rate_per_s']:.1f} items/s{eta}")
    if status["batches"]:
        lines.append("  " + _batches_line(status["batches"]))
    for worker in status["workers"]:
        lines.append(
            f"  worker {worker['hostname']}:{worker['pid']}: "
            f"{worker['requests_last_minute']:,} requests in the last minute, "
            f"last heartbeat {worker['heartbeat_at']}"
        )
    if status["failures_by_kind"]:
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(status["failures_by_kind"].items()))
        lines.append(f"  failures by kind: {kinds}")
    story = stopped_story(status)
    if story:
        lines.append(f"  stopped: {story}")
    if status["next_step"]:
        lines.append(f"  next: {status['next_step']}")
    return "\n".join(lines)


# How the text view names an answer's flag (`status --json` keeps the finish_reason).
FLAG_WORDS = {
    "length": "cut by length",
    "content_filter": "stopped by a content filter",
    "invalid_output": "invalid structured output",
}


def _cached(status: dict[str, Any]) -> str:
    """'1,234 cached', and when the cache served any: its share and what it saved."""
    text = f"{status['cached_tokens']:,} cached"
    if status["cached_tokens"]:
        text += f", {status['cached_share'] * 100:.0f}%"
        if status["cache_saved_usd"]:
            text += f", saving {format_usd(status['cache_saved_usd'])}"
    return text


def _in_flight_at_most(
    summary: JobSummary, claimed: int, workers: list[WorkerStatus] | None
) -> int | None:
    """How many of the claimed items can be in flight: the job's --concurrency per live run."""
    if summary.mode != CONCURRENT or not workers:
        return None
    return min(claimed, _sending_concurrency(summary.options) * len(workers))


def _sending_concurrency(options: dict[str, Any]) -> int:
    """The concurrency the job's runs send at: its latest run's, else the job's own."""
    given = options.get(RUN_CONCURRENCY)
    return int(given) if given else RunSettings.from_stored(options).concurrency


def _claimed_words(status: dict[str, Any]) -> str:
    """The items in state running, as what they are: claimed by a run (some in flight, the
    rest queued), held by a run that ended, or in Batch API batches."""
    claimed = status["counts"]["running"]
    if status["mode"] != CONCURRENT:
        return f"in batches {claimed:,}"
    if status["state"] != "running":
        return f"claimed {claimed:,} by a run that ended (pending again at the next run)"
    at_most = status["in_flight_at_most"]
    if at_most is None:
        return f"claimed {claimed:,}"
    runs = len(status["workers"])
    each = " each" if runs > 1 else ""
    concurrency = _sending_concurrency(status["options"])
    return (
        f"claimed {claimed:,} (at --concurrency {concurrency:,}{each}: up to {at_most:,} in "
        "flight, the rest queued)"
    )


def _counts_line(status: dict[str, Any]) -> str:
    counts = status["counts"]
    cut = [f"{n:,} {words}" for r, words in FLAG_WORDS.items() if (n := status["flagged"].get(r))]
    flags = {"succeeded": f" ({', '.join(cut)})"} if cut else {}
    line = ", ".join(
        _claimed_words(status)
        if state == RUNNING
        else f"{state} {counts[state]:,}{flags.get(state, '')}"
        for state in ITEM_STATES
        if counts[state]
    )
    if status["reused"]:
        line += f" ({status['reused']:,} reused from earlier jobs, at no cost)"
    return line


def _spent_nothing(summary: JobSummary) -> bool:
    """No cost recorded because nothing was billed (nothing answered yet, only refusals), not
    because answers had no price (an unpriced model, an image)."""
    return (
        summary.cost_usd is None
        and not summary.unpriced_models
        and not summary.counts.get(SUCCEEDED, 0)
        and not summary.options.get("possibly_billed_requests")  # abandoned, unpriced: unknown
    )


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _cache_savings(summary: JobSummary) -> dict[str, float | None]:
    """Per model with cached tokens: what they saved at its uncached input price."""
    cached = {name: t.cached_tokens for name, t in summary.models.items() if t.cached_tokens}
    if not cached:
        return {}
    from batchrunner.pricing import CacheSavings, job_price_table  # only when needed
    from batchrunner.settings import RunSettings

    table = job_price_table(RunSettings.from_stored(summary.options))
    savings = CacheSavings(batch=summary.mode == "batch", overrides=table)
    return {name: savings.usd(name, tokens) for name, tokens in cached.items()}


def _unpriced_reasons(models: list[str], options: dict[str, Any]) -> dict[str, str]:
    """Why each model has no price, judged by the job's own prices as its runs were."""
    if not models:
        return {}
    from batchrunner.pricing import job_price_table, unpriced_reason  # only when needed
    from batchrunner.settings import RunSettings

    table = job_price_table(RunSettings.from_stored(options))
    return {model: unpriced_reason(model, table) for model in models}


def _batch(row: BatchRow) -> dict[str, Any]:
    """One Batch API batch as `status --json` shows it; `usage` is what the API reported."""
    return {
        "id": row.id,
        "remote_id": row.remote_id,
        "state": row.state,
        "remote_status": row.remote_status,
        "model": row.model,
        "requests": row.request_count,
        "completed": row.completed,
        "failed": row.failed,
        "usage": orjson.loads(row.usage) if row.usage else None,
    }


def _batches_line(batches: list[dict[str, Any]]) -> str:
    """Batches by remote status, and the API's own token count beside the items' sums."""
    by_status: dict[str, int] = {}
    for batch in batches:
        name = batch["remote_status"] or batch["state"]
        by_status[name] = by_status.get(name, 0) + 1
    states = ", ".join(f"{name} {n}" for name, n in sorted(by_status.items()))
    line = f"batches: {len(batches)} ({states})"
    reported = [b["usage"] for b in batches if b["usage"]]
    if reported:
        given = sum(u.get("input_tokens", 0) for u in reported)
        made = sum(u.get("output_tokens", 0) for u in reported)
        line += f"; the API reports {given:,} in / {made:,} out"
    return line


def _cost_line(status: dict[str, Any]) -> str:
    """Spent, beside the estimate and the budget; loud about models with no price."""
    parts = [format_usd(status["cost_usd"])]
    if status["estimate_usd"] is not None:
        parts.append(f"estimated {format_usd(status['estimate_usd'])}")
    if status["budget_usd"] is not None:
        parts.append(f"budget {format_usd(status['budget_usd'])}")
    line = parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")
    if status["possibly_billed_requests"]:
        line += (
            f"; including {format_usd(status['possibly_billed_usd'])} for "
            f"{status['possibly_billed_requests']:,} requests abandoned in flight (possibly "
            "billed: their worst case, an estimate)"
        )
    if status["unpriced_models"]:
        from batchrunner.pricing import describe_unpriced  # the price tables: only when needed

        line += (
            f"; warning: {describe_unpriced(status['unpriced_reasons'])}; price with --prices FILE"
        )
    return line


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
