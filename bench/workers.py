"""Scale out, measured: one job run by 1, 2, 4 and 8 `batchrunner worker` processes on this
machine, on SQLite and on PostgreSQL, against a local server in its own process.

    python bench/workers.py [--items 20000] [--slow-items 5000] [--workers 1,2,4,8]
        [--in-flight 128] [--latency-ms 0,200] [--backends sqlite,postgresql]
        [--pg URL] [--big-ledger 1000000] [--quick]

Two servers: (a) zero latency, where the workers' own CPU is the limit, and (b) 200 ms, where
the in-flight count is: the total in flight is held equal (`--in-flight`, split evenly over the
workers), so the ideal rate is in-flight / latency whatever the number of workers, and the
figure is the share of it reached. For each run it prints items/s (first to last commit of a
result: the run phase, without the processes' start-up), the workers' CPU per item (their user
+ system time from wait4, start-up included, so small jobs look dearer), PostgreSQL's CPU per
item (its postmaster and every backend, counted in the postmaster's reaped-children times), and
the time from the job's last commit to the last worker's exit.

`--big-ledger N` runs the same job again with 2 workers on a ledger that already holds a job of
N finished items, against the empty ledger, and `status` on both: claims, heartbeats and the
summary must not slow down as the ledger grows (the issue's bar: within 10%).

PostgreSQL needs `--pg URL` (or $BATCHRUNNER_TEST_PG): a server where this script may create
and drop databases. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    ServerProcess,
    batchrunner_command,
    check_local,
    cpu_seconds,
    print_header,
    print_table,
    sqlite_url,
    temp_dir,
    write_job_file,
)

SQLITE, POSTGRES = "sqlite", "postgresql"


@dataclass
class Run:
    backend: str
    latency_ms: float
    workers: int
    items: int
    items_per_s: float
    worker_cpu_us: float
    pg_cpu_us: float | None
    lingered_s: float
    ideal_share: float | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000, help="items at zero latency")
    parser.add_argument("--slow-items", type=int, default=5_000, help="items at 200 ms")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--in-flight", type=int, default=128, help="all workers together")
    parser.add_argument("--latency-ms", default="0,200")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default=os.environ.get("BATCHRUNNER_TEST_PG", ""))
    parser.add_argument("--big-ledger", type=int, default=0, help="finished items beside")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 and 2 workers")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.slow_items, args.workers = 2_000, 1_000, "1,2"
        args.big_ledger = min(args.big_ledger, 100_000)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if POSTGRES in backends and not args.pg:
        print("PostgreSQL skipped: give --pg URL (or set BATCHRUNNER_TEST_PG)")
        backends.remove(POSTGRES)
    print_header("workers: one job, 1..8 worker processes")
    print(f"   nproc {os.cpu_count()}: every worker, the server and PostgreSQL share these cores")
    runs: list[Run] = []
    with temp_dir() as scratch:
        for latency in (float(x) for x in args.latency_ms.split(",")):
            items = args.items if latency == 0 else args.slow_items
            job_file = write_job_file(scratch / f"job-{items}.jsonl", items)
            with ServerProcess("minimal", {"latency_ms": latency}) as server:
                check_local(server.base_url)
                for backend in backends:
                    for count in (int(x) for x in args.workers.split(",")):
                        with ledger_url(backend, args.pg, scratch) as url:
                            runs.append(
                                one_run(url, backend, job_file, items, count, latency, args, server)
                            )
                            print_runs(runs[-1:])
        print()
        print_runs(runs)
        if args.big_ledger:
            print()
            big_ledger(args, backends, scratch)


def print_runs(runs: list[Run]) -> None:
    print_table(
        ["backend", "latency ms", "workers", "items", "items/s", "ideal share",
         "worker CPU us/item", "PG CPU us/item", "last commit -> exit s"],
        [
            (r.backend, r.latency_ms, r.workers, r.items, r.items_per_s, r.ideal_share,
             r.worker_cpu_us, r.pg_cpu_us, r.lingered_s)
            for r in runs
        ],
    )  # fmt: skip


@contextmanager
def ledger_url(backend: str, pg: str, scratch: Path) -> Iterator[str]:
    """A fresh ledger: a SQLite file in the scratch folder, or a new PostgreSQL database
    (dropped afterwards)."""
    name = f"bench_workers_{uuid.uuid4().hex[:10]}"
    if backend == SQLITE:
        yield sqlite_url(scratch / f"{name}.db")
        return
    from sqlalchemy.engine import make_url

    with _pg_admin(pg) as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg).set(database=name).render_as_string(hide_password=False)
    finally:
        with _pg_admin(pg) as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_admin(pg: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = make_url(pg).set(database="postgres")
    return create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool).connect()


def one_run(
    url: str,
    backend: str,
    job_file: Path,
    items: int,
    count: int,
    latency_ms: float,
    args: argparse.Namespace,
    server: ServerProcess,
) -> Run:
    submitted = subprocess.run(
        batchrunner_command("submit", str(job_file), "--db", url, "--detach", "--new"),
        capture_output=True,
        timeout=600,
    )
    if submitted.returncode != 0:
        raise SystemExit(f"submit failed: {submitted.stderr.decode()[-2000:]}")
    job = str(_latest_job(url).job)
    return run_workers(url, backend, job, items, count, latency_ms, args, server)


def run_workers(
    url: str,
    backend: str,
    job: str,
    items: int,
    count: int,
    latency_ms: float,
    args: argparse.Namespace,
    server: ServerProcess,
) -> Run:
    concurrency = max(1, args.in_flight // count)
    command = batchrunner_command(
        "worker", "--job", job, "--db", url, "--base-url", server.base_url,
        "--concurrency", str(concurrency), "--max-attempts", "3",
    )  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench-local-only"}
    postmaster = _postmaster_pid(url) if backend == POSTGRES else None
    pg_before = _pg_cpu(postmaster) if postmaster else 0.0
    workers = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for _ in range(count)
    ]
    cpu = 0.0
    exits: list[float] = []
    for worker in workers:
        _, status, usage = os.wait4(worker.pid, 0)
        exits.append(time.time())
        worker.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if worker.returncode != 0:
            assert worker.stderr is not None
            raise SystemExit(f"a worker failed: {worker.stderr.read().decode()[-2000:]}")
    pg_cpu = (_pg_cpu(postmaster) - pg_before) if postmaster else None
    commits = _latest_job(url)
    if commits.succeeded != items:
        raise SystemExit(f"{commits.succeeded} of {items} items succeeded")
    first_commit = commits.first.replace(tzinfo=datetime.UTC).timestamp()
    last_commit = commits.last.replace(tzinfo=datetime.UTC).timestamp()
    rate = items / max(last_commit - first_commit, 1e-9)  # the run phase: no start-up
    ideal = (args.in_flight / (latency_ms / 1000)) if latency_ms else None
    return Run(
        backend=backend,
        latency_ms=latency_ms,
        workers=count,
        items=items,
        items_per_s=rate,
        worker_cpu_us=cpu / items * 1e6,
        pg_cpu_us=pg_cpu / items * 1e6 if pg_cpu is not None else None,
        lingered_s=max(exits) - last_commit,
        ideal_share=rate / ideal if ideal else None,
    )


@dataclass
class Commits:
    first: datetime.datetime  # naive UTC, as the ledger keeps times
    last: datetime.datetime
    succeeded: int
    job: int


def _latest_job(url: str) -> Commits:
    """The latest job's first and last commits of a result, and how many of its items
    succeeded."""
    from sqlalchemy import create_engine, func, select

    from batchrunner.ledger.models import items_t, jobs_t

    engine = create_engine(url)
    with engine.connect() as conn:
        job = conn.execute(select(func.max(jobs_t.c.id))).scalar_one()
        first, last, done = conn.execute(
            select(
                func.min(items_t.c.finished_at),
                func.max(items_t.c.finished_at),
                func.count().filter(items_t.c.state == "succeeded"),
            ).where(items_t.c.job_id == job)
        ).one()
    engine.dispose()
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return Commits(first or now, last or now, int(done), int(job))


def _postmaster_pid(url: str) -> int | None:
    """The PostgreSQL server's postmaster, when it runs on this machine (else no PG CPU)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        directory = conn.execute(text("SHOW data_directory")).scalar_one()
    engine.dispose()
    try:
        return int(Path(directory, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pg_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live backends and its reaped ones (cutime/cstime)."""
    total = cpu_seconds(postmaster)
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
            total += cpu_seconds(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


def big_ledger(args: argparse.Namespace, backends: list[str], scratch: Path) -> None:
    """The same job with 2 workers on an empty ledger and beside N finished items."""
    items = args.items
    job_file = write_job_file(scratch / f"job-{items}.jsonl", items)
    rows = []
    with ServerProcess("minimal", {"latency_ms": 0.0}) as server:
        for backend in backends:
            for beside in (0, args.big_ledger):
                with ledger_url(backend, args.pg, scratch) as url:
                    if beside:
                        _finished_job(url, beside)
                    run = one_run(url, backend, job_file, items, 2, 0.0, args, server)
                    took = _status_seconds(url)
                    rows.append((backend, beside, run.items_per_s, run.worker_cpu_us, took))
    print_table(
        ["backend", "finished items beside", "items/s", "worker CPU us/item", "status s"], rows
    )
    for backend in backends:
        empty, big = [r for r in rows if r[0] == backend]
        print(f"{backend}: beside {args.big_ledger:,} finished items the job ran at "
              f"{big[2] / empty[2]:.2f}x the empty ledger's rate (bar: >= 0.90)")  # fmt: skip


def _finished_job(url: str, count: int) -> None:
    """A job of `count` succeeded items, written in bulk (not through a run)."""
    from sqlalchemy import create_engine, text

    from batchrunner.ledger import Ledger

    Ledger(url).close()  # the schema
    engine = create_engine(url)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (name, mode, state, simulated, source_path, source_sha256, "
                "item_count, options, created_at) VALUES ('old', 'concurrent', 'completed', "
                "false, 'old.jsonl', :sha, :count, '{}', :now)"
            ),
            {"sha": "1" * 64, "count": count, "now": now},
        )
        numbers = (
            "SELECT generate_series(1, :count) AS n"
            if conn.dialect.name == "postgresql"
            else "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :count)"
            " SELECT n FROM s"
        )
        conn.execute(
            text(
                "INSERT INTO items (job_id, position, custom_id, url, model, body, state, "
                "attempts, attempts_floor, created_at, updated_at, finished_at, input_tokens, "
                "output_tokens, cost_usd, reused) "
                f"SELECT 1, n, 'old-' || n, '/v1/chat/completions', 'gpt-4o-mini', '{{}}', "
                f"'succeeded', 1, 0, :now, :now, :now, 5, 1, 0.000001, false FROM ({numbers}) AS s"
            ),
            {"count": count, "now": now},
        )
    engine.dispose()


def _status_seconds(url: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        batchrunner_command("status", "--db", url), capture_output=True, timeout=300
    )
    if done.returncode != 0:
        raise SystemExit(f"status failed: {done.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
