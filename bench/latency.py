"""Latency-bound throughput: 5,000 requests at concurrency 500 against a server answering after
200 ms (its own process and core). Ideal rate = concurrency / latency = 2,500/s.

The default server is the minimal canned one with a delay, which spends almost no CPU per
request, so the figures are the client's; `--server fake` uses batchrunner's fake server (about
160 us per request; on 7de0221 the bare client reached 83-84% of the ideal with either), and
`--jitter-ms` needs it.

batchrunner end to end (submit + run, temp SQLite ledger) against the ideal (target >= 90%),
and against bare loops on the same server in the same run: aiohttp + orjson (the issue's
baseline) and pyreqwest + orjson on uvloop (batchrunner's own transport and loop).

    python bench/latency.py [--requests 5000] [--concurrency 500] [--latency-ms 200] [--quick]
    python bench/latency.py --server fake --jitter-ms 100 --requests 20000
    python bench/latency.py --only c --json      # batchrunner only; figures as JSON on stdout

--only picks a subset of a (aiohttp), a3 (pyreqwest) and c (batchrunner). --json (for
bench/revisions.py) sends the human report to stderr and prints one JSON object on stdout: the
ideal rate, items/s of each round per client (for c end to end and run phase, with ingest and
run seconds), c's medians as shares of the ideal, and the measured batchrunner's `__file__`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from common import (
    ServerProcess,
    bare_aiohttp,
    bare_pyreqwest,
    batchrunner_e2e,
    bounded,
    check_answers,
    cpu_shares,
    figures_output,
    median,
    print_header,
    print_table,
    sqlite_url,
    temp_dir,
    verdict,
    warm_imports,
    write_job_file,
)

TARGET_SHARE_OF_IDEAL = 0.9
CLIENTS = ("a", "a3", "c")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="extra random latency, 0 to this (mean/2)"
    )
    parser.add_argument(
        "--server",
        choices=("minimal", "fake"),
        default="minimal",
        help="minimal: canned answers after the latency, almost no server CPU per request; "
        "fake: batchrunner's fake server (parses and counts tokens per request)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; median")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="one round of 2,000 requests")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CLIENTS)}")
    parser.add_argument(
        "--json", action="store_true", help="report on stderr, figures as JSON on stdout"
    )
    args = parser.parse_args(argv)
    args.clients = [c.strip() for c in args.only.split(",")] if args.only else list(CLIENTS)
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients {sorted(unknown)}; choose from {CLIENTS}")
    if args.quick:
        args.requests, args.rounds = min(args.requests, 2_000), 1
        args.time_limit = min(args.time_limit, 30.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.pop("OPENAI_API_KEY", None)
    with figures_output(args.json) as figures:
        print_header("latency")
        warm_imports(args.clients)
        measure(args, figures)


def measure(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """`--rounds` rounds of the chosen clients; prints the report, fills `figures`."""
    clients = args.clients
    ideal = args.concurrency / ((args.latency_ms + args.jitter_ms / 2) / 1000)
    bare: list[float] = []
    own: list[float] = []
    total: list[float] = []
    run: list[float] = []
    ingest_s: list[float] = []
    run_s: list[float] = []
    config: dict[str, float] = {"latency_ms": args.latency_ms}
    if args.server == "fake":
        config.update(latency_jitter_ms=args.jitter_ms, seed=1)
    elif args.jitter_ms:
        raise SystemExit("--jitter-ms needs --server fake")
    with ServerProcess(args.server, config) as server, temp_dir() as folder:
        print(
            f"   {args.server} server ({args.latency_ms:.0f} ms + 0-{args.jitter_ms:.0f} ms) at "
            f"{server.base_url}{server.placement}"
        )
        job = write_job_file(folder / "job.jsonl", args.requests)
        for round_number in range(args.rounds):
            parts = [f"   round {round_number + 1}:"]
            if "a" in clients:
                with cpu_shares(server.pid) as a_cpu:
                    a = bounded(bare_aiohttp(server.base_url, args.requests, args.concurrency), 120)
                check_answers(a)
                bare.append(a.rate)
                parts.append(
                    f"bare {a.rate:,.0f}/s (CPU: client {a_cpu['client']:.0%} "
                    f"server {a_cpu['server']:.0%});"
                )
            if "a3" in clients:
                a3 = bounded(
                    bare_pyreqwest(server.base_url, args.requests, args.concurrency),
                    120,
                    uvloop=True,
                )
                check_answers(a3)
                own.append(a3.rate)
                parts.append(f"pyreqwest {a3.rate:,.0f}/s;")
            if "c" in clients:
                db = sqlite_url(folder / f"ledger-{round_number}.db")
                with cpu_shares(server.pid) as c_cpu:
                    e2e = batchrunner_e2e(
                        server.base_url, job, db, args.time_limit, concurrency=args.concurrency
                    )
                if e2e.counts != {"succeeded": args.requests}:
                    raise SystemExit(f"batchrunner did not finish cleanly: {e2e}")
                total.append(args.requests / e2e.total_s)
                run.append(args.requests / e2e.run_s)
                ingest_s.append(e2e.ingest_s)
                run_s.append(e2e.run_s)
                parts.append(
                    f"batchrunner e2e {total[-1]:,.0f}/s (ingest {e2e.ingest_s:.2f} s + run "
                    f"{e2e.run_s:.2f} s; CPU: client {c_cpu['client']:.0%} server "
                    f"{c_cpu['server']:.0%}; "
                    f"{e2e.attempts / max(e2e.commits, 1):.0f} results per ledger commit)"
                )
            print(" ".join(parts), flush=True)
    print()
    print(
        f"{args.requests:,} requests, concurrency {args.concurrency}, latency "
        f"{args.latency_ms:.0f} ms (+ 0-{args.jitter_ms:.0f} ms): ideal {ideal:,.0f} items/s "
        f"(median of {args.rounds} round(s))"
    )
    vs_a = median(bare) if bare else None
    rows: list[list[Any]] = []
    if bare:
        rows.append(["a: aiohttp+orjson", median(bare), median(bare) / ideal, None])
    if own:
        rows.append(["a3: pyreqwest+orjson, uvloop", median(own), median(own) / ideal, None])
    for label, rates in (("e2e (submit + run)", total), ("run phase only", run)):
        if rates:
            ratio = median(rates) / vs_a if vs_a else None
            rows.append([f"c: batchrunner {label}", median(rates), median(rates) / ideal, ratio])
    print_table(["client", "items/s", "of ideal", "vs a"], rows)
    if "c" in clients:
        for label, rates in (("run phase", run), ("end to end (ingest + run)", total)):
            share = median(rates) / ideal
            print(
                f"batchrunner {label} at {share:.0%} of ideal, target >= "
                f"{TARGET_SHARE_OF_IDEAL:.0%}: {verdict(share >= TARGET_SHARE_OF_IDEAL)}"
            )
    by_name: dict[str, dict[str, Any]] = {}
    if bare:
        by_name["a"] = {"rates": bare, "median": median(bare)}
    if own:
        by_name["a3"] = {"rates": own, "median": median(own)}
    if "c" in clients:
        by_name["c"] = {
            "rates": total,
            "median": median(total),
            "run_rates": run,
            "ingest_s": ingest_s,
            "run_s": run_s,
            "share_of_ideal": median(total) / ideal,
            "run_share_of_ideal": median(run) / ideal,
        }
    figures.update(
        script="latency",
        requests=args.requests,
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        server=args.server,
        rounds=args.rounds,
        ideal=ideal,
        clients=by_name,
    )


if __name__ == "__main__":
    main()
