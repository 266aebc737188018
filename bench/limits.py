"""Rate limits (issue 3): batchrunner against the fake server enforcing a requests-per-minute
limit (it answers 429 with OpenAI's headers when its bucket is empty), in its own process.

Scenarios, each on a fresh ledger with enough items for `--seconds` at the server's limit:

    same   the runner's --rpm equals the server's limit
    2x     the runner's --rpm is twice the server's limit
    none   no --rpm: only what the runner learns from 429s and their headers

The server's bucket starts full (a whole minute's worth), so by default it is drained first with
one minute's worth of bare requests: the run then meets the limit at once, as a job does that
starts while the account is busy (--no-drain to skip). Reports the achieved rate as a share of
the limit, the 429s the server sent, the attempts and the items that failed.

    python bench/limits.py [--rpm 600] [--seconds 30] [--scenarios same,2x,none] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from common import (
    E2E,
    ServerProcess,
    bare_aiohttp,
    batchrunner_e2e,
    bounded,
    print_header,
    print_table,
    sqlite_url,
    temp_dir,
    write_job_file,
)

SCENARIOS: dict[str, float | None] = {"same": 1.0, "2x": 2.0, "none": None}


def server_counts(server: ServerProcess) -> tuple[int, dict[int, int]]:
    stats = server.stats()
    return int(stats["total_requests"]), {int(k): v for k, v in stats["status_counts"].items()}


def scenario(
    server: ServerProcess, args: argparse.Namespace, name: str, folder_index: int
) -> list[Any]:
    factor = SCENARIOS[name]
    runner_rpm = args.rpm * factor if factor is not None else None
    items = math.ceil(args.rpm / 60 * args.seconds)
    server.reset()
    if not args.no_drain:
        drained = bounded(bare_aiohttp(server.base_url, args.rpm, 32), 60)
        if drained.statuses.get(429):
            print(f"   (drain already met {drained.statuses[429]} 429s)")
    before_total, before = server_counts(server)
    with temp_dir() as folder:
        job = write_job_file(folder / "job.jsonl", items)
        e2e: E2E = batchrunner_e2e(
            server.base_url,
            job,
            sqlite_url(folder / f"ledger-{folder_index}.db"),
            args.seconds * args.limit_factor,
            concurrency=args.concurrency,
            rpm=runner_rpm,
        )
    after_total, after = server_counts(server)
    sent = after_total - before_total
    limited = after.get(429, 0) - before.get(429, 0)
    succeeded = e2e.counts.get("succeeded", 0)
    achieved_rpm = succeeded / e2e.run_s * 60
    print(
        f"   {name}: {succeeded}/{items} succeeded in {e2e.run_s:.1f} s ({e2e.state}), "
        f"{limited} x 429 of {sent} requests",
        flush=True,
    )
    return [
        name,
        runner_rpm,
        items,
        e2e.run_s,
        e2e.state,
        succeeded,
        e2e.counts.get("failed", 0),
        achieved_rpm,
        achieved_rpm / args.rpm,
        sent,
        limited,
        e2e.attempts,
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=int, default=600, help="the server's limit")
    parser.add_argument("--seconds", type=float, default=30.0, help="work for this long at it")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--no-drain", action="store_true", help="start with a full bucket")
    parser.add_argument(
        "--limit-factor", type=float, default=3.0, help="stop a run after this x --seconds"
    )
    parser.add_argument("--quick", action="store_true", help="6 s per scenario")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.limit_factor = min(args.seconds, 6.0), min(args.limit_factor, 2.0)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.pop("OPENAI_API_KEY", None)
    print_header("limits")
    rows = []
    with ServerProcess("fake", {"rpm_limit": args.rpm, "seed": 1}) as server:
        drain = "drained first" if not args.no_drain else "full at start"
        print(
            f"   fake server, rpm_limit {args.rpm} (bucket {drain}), at "
            f"{server.base_url}{server.placement}"
        )
        for index, name in enumerate(args.scenarios.split(",")):
            rows.append(scenario(server, args, name, index))
    print()
    print(
        f"server limit {args.rpm} rpm, runner concurrency {args.concurrency}, "
        f"runs cut after {args.seconds * args.limit_factor:.0f} s:"
    )
    print_table(
        [
            "scenario",
            "runner rpm",
            "items",
            "seconds",
            "state",
            "succeeded",
            "failed",
            "achieved rpm",
            "of limit",
            "requests",
            "429s",
            "attempts",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
