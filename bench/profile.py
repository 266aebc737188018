"""Where the end-to-end throughput path spends its time: samples `throughput.py --only c` (the
batchrunner client; `--client a` for the bare aiohttp floor; the server is another process and
is not sampled) with py-spy, every thread, and summarises the samples:

- busy share of each thread (the asyncio loop thread, the AnyIO worker threads that run the
  ledger's SQL), idle frames (waits on locks, epoll) removed;
- self time by package (where the CPU actually burns);
- inclusive time of batchrunner's own functions and of the library calls they make.

    python bench/profile.py [--requests 20000] [--concurrency 128] [--rate 250] [--raw FILE]
    python bench/profile.py --summarise FILE     # an existing `py-spy record -f raw` file

Needs py-spy (pip install py-spy) and permission to ptrace a child (root, or
kernel.yama.ptrace_scope <= 1); without them it says so and exits.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import BENCH_DIR, print_header, temp_dir

IDLE_LEAVES = (
    "Condition.wait ",
    "Event.wait ",
    "EpollSelector.select ",
    "Thread._wait_for_tstate_lock ",
    "sleep ",
)
FRAME = re.compile(r"^(?P<func>.+) \((?P<file>.+?):(?P<line>\d+)\)$")
PACKAGES = re.compile(r"/(?:site|dist)-packages/([^/]+)/")
TOP = 25


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.exists() else None)


def package_of(path: str) -> str:
    """A short owner for a source file: batchrunner/<module>, a package, or the stdlib."""
    if "/batchrunner/" in path:
        return "batchrunner/" + path.split("/batchrunner/", 1)[1]
    found = PACKAGES.search(path)
    if found:
        return found.group(1)
    if path.endswith(("common.py", "throughput.py")):
        return "bench"
    stdlib = re.search(r"/lib/python3\.\d+/(.+)$", path)
    if stdlib:
        top = stdlib.group(1).split("/")[0].removesuffix(".py")
        return f"stdlib {top}"
    return path


def parse(raw: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    """(thread, [(function, file) root first], samples) per stack of a py-spy raw file."""
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        frames = []
        for part in parts[1:]:
            match = FRAME.match(part)
            frames.append((match["func"], match["file"]) if match else (part, "?"))
        thread = re.sub(r"^thread \(\d+\): ", "", parts[0])
        stacks.append((thread, frames, int(count)))
    return stacks


def is_idle(frames: list[tuple[str, str]]) -> bool:
    return bool(frames) and (frames[-1][0] + " ").startswith(IDLE_LEAVES)


def phase_of(thread: str, frames: list[tuple[str, str]]) -> str:
    names = {func for func, _ in frames}
    if "submit_job" in names:
        return "ingest (submit_job: validate + record)"
    if "_find_and_load" in names:
        return "imports"
    if "MainThread" not in thread:
        return "run: other threads (ledger SQL via anyio.to_thread)"
    return "run: the event loop thread"


def summarise(raw: Path) -> None:
    stacks = parse(raw)
    total = sum(n for _, _, n in stacks)
    busy = [(t, f, n) for t, f, n in stacks if not is_idle(f)]
    busy_total = sum(n for _, _, n in busy)
    threads: Counter[str] = Counter()
    thread_all: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    library_calls: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    own_functions: Counter[str] = Counter()
    for thread, _frames, n in stacks:
        thread_all[thread] += n
    for thread, frames, n in busy:
        threads[thread] += n
        if frames:
            function, path = frames[-1]
            own[package_of(path)] += n
            own_functions[f"{function} ({package_of(path)})"] += n
        phases[phase_of(thread, frames)] += n
        seen: set[str] = set()
        for index, (func, path) in enumerate(frames):
            if "/batchrunner/" in path:
                key = f"{func} ({package_of(path)})"
                if key not in seen:
                    inclusive[key] += n
                    seen.add(key)
                below = frames[index + 1] if index + 1 < len(frames) else None
                if below is not None and "/batchrunner/" not in below[1]:
                    call = f"{func} -> {below[0]} ({package_of(below[1])})"
                    if call not in seen:
                        library_calls[call] += n
                        seen.add(call)
    print(f"{total:,} samples, {busy_total:,} busy ({busy_total / total:.0%}); shares below are")
    print("of busy samples. Threads (busy / all samples):")
    for thread, n in threads.most_common():
        print(f"   {n / busy_total:6.1%}  {thread}  ({n:,} of {thread_all[thread]:,})")
    for title, counter, top in (
        ("Phases:", phases, None),
        ("Self time by package or module (where the CPU burns):", own, TOP),
        ("Self time by function:", own_functions, TOP),
        ("Inclusive time of batchrunner functions:", inclusive, TOP),
        ("Library calls made by batchrunner code (inclusive):", library_calls, TOP),
    ):
        print(title)
        for name, n in counter.most_common(top):
            print(f"   {n / busy_total:6.1%}  {name}")


def record(args: argparse.Namespace, raw: Path) -> bool:
    tool = py_spy()
    if tool is None:
        print("py-spy is not installed: pip install py-spy (nothing profiled)")
        return False
    command = [
        tool,
        "record",
        "--format",
        "raw",
        "--threads",
        "--full-filenames",
        *(["--gil"] if args.gil else []),
        "--rate",
        str(args.rate),
        "-o",
        str(raw),
        "--",
        sys.executable,
        str(BENCH_DIR / "throughput.py"),
        "--only",
        args.client,
        "--requests",
        str(args.requests),
        "--concurrency",
        str(args.concurrency),
    ]
    result = subprocess.run(command, check=False, timeout=args.time_limit)
    if result.returncode != 0 or not raw.exists():
        print(f"py-spy failed (exit {result.returncode}); it needs permission to ptrace")
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--client", default="c", help="which throughput.py client (a, b, b2, c)")
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (CPU in Python)"
    )
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    parser.add_argument("--summarise", type=Path, help="only summarise this raw file")
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="2,000 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 2_000)
    if args.summarise:
        summarise(args.summarise)
        return
    print_header(f"profile of throughput.py --only {args.client}")
    with temp_dir() as folder:
        raw = args.raw or folder / "profile.txt"
        if record(args, raw):
            print()
            summarise(raw)


if __name__ == "__main__":
    main()
