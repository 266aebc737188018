"""Prompt caching (issue 17): the same job sent naively and cache-aware against the fake server
simulating OpenAI's prompt cache (fake/prompt_cache.py: 4,096 machines, routing by the first 256
tokens and prompt_cache_key, overflow above 15 requests/min per pair, 5-minute expiry).

The job: N requests sharing the system prompt of jobs/support_triage.jsonl (about 1,570 tokens)
and each a different support ticket of 100-300 tokens, on gpt-5-mini. Scenarios, each run twice
at the same concurrency and --rpm, each run on a fresh ledger and a cold cache:

    fast   3,000 requests at --rpm 3000 (about a minute a run)
    slow   500 requests at --rpm 600, where a naive run's overflow machines go cold between
           visits (about 50 s a run)

    naive        `batchrunner submit --no-cache-aware`
    cache-aware  `batchrunner submit` (its default); run only when `submit --help` offers
                 --no-cache-aware, i.e. once cache-aware sending exists. Before that, the
                 naive run is the default and is measured alone (labelled "default").

Per run: the cached share of prompt tokens (from `export usage`), the ideal share and the ratio
to it (the ideal: every cacheable token of every request after the first of its prefix and
prompt_cache_key, counted by the fake from the requests it received, with the keys actually
sent), the input cost at the model's prices (batchrunner.pricing: cached input at a tenth for the
gpt-5 family), and throughput. Per scenario: cache-aware / naive input cost. Targets (issue 17):
cached share >= 90% of the ideal, input cost <= 0.5x naive.

    python bench/cache.py [--requests 3000] [--slow-requests 500] [--scenarios fast,slow]
                          [--latency-ms 200 --jitter-ms 300] [--quick] [--json]

The whole benchmark takes about 4 minutes by default; --quick (600 and 150 requests) about one.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from common import (
    BENCH_KEY,
    REPO_DIR,
    ServerProcess,
    batchrunner_command,
    check_local,
    figures_output,
    print_header,
    print_table,
    run_child,
    sqlite_url,
    temp_dir,
    verdict,
)

from batchrunner.pricing import rates_for
from batchrunner.tokens import count_text
from batchrunner.usage import Usage

MODEL = "gpt-5-mini"
EXAMPLE_JOB = REPO_DIR / "jobs" / "support_triage.jsonl"
TARGET_OF_IDEAL = 0.9
TARGET_COST_RATIO = 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: int
    rpm: float


@dataclass
class RunFigures:
    scenario: str
    mode: str
    items: int
    succeeded: int
    seconds: float
    prompt_tokens: int
    cached_tokens: int
    ideal_cached_tokens: int
    keys: int
    overflowed: int
    input_usd: float

    @property
    def share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def ideal_share(self) -> float:
        return self.ideal_cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def of_ideal(self) -> float:
        return self.cached_tokens / self.ideal_cached_tokens if self.ideal_cached_tokens else 0.0

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "cached_share": self.share,
            "ideal_share": self.ideal_share,
            "of_ideal": self.of_ideal,
            "items_per_s": self.rate,
        }


# -- the job -------------------------------------------------------------------------------------

PEOPLE = ("Kari", "Ola", "Sarah", "Anders", "Mette", "James", "Priya", "Erik", "Ingrid", "Nils")
PRODUCTS = ("heat pump", "solar inverter", "home battery", "smart thermostat", "outdoor unit")
PROBLEMS = (
    "shows error code E{code} since this morning",
    "stopped responding to the app last night",
    "makes a loud rattling noise when it defrosts",
    "was supposed to be installed on the {day}th but nobody came",
    "is charged twice on my latest invoice",
    "loses its connection to the grid several times a day",
)
SENTENCES = (
    "We had the system installed about {years} years ago and it has worked well until now.",
    "I tried switching it off and on again at the isolator, as the manual says, with no change.",
    "The display on the indoor unit blinks and the remote does nothing at all.",
    "It is about {temp} degrees outside and the house is getting colder in the evenings.",
    "My order number should be HH-{order}, but I am not completely sure about the last digits.",
    "I called the service line yesterday and waited for forty minutes before I gave up.",
    "Could someone come and have a look this week, preferably in the afternoon?",
    "The app says everything is fine, which is clearly not the case.",
    "Our neighbour has the same model and has never had this problem.",
    "I attached two photos of the display and of the fuse box to the web form.",
    "We are away from the {day}th to the end of the month, so please call before you come.",
    "Please also check whether this is covered by the warranty before any work is done.",
)


def ticket(index: int, rng: random.Random) -> str:
    """A support ticket of 100 to 300 tokens, its own from its first words on."""
    values = {
        "code": rng.choice((12, 21, 42, 51, 70)),
        "day": rng.randint(2, 28),
        "years": rng.randint(1, 9),
        "temp": rng.randint(-15, 5),
        "order": rng.randint(1_000_000, 9_999_999),
    }
    person, product = rng.choice(PEOPLE), rng.choice(PRODUCTS)
    text = f"Ticket {index}: hello, our {product} {rng.choice(PROBLEMS).format(**values)}."
    target = rng.randint(100, 300)
    while True:
        sentence = rng.choice(SENTENCES).format(**values)
        longer = f"{text} {sentence}"
        if count_text(f"{longer} Regards, {person}", MODEL) > target:
            break
        text = longer
    return f"{text} Regards, {person}"


def shared_system_prompt() -> str:
    first = orjson.loads(EXAMPLE_JOB.read_bytes().split(b"\n", 1)[0])
    return str(first["body"]["messages"][0]["content"])


def write_job(path: Path, count: int, seed: int = 17) -> Path:
    rng = random.Random(seed)
    system = shared_system_prompt()
    with path.open("wb") as out:
        for index in range(count):
            body = {
                "model": MODEL,
                "max_completion_tokens": 200,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": ticket(index, rng)},
                ],
            }
            line = {"custom_id": f"t-{index}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(orjson.dumps({**line, "body": body}, option=orjson.OPT_APPEND_NEWLINE))
    return path


# -- runs ----------------------------------------------------------------------------------------


def offers_cache_aware() -> bool:
    """Whether this batchrunner has cache-aware sending (and so `--no-cache-aware`)."""
    shown = subprocess.run(
        batchrunner_command("submit", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_DIR,
    )
    return "--no-cache-aware" in shown.stdout


def local_only_environment() -> None:
    """The children (batchrunner's CLI) see no real key, endpoint or ledger: only the bench's."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "AZURE_OPENAI")) or name == "BATCHRUNNER_DB":
            del os.environ[name]
    os.environ["OPENAI_API_KEY"] = BENCH_KEY


def usage_rows(db_url: str, folder: Path) -> list[dict[str, Any]]:
    exported = subprocess.run(
        batchrunner_command("export", "usage", "--format", "jsonl", "--db", db_url),
        capture_output=True,
        timeout=300,
        check=True,
        cwd=folder,
    )
    return [orjson.loads(line) for line in exported.stdout.splitlines()]


def input_cost(rows: list[dict[str, Any]]) -> float:
    """The input side of the bill: uncached at the input rate, cached at the cached rate."""
    total = 0.0
    for row in rows:
        rates = rates_for(str(row["model"]))
        if rates is None:
            raise SystemExit(f"no price for {row['model']}: cannot compare costs")
        usage = Usage(input_tokens=row["input_tokens"] or 0, cached_tokens=row["cached_tokens"])
        cost = rates.cost(usage)
        total += cost.input_usd + cost.cached_input_usd
    return total


def run_once(
    server: ServerProcess,
    scenario: Scenario,
    mode: str,
    job: Path,
    folder: Path,
    args: argparse.Namespace,
) -> RunFigures:
    check_local(server.base_url)
    server.reset()  # fresh counters and a cold cache
    db_url = sqlite_url(folder / f"ledger-{scenario.name}-{mode}.db")
    command = batchrunner_command(
        "submit",
        str(job),
        "--db",
        db_url,
        "--base-url",
        server.base_url,
        "--hosted-prices",
        "--concurrency",
        str(args.concurrency),
        "--rpm",
        str(scenario.rpm),
    )
    if mode == "naive":
        command.append("--no-cache-aware")
    limit = scenario.requests / scenario.rpm * 60 * args.limit_factor + 60
    child = run_child(command, limit, folder)
    if child.returncode not in (0, 1):
        raise SystemExit(
            f"{scenario.name}/{mode} failed (exit {child.returncode}):\n{child.stderr[-2000:]}"
        )
    rows = usage_rows(db_url, folder)
    cache = server.stats()["prompt_cache"] or {}
    return RunFigures(
        scenario=scenario.name,
        mode=mode,
        items=len(rows),
        succeeded=sum(1 for row in rows if row.get("status") == "succeeded"),
        seconds=child.seconds,
        prompt_tokens=sum(row["input_tokens"] or 0 for row in rows),
        cached_tokens=sum(row["cached_tokens"] or 0 for row in rows),
        ideal_cached_tokens=int(cache.get("ideal_cached_tokens", 0)),
        keys=int(cache.get("keys", 0)),
        overflowed=int(cache.get("overflowed", 0)),
        input_usd=input_cost(rows),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="the fast scenario's job")
    parser.add_argument("--rpm", type=float, default=3000.0, help="the fast scenario's --rpm")
    parser.add_argument("--slow-requests", type=int, default=500)
    parser.add_argument("--slow-rpm", type=float, default=600.0)
    parser.add_argument("--scenarios", default="fast,slow")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="the fake's, plus jitter")
    parser.add_argument("--jitter-ms", type=float, default=300.0)
    parser.add_argument("--machines", type=int, default=4096, help="the fake's cache pool")
    parser.add_argument(
        "--limit-factor", type=float, default=3.0, help="cut a run after this x its ideal time"
    )
    parser.add_argument("--quick", action="store_true", help="600 and 150 requests")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.slow_requests = min(args.requests, 600), min(args.slow_requests, 150)
    unknown = set(args.scenarios.split(",")) - {"fast", "slow"}
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from fast, slow")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    local_only_environment()
    with figures_output(args.json) as figures:
        measure(args, figures)


def measure(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    print_header("cache")
    scenarios = {
        "fast": Scenario("fast", args.requests, args.rpm),
        "slow": Scenario("slow", args.slow_requests, args.slow_rpm),
    }
    chosen = [scenarios[name] for name in args.scenarios.split(",")]
    aware = offers_cache_aware()
    modes = ["naive", "cache-aware"] if aware else ["default"]
    if not aware:
        print("   this batchrunner has no --no-cache-aware: measuring its default sending only")
    config = {
        "prompt_cache": True,
        "cache_machines": args.machines,
        "latency_ms": args.latency_ms,
        "latency_jitter_ms": args.jitter_ms,
        "seed": 1,
    }
    runs: list[RunFigures] = []
    started = time.perf_counter()
    with temp_dir() as folder, ServerProcess("fake", config) as server:
        print(
            f"   fake server with prompt caching ({args.machines:,} machines), latency "
            f"{args.latency_ms:.0f}+{args.jitter_ms:.0f} ms, at {server.base_url}{server.placement}"
        )
        for scenario in chosen:
            job = write_job(folder / f"{scenario.name}.jsonl", scenario.requests)
            for mode in modes:
                run = run_once(server, scenario, mode, job, folder, args)
                runs.append(run)
                print(
                    f"   {scenario.name}/{mode}: {run.succeeded}/{run.items} in "
                    f"{run.seconds:.1f} s, cached {run.share:.1%} of prompt tokens "
                    f"({run.of_ideal:.0%} of ideal)",
                    flush=True,
                )
    print()
    print(
        f"{MODEL}, concurrency {args.concurrency}, shared prefix "
        f"{count_text(shared_system_prompt(), MODEL):,} tokens + a 100-300-token ticket each; "
        f"{time.perf_counter() - started:.0f} s in all:"
    )
    print_table(
        [
            "scenario",
            "mode",
            "items",
            "rpm",
            "items/s",
            "prompt tok",
            "cached tok",
            "cached share",
            "ideal share",
            "of ideal",
            "keys",
            "overflowed",
            "input $",
        ],
        [
            [
                r.scenario,
                r.mode,
                r.items,
                scenarios[r.scenario].rpm,
                r.rate,
                r.prompt_tokens,
                r.cached_tokens,
                f"{r.share:.1%}",
                f"{r.ideal_share:.1%}",
                f"{r.of_ideal:.1%}",
                r.keys,
                r.overflowed,
                f"{r.input_usd:.4f}",
            ]
            for r in runs
        ],
    )
    comparisons = compare(runs, chosen)
    figures["runs"] = [run.as_dict() for run in runs]
    figures["scenarios"] = comparisons
    figures["cache_aware_measured"] = aware


def compare(runs: list[RunFigures], scenarios: list[Scenario]) -> dict[str, dict[str, float]]:
    """Per scenario: cache-aware against naive (cost, throughput) and against the ideal."""
    found: dict[str, dict[str, float]] = {}
    for scenario in scenarios:
        by_mode = {r.mode: r for r in runs if r.scenario == scenario.name}
        if "naive" not in by_mode or "cache-aware" not in by_mode:
            continue
        naive, aware = by_mode["naive"], by_mode["cache-aware"]
        cost_ratio = aware.input_usd / naive.input_usd if naive.input_usd else math.nan
        rate_ratio = aware.rate / naive.rate if naive.rate else math.nan
        found[scenario.name] = {
            "cost_ratio": cost_ratio,
            "of_ideal": aware.of_ideal,
            "throughput_ratio": rate_ratio,
        }
        print(
            f"{scenario.name}: cache-aware/naive input cost {cost_ratio:.2f} "
            f"(target <= {TARGET_COST_RATIO}: {verdict(cost_ratio <= TARGET_COST_RATIO)}); "
            f"cached share {aware.of_ideal:.1%} of ideal (target >= {TARGET_OF_IDEAL:.0%}: "
            f"{verdict(aware.of_ideal >= TARGET_OF_IDEAL)}); throughput ratio {rate_ratio:.2f}"
        )
    return found


if __name__ == "__main__":
    main()
