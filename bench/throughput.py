"""Throughput: the same N requests at the same concurrency through several clients, against one
zero-latency OpenAI-compatible server in its own process (pinned to its own core).

    a   bare aiohttp + orjson: the floor any Python client pays
    a2  the same on uvloop, the event loop batchrunner runs on when it is installed
    a3  bare pyreqwest + orjson on uvloop: the floor of batchrunner's own transport
    b   openai SDK, AsyncOpenAI(max_retries=0), default httpx2 transport
    b2  the SDK over its aiohttp transport (openai.DefaultAioHttpClient), if available
    c   batchrunner end to end: submit (validate + record in a temp SQLite ledger) + run
        to the last commit

Prints items/s for each and the ratio c/a (target >= 0.5). --sweep measures a, b, b2 and c at
concurrency 8, 32, 128 and 512 and plots them to bench/throughput.png (needs matplotlib).

    python bench/throughput.py [--requests 20000] [--concurrency 128] [--rounds 1] [--quick]
    python bench/throughput.py --sweep [--sweep-requests 10000]
    python bench/throughput.py --only c          # one client, e.g. under a profiler
    python bench/throughput.py --only c --json   # the figures as one JSON object on stdout

--json (for bench/revisions.py) sends the human report to stderr and prints one JSON object on
stdout: per client its name, items/s of each round and their median (for c also ingest and run
seconds and the run phase's items/s per round), the per-round ratios, and the measured
batchrunner's `__file__` and revision.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    Measure,
    ServerProcess,
    bare_aiohttp,
    bare_pyreqwest,
    batchrunner_e2e,
    bounded,
    check_answers,
    cpu_shares,
    figures_output,
    median,
    openai_sdk,
    print_header,
    print_table,
    sdk_aiohttp_available,
    sqlite_url,
    temp_dir,
    verdict,
    warm_imports,
    write_job_file,
)

CLIENTS = ("a", "a2", "a3", "b", "b2", "c")
SWEEP_CONCURRENCY = (8, 32, 128, 512)
TARGET_C_OVER_A = 0.5
PLOT = BENCH_DIR / "throughput.png"


def measure(
    client: str, server: ServerProcess, count: int, concurrency: int, limit: float
) -> Measure:
    """One timed run of one client, with the CPU shares of server and client during it."""
    with cpu_shares(server.pid) as shares:
        result = measure_client(client, server.base_url, count, concurrency, limit)
    result.extra.update(shares)
    return result


def measure_client(
    client: str, base_url: str, count: int, concurrency: int, limit: float
) -> Measure:
    """One timed run of one client on a fresh job file / ledger."""
    if client in ("a", "a2"):
        result = bounded(bare_aiohttp(base_url, count, concurrency), limit, uvloop=client == "a2")
        if client == "a2":
            result.name = "a2: aiohttp+orjson, uvloop"
        return result
    if client == "a3":
        return bounded(bare_pyreqwest(base_url, count, concurrency), limit, uvloop=True)
    if client in ("b", "b2"):
        return bounded(openai_sdk(base_url, count, concurrency, aiohttp=client == "b2"), limit)
    with temp_dir() as folder:
        job = write_job_file(folder / "job.jsonl", count)
        e2e = batchrunner_e2e(
            base_url, job, sqlite_url(folder / "ledger.db"), limit, concurrency=concurrency
        )
    if e2e.state != "completed" or e2e.counts != {"succeeded": count}:
        raise SystemExit(f"batchrunner did not finish cleanly: {e2e}")
    return e2e.measure()


def run_order(clients: list[str]) -> list[str]:
    """c right after a, so their ratio compares neighbours in time on a noisy machine."""
    return [c for c in ("a", "c", "a2", "a3", "b", "b2") if c in clients]


def main_comparison(
    args: argparse.Namespace,
    clients: list[str],
    server: ServerProcess,
    figures: dict[str, Any] | None = None,
) -> None:
    """Each client `--rounds` times, interleaved; prints medians and ratios, and puts the
    figures in `figures` (for --json)."""
    rates: dict[str, list[float]] = {c: [] for c in clients}
    cpu: dict[str, list[tuple[float, float]]] = {c: [] for c in clients}
    names: dict[str, str] = {}
    c_parts: list[tuple[float, float, float]] = []
    ratios: list[float] = []
    uv_ratios: list[float] = []  # c against the bare loop on uvloop, c's own event loop
    own_ratios: list[float] = []  # c against a bare loop on its own transport
    for round_number in range(args.rounds):
        by_client: dict[str, Measure] = {}
        for client in run_order(clients):
            result = measure(client, server, args.requests, args.concurrency, args.time_limit)
            check_answers(result)
            by_client[client] = result
            rates[client].append(result.rate)
            cpu[client].append((result.extra["client"], result.extra["server"]))
            names[client] = result.name
            if client == "c":
                extra = result.extra
                c_parts.append((extra["ingest_s"], extra["run_s"], extra["per_commit"]))
            print(
                f"   round {round_number + 1}: {result.name:<26} {result.rate:>9,.0f} items/s "
                f"({result.seconds:.2f} s; CPU: client {result.extra['client']:.0%}, "
                f"server {result.extra['server']:.0%})",
                flush=True,
            )
        if "a" in by_client and "c" in by_client:
            ratios.append(by_client["c"].rate / by_client["a"].rate)
        if "a2" in by_client and "c" in by_client:
            uv_ratios.append(by_client["c"].rate / by_client["a2"].rate)
        if "a3" in by_client and "c" in by_client:
            own_ratios.append(by_client["c"].rate / by_client["a3"].rate)
    print()
    print(f"{args.requests:,} requests at concurrency {args.concurrency}, {args.rounds} round(s):")
    base = median(rates["a"]) if "a" in rates else None
    rows = []
    for client in clients:
        rate = median(rates[client])
        rows.append(
            [
                names[client],
                rate,
                rate / base if base else None,
                " ".join(f"{r:,.0f}" for r in rates[client]),
            ]
        )
    print_table(["client", "items/s (median)", "vs a", "each round"], rows)
    if c_parts:
        ingest = median([p[0] for p in c_parts])
        run = median([p[1] for p in c_parts])
        print(
            f"c split: ingest {ingest:.2f} s ({args.requests / ingest:,.0f} lines/s), run + final "
            f"commit {run:.2f} s ({args.requests / run:,.0f} items/s), "
            f"{median([p[2] for p in c_parts]):.0f} results per ledger commit"
        )
        if base:
            print(f"c run phase only / a: {args.requests / run / base:.2f}")
    if ratios:
        ratio = median(ratios)
        print(
            f"c/a (median of per-round ratios) = {ratio:.2f}  target >= {TARGET_C_OVER_A}: "
            f"{verdict(ratio >= TARGET_C_OVER_A)}"
        )
    if uv_ratios:
        print(f"c/a2 (both on uvloop, median of per-round ratios) = {median(uv_ratios):.2f}")
    if own_ratios:
        print(f"c/a3 (both on pyreqwest, median of per-round ratios) = {median(own_ratios):.2f}")
    if figures is None:
        return
    by_name: dict[str, dict[str, Any]] = {}
    for client in clients:
        by_name[client] = {
            "name": names[client],
            "rates": rates[client],
            "median": median(rates[client]),
            "cpu_client": [share[0] for share in cpu[client]],
            "cpu_server": [share[1] for share in cpu[client]],
        }
    if c_parts:
        by_name["c"].update(
            ingest_s=[p[0] for p in c_parts],
            run_s=[p[1] for p in c_parts],
            run_rates=[args.requests / p[1] for p in c_parts],
            per_commit=[p[2] for p in c_parts],
        )
    figures.update(
        script="throughput",
        requests=args.requests,
        concurrency=args.concurrency,
        rounds=args.rounds,
        server=args.server,
        clients=by_name,
        ratios={"c/a": ratios, "c/a2": uv_ratios, "c/a3": own_ratios},
    )


def sweep(args: argparse.Namespace, clients: list[str], server: ServerProcess) -> None:
    """Each client at each concurrency, `--rounds` times interleaved; medians per point."""
    rates: dict[str, dict[int, list[float]]] = {c: defaultdict(list) for c in clients}
    names: dict[str, str] = {}
    for round_number in range(args.rounds):
        for concurrency in args.sweep_concurrency:
            for client in run_order(clients):
                result = measure(client, server, args.sweep_requests, concurrency, args.time_limit)
                check_answers(result)
                rates[client][concurrency].append(result.rate)
                names[client] = result.name
                print(
                    f"   round {round_number + 1}, concurrency {concurrency:>4}: "
                    f"{result.name:<26} {result.rate:>9,.0f} items/s",
                    flush=True,
                )
    results = {c: {n: median(r) for n, r in points.items()} for c, points in rates.items()}
    print()
    print(
        f"sweep, {args.sweep_requests:,} requests per point, median of {args.rounds} "
        "round(s) (items/s):"
    )
    headers = ["client", *(f"c={c}" for c in args.sweep_concurrency)]
    rows = [[names[c], *(results[c][n] for n in args.sweep_concurrency)] for c in clients]
    print_table(headers, rows)
    if "a" in results and "c" in results:
        ratio_row = ["c/a", *(results["c"][n] / results["a"][n] for n in args.sweep_concurrency)]
        print_table(["", *headers[1:]], [ratio_row])
    plot(results, names, args.sweep_requests, args.plot)


def plot(
    results: dict[str, dict[int, float]], names: dict[str, str], count: int, path: Path
) -> None:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print(f"matplotlib is not installed: no plot written (pip install matplotlib for {path})")
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for client, points in results.items():
        xs = sorted(points)
        axes.plot(xs, [points[x] for x in xs], marker="o", label=names[client])
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({x for p in results.values() for x in p}))
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("concurrency (requests in flight)")
    axes.set_ylabel("items/s")
    axes.set_ylim(bottom=0)
    axes.set_title(f"Throughput vs concurrency, zero-latency local server, {count:,} requests")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats; median")
    parser.add_argument("--server", choices=("minimal", "fake"), default="minimal")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CLIENTS)}")
    parser.add_argument("--sweep", action="store_true", help="sweep concurrency and plot instead")
    parser.add_argument("--sweep-requests", type=int, default=10_000)
    parser.add_argument(
        "--sweep-concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(SWEEP_CONCURRENCY),
    )
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument(
        "--json",
        action="store_true",
        help="report on stderr, figures as one JSON object on stdout (not with --sweep)",
    )
    args = parser.parse_args(argv)
    if args.json and args.sweep:
        parser.error("--json is for the comparison, not --sweep")
    if args.quick:
        args.requests = min(args.requests, 2_000)
        args.sweep_requests = min(args.sweep_requests, 500)
        args.time_limit = min(args.time_limit, 30.0)
    return args


def chosen_clients(only: str | None, report: Callable[[str], None]) -> list[str]:
    clients = [c.strip() for c in only.split(",")] if only else list(CLIENTS)
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        raise SystemExit(f"unknown clients {sorted(unknown)}; choose from {CLIENTS}")
    if "b2" in clients:
        missing = sdk_aiohttp_available()
        if missing:
            report(f"b2 skipped: openai.DefaultAioHttpClient is unusable here ({missing})")
            clients.remove("b2")
    return clients


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.pop("OPENAI_API_KEY", None)  # never sent anywhere, not even to 127.0.0.1
    with figures_output(args.json) as figures:
        print_header("throughput")
        clients = chosen_clients(args.only, print)
        warm_imports(clients)
        with ServerProcess(args.server) as server:
            print(f"   {args.server} server at {server.base_url}{server.placement}", flush=True)
            if args.sweep:
                sweep(args, clients, server)
            else:
                main_comparison(args, clients, server, figures)


if __name__ == "__main__":
    main()
