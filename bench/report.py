"""Report: `batchrunner report` of a finished job of 100,000 and 1,000,000 items, in a child
process: seconds and that child's peak RSS (issue 18: a million-item job reports in seconds
with flat memory).

The ledger is filled directly with bulk inserts (running a million requests just to get there
would take an hour): a job over two hours of four workers' runs, two models, 95% succeeded, 4%
failed (three error kinds), 1% cancelled; one attempt per item plus a retried one (a 429 or a
503) for every 20th, latencies spread over 0.1-10 s. The baseline, in the same run, is
`batchrunner status` of the same job (one pass over the items' summary index).

    python bench/report.py [--items 100000,1000000] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from common import (
    ChildRun,
    batchrunner_command,
    chat_request,
    mib,
    print_header,
    print_table,
    require_ok,
    run_child,
    sqlite_url,
    temp_dir,
)

MODELS = ("gpt-4o-mini", "gpt-4o")
WORKERS = 4
LIFE_S = 2 * 3600.0
START = datetime(2026, 12, 1, 8, 0, 0)
FAILURES = (("invalid_request", 400), ("server_error", 500), ("timeout", None))


def when(seconds: float) -> str:
    """A time as SQLAlchemy stores it in SQLite."""
    return (START + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")


def make_ledger(db: Path, count: int) -> int:
    """A finished job of `count` items, their attempts and four runs, by bulk inserts."""
    from batchrunner.ledger import Ledger
    from batchrunner.settings import RunSettings

    ledger = Ledger(sqlite_url(db))
    job = int(
        ledger.create_job(
            name=f"report-{count}",
            mode="concurrent",
            source_path="generated",
            source_sha256="0" * 64,
            options=RunSettings().stored(),
            simulated=False,
            items=iter(()),
        )
    )
    ledger.close()
    runs = [f"{n:08d}-0000-0000-0000-000000000000" for n in range(WORKERS)]
    rng = random.Random(18)
    body = orjson.dumps(chat_request(0)).decode()
    with closing(sqlite3.connect(db)) as conn:
        conn.executemany(
            "INSERT INTO runs (id, job_id, hostname, pid, started_at, heartbeat_at, ended_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run, job, f"host-{n}", 1000 + n, when(0), when(LIFE_S), when(LIFE_S))
             for n, run in enumerate(runs)],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO items (job_id, position, custom_id, url, model, body, state, run_id, "
            "attempts, attempts_floor, error_kind, error_message, http_status, input_tokens, "
            "cached_tokens, output_tokens, reasoning_tokens, cost_usd, latency_ms, created_at, "
            "updated_at, finished_at, reused) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, 0)",
            _items(job, count, body, rng),
        )
        conn.executemany(
            "INSERT INTO attempts (item_id, job_id, run_id, number, started_at, ended_at, "
            "outcome, http_status, error_kind, input_tokens, cached_tokens, output_tokens, "
            "cost_usd, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _attempts(conn, job, runs, rng),
        )
        conn.execute(
            "UPDATE jobs SET state = 'completed', item_count = ?, started_at = ?, "
            "finished_at = ? WHERE id = ?",
            (count, when(0), when(LIFE_S), job),
        )
        conn.commit()
    return job


def _items(job: int, count: int, body: str, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for index in range(count):
        at = LIFE_S * (index + rng.random()) / count
        model = MODELS[index % 2]
        roll = index % 100
        kind, status = (None, 200)
        state = "succeeded"
        if roll < 4:
            state, (kind, status) = "failed", FAILURES[roll % 3]
        elif roll == 4:
            state, status = "cancelled", None
        answered = state == "succeeded"
        yield (
            job,
            index + 1,
            f"item-{index}",
            "/v1/chat/completions",
            model,
            body,
            state,
            None,
            0 if state == "cancelled" else 2 if index % 20 == 7 else 1,
            kind,
            f"{kind}: generated" if kind else None,
            status,
            120 if answered else None,
            64 if answered and index % 3 == 0 else 0 if answered else None,
            40 if answered else None,
            (0.000042 if model == MODELS[0] else 0.0007) if answered else None,
            rng.lognormvariate(6.5, 0.8) if answered else None,
            when(0),
            when(at),
            when(at),
        )


def _attempts(
    conn: sqlite3.Connection, job: int, runs: list[str], rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    """One attempt per item that was sent (its result), and a retried one before every 20th."""
    rows = conn.execute(
        "SELECT id, position, attempts, state, http_status, error_kind, input_tokens, "
        "cached_tokens, output_tokens, cost_usd, latency_ms, finished_at FROM items "
        "WHERE job_id = ? AND attempts > 0 ORDER BY id",
        (job,),
    )
    for (item, position, attempts, state, status, kind, inp, cached, out, cost, latency,
         ended) in rows:  # fmt: skip
        run = runs[position % WORKERS]
        if attempts == 2:
            retry_kind, retry_status = ("rate_limit", 429) if position % 40 == 8 else (
                "server_error", 503)  # fmt: skip
            yield (item, job, run, 1, ended, ended, "retry", retry_status, retry_kind,
                   None, None, None, None, rng.uniform(5.0, 50.0))  # fmt: skip
        outcome = "succeeded" if state == "succeeded" else "failed"
        yield (item, job, run, attempts, ended, ended, outcome, status, kind, inp, cached, out,
               cost, latency if latency is not None else rng.uniform(100.0, 30_000.0))  # fmt: skip


def report(db: Path, job: int, out: Path, folder: Path, limit: float) -> ChildRun:
    command = batchrunner_command("report", str(job), "-o", str(out), "--db", sqlite_url(db))
    child = run_child(command, limit, folder)
    require_ok("batchrunner report", child)
    return child


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--items",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100_000, 1_000_000],
        help="comma-separated job sizes; the first is the RSS reference",
    )
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per child")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--quick", action="store_true", help="10k and 50k items")
    args = parser.parse_args(argv)
    if args.quick:
        args.items = [10_000, 50_000]
        args.time_limit = min(args.time_limit, 60.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_header("report")
    rows = []
    peaks: dict[int, float] = {}
    with temp_dir(args.keep) as folder:
        print(f"   scratch folder {folder}")
        for count in args.items:
            db = folder / f"ledger-{count}.db"
            started = time.perf_counter()
            job = make_ledger(db, count)
            made = time.perf_counter() - started
            print(f"   ledger of {count:,} finished items made in {made:.1f} s", flush=True)
            status = run_child(
                [*batchrunner_command("status", str(job)), "--db", sqlite_url(db)],
                args.time_limit,
                folder,
            )
            require_ok("batchrunner status", status)
            out = folder / f"report-{count}.html"
            child = report(db, job, out, folder, args.time_limit)
            peaks[count] = mib(child.peak_rss)
            print(
                f"   report: {child.seconds:.2f} s, peak RSS {mib(child.peak_rss):.0f} MiB, "
                f"{out.stat().st_size / 1024:.0f} KiB of HTML",
                flush=True,
            )
            rows.append([f"{count:,}", "status (baseline)", status.seconds,
                         mib(status.peak_rss), None])  # fmt: skip
            rows.append([f"{count:,}", "report", child.seconds, mib(child.peak_rss),
                         child.seconds / status.seconds])  # fmt: skip
            for path in folder.glob(f"ledger-{count}.db*"):
                path.unlink()
    print()
    print_table(["items", "what", "seconds", "peak RSS MiB", "vs status"], rows)
    small, big = args.items[0], args.items[-1]
    growth = peaks[big] / peaks[small]
    print(f"peak RSS of report, {big:,} / {small:,} items = {growth:.2f} (streaming: ~1.0)")


if __name__ == "__main__":
    main()
