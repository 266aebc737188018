"""Export: `batchrunner export results` of a job whose items all succeeded, 100,000 and
1,000,000 of them, in a child process: lines/s and that child's peak RSS, as JSONL and CSV.

The ledger is filled directly (running 1M requests just to get there would take minutes):
Ledger.create_job records the items, then one SQL UPDATE marks them succeeded with a
chat.completion body (about 500 bytes, the fake server's shape) and usage. The baseline,
measured in the same run, is a child that reads the same rows with plain sqlite3 and writes
`custom_id<TAB>response` lines: the floor for reading a ledger of this size.

    python bench/export.py [--lines 100000,1000000] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from common import (
    MODEL,
    ChildRun,
    batchrunner_command,
    chat_request,
    import_attr,
    mib,
    print_header,
    print_table,
    require_ok,
    run_child,
    sqlite_url,
    temp_dir,
)

RESPONSE_TEMPLATE = orjson.dumps(
    {
        "id": "chatcmpl-@ID@",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "system_fingerprint": "fp_fake007",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "@TEXT@", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 7,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
    }
).decode()
SUCCEED_ALL = """
UPDATE items SET
    state = 'succeeded', attempts = 1, http_status = 200, finish_reason = 'stop',
    input_tokens = 5, cached_tokens = 0, output_tokens = 7, reasoning_tokens = 0,
    cost_usd = 0.0000050, latency_ms = 12.5,
    response = replace(replace(:template, '@ID@', printf('%024d', id)),
                       '@TEXT@', 'echo: question number ' || (position - 1)),
    updated_at = :now, finished_at = :now
WHERE job_id = :job
"""
BASELINE = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1])\n"
    "with open(sys.argv[2], 'w') as out:\n"
    "    for cid, response in db.execute(\n"
    "        'SELECT custom_id, response FROM items WHERE job_id = ? ORDER BY position',\n"
    "        (int(sys.argv[3]),)):\n"
    "        out.write(cid + '\\t' + response + '\\n')\n"
)


def make_ledger(db: Path, lines: int) -> int:
    """A job of `lines` succeeded items, through the Ledger API plus one UPDATE."""
    from sqlalchemy import text

    from batchrunner.ledger import Ledger
    from batchrunner.settings import RunSettings

    # batchrunner.items since the refactor of issue 13, batchrunner.jobfile before (034d182).
    job_item = import_attr("JobItem", "batchrunner.items", "batchrunner.jobfile")
    utcnow = import_attr("utcnow", "batchrunner.ledger.records", "batchrunner.ledger.store")

    def items() -> Iterator[Any]:
        for index in range(lines):
            yield job_item(
                position=index + 1,
                custom_id=f"item-{index}",
                url="/v1/chat/completions",
                body=orjson.dumps(chat_request(index)),
                extra=orjson.dumps({"metadata": {"row": index}}),
                model=MODEL,
            )

    ledger = Ledger(sqlite_url(db))
    job = ledger.create_job(
        name=f"export-{lines}",
        mode="concurrent",
        source_path="generated",
        source_sha256="0" * 64,
        options=RunSettings().stored(),
        simulated=False,
        items=items(),
    )
    with ledger.engine.begin() as conn:
        conn.execute(
            text(SUCCEED_ALL), {"template": RESPONSE_TEMPLATE, "now": utcnow(), "job": job}
        )
        conn.execute(text("UPDATE jobs SET state = 'completed' WHERE id = :job"), {"job": job})
    counts = ledger.summary(job).counts
    ledger.close()
    if counts != {"succeeded": lines}:
        raise SystemExit(f"the generated ledger is not what was meant: {counts}")
    return int(job)


def export(db: Path, job: int, out: Path, fmt: str, folder: Path, limit: float) -> ChildRun:
    command = batchrunner_command(
        "export", "results", "--job", str(job), "-o", str(out), "--format", fmt
    )
    child = run_child([*command, "--db", sqlite_url(db)], limit, folder)
    require_ok(f"batchrunner export results --format {fmt}", child)
    return child


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lines",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100_000, 1_000_000],
        help="comma-separated job sizes; the first is the RSS reference",
    )
    parser.add_argument("--formats", default="jsonl,csv")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per child")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--quick", action="store_true", help="10k and 50k items")
    args = parser.parse_args(argv)
    if args.quick:
        args.lines = [10_000, 50_000]
        args.time_limit = min(args.time_limit, 60.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_header("export")
    formats = args.formats.split(",")
    rows = []
    peaks: dict[tuple[str, int], float] = {}
    with temp_dir(args.keep) as folder:
        print(f"   scratch folder {folder}")
        start_up = run_child(batchrunner_command("--help"), args.time_limit, folder).seconds
        for lines in args.lines:
            db = folder / f"ledger-{lines}.db"
            started = time.perf_counter()
            job = make_ledger(db, lines)
            print(
                f"   ledger of {lines:,} succeeded items made in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            out = folder / "baseline.tsv"
            baseline = run_child(
                [sys.executable, "-c", BASELINE, str(db), str(out), str(job)],
                args.time_limit,
                folder,
            )
            require_ok("the sqlite3 baseline", baseline)
            base_rate = lines / baseline.seconds
            out.unlink()
            rows.append(
                [
                    f"{lines:,}",
                    "sqlite3 baseline",
                    baseline.seconds,
                    base_rate,
                    None,
                    mib(baseline.peak_rss),
                    None,
                    1.0,
                ]
            )
            for fmt in formats:
                out = folder / f"results.{fmt}"
                child = export(db, job, out, fmt, folder, args.time_limit)
                written = count_lines(out) - (1 if fmt == "csv" else 0)
                if written != lines:
                    raise SystemExit(f"export wrote {written:,} records, expected {lines:,}")
                rate = lines / child.seconds
                peaks[(fmt, lines)] = mib(child.peak_rss)
                rows.append(
                    [
                        f"{lines:,}",
                        f"export results --format {fmt}",
                        child.seconds,
                        rate,
                        lines / max(child.seconds - start_up, 1e-3),
                        mib(child.peak_rss),
                        mib(out.stat().st_size),
                        rate / base_rate,
                    ]
                )
                print(
                    f"   {fmt}: {child.seconds:.1f} s, {rate:,.0f} lines/s, "
                    f"peak RSS {mib(child.peak_rss):.0f} MiB",
                    flush=True,
                )
                out.unlink()
            for path in folder.glob(f"ledger-{lines}.db*"):
                path.unlink()
    print()
    print_table(
        [
            "items",
            "what",
            "seconds",
            "lines/s",
            "lines/s excl. start-up",
            "peak RSS MiB",
            "output MiB",
            "vs baseline",
        ],
        rows,
    )
    small, big = args.lines[0], args.lines[-1]
    print(f"CLI start-up (`batchrunner --help`): {start_up:.2f} s")
    for fmt in formats:
        growth = peaks[(fmt, big)] / peaks[(fmt, small)]
        print(f"peak RSS {fmt} {big:,} / {small:,} items = {growth:.2f} (streaming: ~1.0)")


if __name__ == "__main__":
    main()
