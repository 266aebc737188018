"""Ingest: `batchrunner submit FILE --detach` on job files of 100,000 and 1,000,000 lines, in a
child process: lines/s and that child's peak RSS; then `batchrunner status` on the big job.

Targets: >= 50,000 lines/s; peak RSS <= 300 MB at 1M lines and within 20% of the 100k figure;
`status` < 1 s. The baseline measured in the same run is a child that only reads the file and
parses every line with orjson (what any ingest must at least do), and `batchrunner --help` for
the start-up cost of the CLI.

Tables (issue 16): at each size, the same requests from a Parquet file of as many rows (columns
`id` and `row`, row groups of 50,000) through `submit --prompt 'question number {{ row }}'
--id-column id`, right after the JSONL file: rows/s within 20% of the JSONL lines/s, peak RSS
<= 300 MB. `--no-parquet` leaves it out.

    python bench/ingest.py [--lines 100000,1000000] [--quick] [--keep] [--no-parquet]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common import (
    MODEL,
    ChildRun,
    batchrunner_command,
    median,
    mib,
    print_header,
    print_table,
    require_ok,
    run_child,
    sqlite_url,
    temp_dir,
    verdict,
    write_job_file,
)

TARGET_LINES_PER_S = 50_000
TARGET_RSS_MB = 300
TARGET_RSS_GROWTH = 1.2
TARGET_STATUS_S = 1.0
TARGET_TABLE_RATIO = 0.8  # a Parquet table's rows/s against the JSONL file's lines/s
PARQUET_ROW_GROUP = 50_000
TABLE_PROMPT = "question number {{ row }}"  # the same bodies as the job file's lines
PARSE_ONLY = (
    "import sys, orjson\n"
    "n = 0\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    for line in f:\n"
    "        orjson.loads(line); n += 1\n"
)


def parse_only(path: Path, folder: Path, limit: float) -> ChildRun:
    child = run_child([sys.executable, "-c", PARSE_ONLY, str(path)], limit, folder)
    require_ok("the parse-only baseline", child)
    return child


def ingest(path: Path, db: Path, folder: Path, limit: float) -> ChildRun:
    command = batchrunner_command("submit", str(path), "--detach", "--db", sqlite_url(db))
    child = run_child(command, limit, folder)
    require_ok("batchrunner submit --detach", child)
    return child


def write_parquet_file(path: Path, count: int) -> Path:
    """The job file's requests as a table: the id column and the row the prompt names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("row", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, PARQUET_ROW_GROUP):
            rows = range(start, min(count, start + PARQUET_ROW_GROUP))
            ids = pa.array([f"item-{i}" for i in rows], pa.string())
            writer.write_table(pa.table([ids, pa.array(rows, pa.int64())], schema=schema))
    return path


def ingest_table(path: Path, db: Path, folder: Path, limit: float) -> ChildRun:
    command = batchrunner_command(
        "submit",
        str(path),
        "--prompt",
        TABLE_PROMPT,
        "--id-column",
        "id",
        "--model",
        MODEL,
        "--detach",
        "--db",
        sqlite_url(db),
    )
    child = run_child(command, limit, folder)
    require_ok("batchrunner submit table.parquet --prompt --detach", child)
    return child


def time_status(db: Path, folder: Path, limit: float, repeats: int = 3) -> dict[str, float]:
    """Median wall time of `status`, `status --json` and `--help` (CLI start-up) children, and
    of the in-process Ledger.summary() query."""
    from batchrunner.ledger import Ledger

    url = sqlite_url(db)
    commands = {
        "batchrunner --help (start-up baseline)": batchrunner_command("--help"),
        "batchrunner status": batchrunner_command("status", "--db", url),
        "batchrunner status --json": batchrunner_command("status", "--json", "--db", url),
    }
    times: dict[str, float] = {}
    for name, command in commands.items():
        runs = []
        for _ in range(repeats):
            child = run_child(command, limit, folder)
            require_ok(name, child)
            runs.append(child.seconds)
        times[name] = median(runs)
    ledger = Ledger(url)
    job = ledger.find_job()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        ledger.summary(job)
        runs.append(time.perf_counter() - started)
    ledger.close()
    times["Ledger.summary() in process"] = median(runs)
    return times


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lines",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100_000, 1_000_000],
        help="comma-separated job sizes; the first is the RSS reference, the last gets status",
    )
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per child")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--quick", action="store_true", help="10k and 50k lines")
    parser.add_argument("--no-parquet", action="store_true", help="leave the tables out")
    args = parser.parse_args(argv)
    if args.quick:
        args.lines = [10_000, 50_000]
        args.time_limit = min(args.time_limit, 60.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_header("ingest")
    with temp_dir() as folder:
        start_up = run_child(batchrunner_command("--help"), args.time_limit, folder).seconds
    rows = []
    peaks: dict[int, float] = {}
    rates: dict[int, float] = {}
    table_rows = []
    table_peaks: dict[int, float] = {}
    table_rates: dict[int, float] = {}
    with temp_dir(args.keep) as folder:
        print(f"   scratch folder {folder}")
        db = folder / "missing.db"
        for lines in args.lines:
            path = write_job_file(folder / f"job-{lines}.jsonl", lines)
            size = path.stat().st_size
            baseline = parse_only(path, folder, args.time_limit)
            db = folder / f"ledger-{lines}.db"
            child = ingest(path, db, folder, args.time_limit)
            rate, base_rate = lines / child.seconds, lines / baseline.seconds
            peaks[lines], rates[lines] = mib(child.peak_rss), rate
            db_size = sum(p.stat().st_size for p in folder.glob(f"ledger-{lines}.db*"))
            rows.append(
                [
                    f"{lines:,} lines ({mib(size):.0f} MiB file)",
                    child.seconds,
                    rate,
                    mib(child.peak_rss),
                    base_rate,
                    mib(baseline.peak_rss),
                    rate / base_rate,
                    lines / max(child.seconds - start_up, 1e-3),
                    mib(db_size),
                ]
            )
            print(f"   {lines:,} lines: {child.seconds:.1f} s, {rate:,.0f} lines/s", flush=True)
            os.unlink(path)
            if not args.no_parquet:
                table = write_parquet_file(folder / f"table-{lines}.parquet", lines)
                table_db = folder / f"table-ledger-{lines}.db"
                table_child = ingest_table(table, table_db, folder, args.time_limit)
                table_rate = lines / table_child.seconds
                table_peaks[lines], table_rates[lines] = mib(table_child.peak_rss), table_rate
                table_rows.append(
                    [
                        f"{lines:,} rows ({mib(table.stat().st_size):.1f} MiB Parquet)",
                        table_child.seconds,
                        table_rate,
                        mib(table_child.peak_rss),
                        rate,
                        table_rate / rate,
                    ]
                )
                print(
                    f"   {lines:,} Parquet rows: {table_child.seconds:.1f} s, "
                    f"{table_rate:,.0f} rows/s",
                    flush=True,
                )
                os.unlink(table)
                for leftover in folder.glob(f"table-ledger-{lines}.db*"):
                    os.unlink(leftover)
        print()
        print_table(
            [
                "submit --detach",
                "seconds",
                "lines/s",
                "peak RSS MiB",
                "parse-only lines/s",
                "parse-only RSS MiB",
                "vs parse-only",
                "lines/s excl. start-up",
                "ledger MiB",
            ],
            rows,
        )
        if table_rows:
            print()
            print_table(
                [
                    "submit table --prompt",
                    "seconds",
                    "rows/s",
                    "peak RSS MiB",
                    "JSONL lines/s (same size, just before)",
                    "vs JSONL",
                ],
                table_rows,
            )
        statuses = time_status(db, folder, args.time_limit)
    print()
    print(f"status on the {args.lines[-1]:,}-item job (median of 3):")
    print_table(["command", "seconds"], [[k, v] for k, v in statuses.items()])
    print()
    small, big = args.lines[0], args.lines[-1]
    growth = peaks[big] / peaks[small]
    print(f"targets (CLI start-up, `batchrunner --help`, takes {start_up:.2f} s of every run):")
    for lines in (small, big):
        print(
            f"   ingest of {lines:,} lines {rates[lines]:,.0f} lines/s >= "
            f"{TARGET_LINES_PER_S:,}: {verdict(rates[lines] >= TARGET_LINES_PER_S)}"
        )
    print(
        f"   peak RSS at {big:,} lines {peaks[big]:.0f} MiB <= {TARGET_RSS_MB} MB: "
        f"{verdict(peaks[big] * 1.048576 <= TARGET_RSS_MB)}"
    )
    print(
        f"   peak RSS {big:,} / {small:,} lines = {growth:.2f} <= {TARGET_RSS_GROWTH}: "
        f"{verdict(growth <= TARGET_RSS_GROWTH)}"
    )
    for lines in table_rates:
        ratio = table_rates[lines] / rates[lines]
        print(
            f"   Parquet table of {lines:,} rows {table_rates[lines]:,.0f} rows/s = {ratio:.2f} "
            f"of JSONL >= {TARGET_TABLE_RATIO}: {verdict(ratio >= TARGET_TABLE_RATIO)}; peak RSS "
            f"{table_peaks[lines]:.0f} MiB <= {TARGET_RSS_MB} MB: "
            f"{verdict(table_peaks[lines] * 1.048576 <= TARGET_RSS_MB)}"
        )
    status_s = statuses["batchrunner status"]
    print(
        f"   batchrunner status {status_s:.2f} s < {TARGET_STATUS_S} s: "
        f"{verdict(status_s < TARGET_STATUS_S)}"
    )


if __name__ == "__main__":
    main()
