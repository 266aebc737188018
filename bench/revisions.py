"""Two revisions of batchrunner side by side in one session (issue 13): does the head regress
against the base beyond the noise of this machine?

    python bench/revisions.py --base REV --head REV [--rounds 3] [--quick]
        [--requests 20000] [--concurrency 128]                  # throughput.py's sizes
        [--latency-requests 5000] [--latency-concurrency 500]   # latency.py's sizes
        [--measure throughput,latency] [-v]

REV is anything `git rev-parse` takes (HEAD, HEAD~1, 034d182, a branch) or the literal WORKTREE:
this checkout as it is on disk (tracked files with their uncommitted changes, plus untracked
files that are not ignored), copied once at the start, so edits made while measuring do not
reach the measurement.

How it measures:

- Each revision is exported to its own temporary folder (`git archive REV | tar -x`, as
  README.md's "Measuring a fixed revision" does; WORKTREE is copied) with a REVISION file.
- Every measurement is a child process running this checkout's bench scripts (throughput.py,
  latency.py, with --json) with PYTHONPATH set to that folder and its cwd in a scratch folder
  outside the checkout, so it imports that revision's batchrunner. Each child reports
  `batchrunner.__file__`; the comparison stops unless it lies in the revision's folder.
- Each round runs throughput.py's client c (batchrunner end to end: submit + run, zero-latency
  server) for one revision, then the bare client a3 (pyreqwest + orjson on uvloop, no
  batchrunner: the floor of batchrunner's own transport and loop), then c for the other
  revision, then latency.py's batchrunner (200 ms server) for one revision and then the other.
  The revision that goes first alternates: base in odd rounds, head in even ones, so a drift
  in the machine's speed during the session hits both alike.

Figures, all higher-is-better: throughput c end to end and run phase (items/s), the same divided
by that round's a3 (c/a3), and latency end to end and run phase (share of the ideal rate
concurrency / latency).

Noise, plainly: for each figure the base's rounds give a noise band, from its slowest round
divided by its median to its fastest round divided by its median (e.g. 0.96..1.03). head/base
is the head's median divided by the base's median.

- head/base at or above the band's low end (the head's median is no slower than the base's
  slowest round): "no regression beyond noise";
- head/base below the band's low end: "REGRESSION beyond noise";
- head/base above the band's high end: "faster beyond noise" (no regression either).

With one round there is no band and no verdict. The rule is strict with few rounds: two
identical revisions get "REGRESSION beyond noise" in a given figure about 30% of the time with 2
rounds, 20% with 3, 8% with 5 and 3.5% with 7 (when every round is an independent draw of the
same noise). So the table also says whether the base's and the head's min..max ranges overlap;
use --rounds 5 or more for a record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from common import BENCH_DIR, REPO_DIR, machine_summary, median

WORKTREE = "WORKTREE"
MEASUREMENTS = ("throughput", "latency")
GRACE_S = 120.0  # a child gets its own time limit plus this, then it is killed
GIT_TIMEOUT_S = 120.0


# -- revisions in their own folders -------------------------------------------------------------


@dataclass
class Revision:
    role: str  # "base" or "head"
    spec: str  # as asked: a git revision or WORKTREE
    label: str  # what was measured, also written to REVISION
    folder: Path
    origin: str = ""  # batchrunner.__file__ as a child reported it


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_DIR), *args],
        capture_output=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        command = " ".join(["git", *args])
        raise SystemExit(f"{command} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def export(role: str, spec: str, folder: Path) -> Revision:
    """`spec` exported to `folder` (created), with a REVISION file naming it."""
    folder.mkdir(parents=True)
    if spec == WORKTREE:
        described = git("describe", "--always", "--dirty").strip()
        copied = copy_worktree(folder)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        label = f"WORKTREE ({described}, {copied} files copied at {stamp})"
    else:
        sha = git("rev-parse", "--verify", f"{spec}^{{commit}}").strip()
        short = git("rev-parse", "--short", sha).strip()
        archive = folder.with_name(f"{folder.name}.tar")
        git("archive", "--format=tar", "-o", str(archive), sha)
        subprocess.run(
            ["tar", "-x", "-f", str(archive), "-C", str(folder)],
            check=True,
            timeout=GIT_TIMEOUT_S,
        )
        archive.unlink()
        label = short if spec.lower() in (short.lower(), sha.lower()) else f"{short} ({spec})"
    (folder / "REVISION").write_text(label + "\n")
    return Revision(role, spec, label, folder)


def copy_worktree(folder: Path) -> int:
    """The files git would see in this checkout, as they are on disk: tracked ones (skipping any
    deleted) and untracked ones that are not ignored. Returns how many were copied."""
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    copied = 0
    for name in sorted({n for n in names if n}):
        source = REPO_DIR / name
        if not source.is_file() and not source.is_symlink():
            continue  # deleted in the working tree
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
        copied += 1
    if not (folder / "batchrunner" / "__init__.py").is_file():
        raise SystemExit("the working tree has no batchrunner/__init__.py")
    return copied


# -- children -----------------------------------------------------------------------------------


@dataclass
class Session:
    scratch: Path  # the children's cwd and TMPDIR, outside the checkout
    verbose: bool

    def env(self, revision: Revision) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("OPENAI_API_KEY", None)
        env["PYTHONPATH"] = str(revision.folder)  # only this revision, nothing inherited
        env["TMPDIR"] = str(self.scratch)  # whatever a killed child leaves is removed with it
        return env

    def run(self, revision: Revision, command: Sequence[str], timeout: float) -> str:
        """`command` (after the interpreter) in a child importing `revision`; its stdout."""
        try:
            done = subprocess.run(
                [sys.executable, *command],
                cwd=self.scratch,
                env=self.env(revision),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SystemExit(
                f"{revision.role} ({revision.label}): {' '.join(command)} was killed after "
                f"{timeout:.0f} s"
            ) from exc
        if self.verbose and done.returncode == 0 and done.stderr.strip():
            print("      | " + done.stderr.rstrip().replace("\n", "\n      | "), flush=True)
        if done.returncode != 0:
            raise SystemExit(
                f"{revision.role} ({revision.label}): {' '.join(command)} failed "
                f"(exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def script(
        self, revision: Revision, name: str, args: Sequence[str], timeout: float
    ) -> dict[str, Any]:
        """One bench script with --json; its figures, after checking which batchrunner ran."""
        command = [str(BENCH_DIR / name), *args, "--json"]
        lines = self.run(revision, command, timeout).strip().splitlines()
        try:
            figures = cast(dict[str, Any], json.loads(lines[-1]))
        except (IndexError, ValueError) as exc:
            raise SystemExit(f"{name} printed no JSON figures: {lines[-3:]!r}") from exc
        check_origin(revision, figures["batchrunner"]["file"])
        return figures

    def smoke(self, revision: Revision) -> None:
        """Fail early if the revision does not import, and record where it imports from."""
        code = "import batchrunner, batchrunner.commands; print(batchrunner.__file__)"
        revision.origin = self.run(revision, ["-c", code], 60).strip().splitlines()[-1]
        check_origin(revision, revision.origin)


def check_origin(revision: Revision, file: str) -> None:
    if not Path(file).resolve().is_relative_to(revision.folder.resolve()):
        raise SystemExit(
            f"{revision.role}: the child imported batchrunner from {file}, not from "
            f"{revision.folder}: the measurement would not be of {revision.label}"
        )


# -- the figures and the verdict ------------------------------------------------------------------


@dataclass
class Figure:
    """One higher-is-better figure, one value per round for each revision."""

    name: str
    kind: str  # "rate" (items/s), "ratio" or "share" (of the ideal)
    base: list[float]
    head: list[float]

    def show(self, value: float) -> str:
        if self.kind == "rate":
            return f"{value:,.0f}"
        if self.kind == "share":
            return f"{value:.1%}"
        return f"{value:.3f}"

    def spread(self, values: list[float]) -> str:
        return f"{self.show(min(values))}..{self.show(max(values))}"

    @property
    def ratio(self) -> float:
        return median(self.head) / median(self.base)

    @property
    def band(self) -> tuple[float, float]:
        middle = median(self.base)
        return min(self.base) / middle, max(self.base) / middle

    @property
    def verdict(self) -> str:
        if len(self.base) < 2:
            return "no verdict (1 round: no spread)"
        low, high = self.band
        if self.ratio < low:
            return "REGRESSION beyond noise"
        if self.ratio > high:
            return "faster beyond noise"
        return "no regression beyond noise"

    @property
    def overlap(self) -> bool:
        return max(self.head) >= min(self.base) and max(self.base) >= min(self.head)

    def row(self) -> list[str]:
        low, high = self.band
        return [
            self.name,
            self.show(median(self.base)),
            self.show(median(self.head)),
            f"{self.ratio:.3f}",
            " ".join(f"{h / b:.2f}" for b, h in zip(self.base, self.head, strict=True)),
            self.spread(self.base),
            self.spread(self.head),
            f"{low:.3f}..{high:.3f}",
            "-" if len(self.base) < 2 else "yes" if self.overlap else "no",
            self.verdict,
        ]


HEADERS = (
    "figure",
    "base median",
    "head median",
    "head/base",
    "each round h/b",
    "base rounds",
    "head rounds",
    "noise band",
    "overlap",
    "verdict",
)
LEFT = {0, 9}  # left-aligned columns; the numbers are right-aligned


def print_figures(figures: list[Figure]) -> None:
    rows = [f.row() for f in figures]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i in LEFT else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print(line(HEADERS))
    for row in rows:
        print(line(row))


FALSE_ALARM = {2: "30%", 3: "20%", 4: "12%", 5: "8%", 6: "5%", 7: "3.5%"}


def print_verdict(figures: list[Figure], rounds: int) -> None:
    print()
    print("noise band: the base's slowest round / its median .. its fastest round / its median")
    print("head/base: the head's median / the base's median (each round h/b: within one round)")
    print(
        "no regression beyond noise: head/base >= the band's low end, i.e. the head's median is "
        "no slower than the base's slowest round"
    )
    print("overlap: whether the base's and the head's min..max ranges overlap")
    if rounds < 2:
        print("verdict: none (1 round gives no spread; use --rounds 2 or more, 5 for a record)")
        return
    regressed = [f for f in figures if f.verdict.startswith("REGRESSION")]
    if not regressed:
        print(f"verdict: no regression beyond noise in any of the {len(figures)} figures")
        return
    names = ", ".join(f"{f.name} ({f.ratio:.3f})" for f in regressed)
    print(f"verdict: REGRESSION beyond noise in {names}")
    if all(f.overlap for f in regressed):
        chance = FALSE_ALARM.get(rounds, "under 3.5%" if rounds > 7 else "?")
        print(
            f"   but the base's and the head's ranges overlap there: with {rounds} rounds two "
            f"identical revisions get this verdict in a figure about {chance} of the time; "
            "re-run with more --rounds (5 or more) before believing it"
        )


# -- the session ----------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    measure: list[str]
    throughput_args: list[str]
    latency_args: list[str]
    throughput_timeout: float
    latency_timeout: float


def plan_from(args: argparse.Namespace) -> Plan:
    requests, latency_requests = args.requests, args.latency_requests
    throughput_limit, latency_limit = 300.0, 120.0  # the scripts' own defaults
    if args.quick:  # as the scripts' own --quick
        requests, latency_requests = min(requests, 2_000), min(latency_requests, 2_000)
        throughput_limit = latency_limit = 30.0
    one_round = ["--rounds", "1"]
    return Plan(
        rounds=args.rounds,
        measure=args.measure,
        throughput_args=[
            *one_round,
            *("--requests", str(requests), "--concurrency", str(args.concurrency)),
            *("--time-limit", str(throughput_limit)),
        ],
        latency_args=[
            *one_round,
            *("--requests", str(latency_requests)),
            *("--concurrency", str(args.latency_concurrency)),
            *("--time-limit", str(latency_limit), "--only", "c"),
        ],
        throughput_timeout=throughput_limit + GRACE_S,
        latency_timeout=latency_limit + GRACE_S,
    )


@dataclass
class Results:
    """Per revision role ("base", "head") and per round."""

    c_e2e: dict[str, list[float]]
    c_run: dict[str, list[float]]
    a3: list[float]
    lat_e2e: dict[str, list[float]]
    lat_run: dict[str, list[float]]
    throughput_info: dict[str, Any]
    latency_info: dict[str, Any]

    @classmethod
    def empty(cls) -> Results:
        return cls(
            {"base": [], "head": []},
            {"base": [], "head": []},
            [],
            {"base": [], "head": []},
            {"base": [], "head": []},
            {},
            {},
        )


def measure_session(session: Session, plan: Plan, base: Revision, head: Revision) -> Results:
    results = Results.empty()
    for round_number in range(1, plan.rounds + 1):
        first, second = (base, head) if round_number % 2 else (head, base)
        prefix = f"   round {round_number}/{plan.rounds}"
        if "throughput" in plan.measure:
            for step, revision in enumerate((first, base, second)):
                bare = step == 1  # a3 between the two c runs, with the base's folder on the path
                only = "a3" if bare else "c"
                args = [*plan.throughput_args, "--only", only]
                started = time.perf_counter()
                figures = session.script(revision, "throughput.py", args, plan.throughput_timeout)
                took = time.perf_counter() - started
                client = figures["clients"][only]
                results.throughput_info = figures
                if bare:
                    results.a3.append(client["rates"][0])
                    print(
                        f"{prefix}  throughput a3 (bare)  {client['rates'][0]:>9,.0f} items/s"
                        f"{'':>26}({took:.1f} s)",
                        flush=True,
                    )
                    continue
                results.c_e2e[revision.role].append(client["rates"][0])
                results.c_run[revision.role].append(client["run_rates"][0])
                print(
                    f"{prefix}  throughput c  {revision.role}  e2e {client['rates'][0]:>7,.0f} "
                    f"items/s, run {client['run_rates'][0]:>7,.0f} items/s  ({took:.1f} s)",
                    flush=True,
                )
        if "latency" in plan.measure:
            for revision in (first, second):
                started = time.perf_counter()
                figures = session.script(
                    revision, "latency.py", plan.latency_args, plan.latency_timeout
                )
                took = time.perf_counter() - started
                ideal = float(figures["ideal"])
                client = figures["clients"]["c"]
                e2e, run = client["rates"][0] / ideal, client["run_rates"][0] / ideal
                results.lat_e2e[revision.role].append(e2e)
                results.lat_run[revision.role].append(run)
                results.latency_info = figures
                print(
                    f"{prefix}  latency c     {revision.role}  e2e {e2e:>7.1%} of ideal, run "
                    f"{run:>7.1%} of ideal  ({took:.1f} s)",
                    flush=True,
                )
    return results


def report(results: Results, plan: Plan) -> None:
    figures: list[Figure] = []
    if "throughput" in plan.measure:
        info = results.throughput_info
        print()
        print(
            f"throughput.py: {info['requests']:,} requests at concurrency {info['concurrency']}, "
            f"zero-latency {info['server']} server; a3 (bare pyreqwest) each round: "
            + " ".join(f"{r:,.0f}" for r in results.a3)
            + " items/s"
        )
        rows = [
            Figure("c end to end, items/s", "rate", results.c_e2e["base"], results.c_e2e["head"]),
            Figure("c run phase, items/s", "rate", results.c_run["base"], results.c_run["head"]),
        ]
        for name, values in (("c/a3 end to end", results.c_e2e), ("c/a3 run", results.c_run)):
            per_round = {
                role: [v / a for v, a in zip(values[role], results.a3, strict=True)]
                for role in ("base", "head")
            }
            rows.append(Figure(name, "ratio", per_round["base"], per_round["head"]))
        print_figures(rows)
        figures += rows
    if "latency" in plan.measure:
        info = results.latency_info
        print()
        print(
            f"latency.py: {info['requests']:,} requests at concurrency {info['concurrency']}, "
            f"{info['server']} server answering after {info['latency_ms']:.0f} ms: ideal "
            f"{info['ideal']:,.0f} items/s"
        )
        rows = [
            Figure(
                "end to end, of ideal", "share", results.lat_e2e["base"], results.lat_e2e["head"]
            ),
            Figure(
                "run phase, of ideal", "share", results.lat_run["base"], results.lat_run["head"]
            ),
        ]
        print_figures(rows)
        figures += rows
    print_verdict(figures, plan.rounds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help=f"a git revision or {WORKTREE}")
    parser.add_argument("--head", required=True, help=f"a git revision or {WORKTREE}")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (1-50)")
    parser.add_argument("--quick", action="store_true", help="2,000 requests per measurement")
    parser.add_argument("--requests", type=int, default=20_000, help="throughput.py's")
    parser.add_argument("--concurrency", type=int, default=128, help="throughput.py's")
    parser.add_argument("--latency-requests", type=int, default=5_000)
    parser.add_argument("--latency-concurrency", type=int, default=500)
    parser.add_argument(
        "--measure",
        type=lambda s: [m.strip() for m in s.split(",")],
        default=list(MEASUREMENTS),
        help="comma-separated subset of throughput,latency",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the children's reports")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be 1 to 50")
    if not args.measure or set(args.measure) - set(MEASUREMENTS):
        parser.error(f"--measure takes a subset of {','.join(MEASUREMENTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = plan_from(args)
    with tempfile.TemporaryDirectory(prefix="batchrunner-revisions-") as temp:
        root = Path(temp).resolve()
        if root.is_relative_to(REPO_DIR.resolve()):
            raise SystemExit(f"the temp folder {root} is inside the checkout; set TMPDIR")
        scratch = root / "scratch"
        scratch.mkdir()
        print(f"== revisions: base {args.base} vs head {args.head}, {args.rounds} round(s)")
        print(f"   {machine_summary()}")
        base = export("base", args.base, root / "base")
        head = export("head", args.head, root / "head")
        session = Session(scratch, args.verbose)
        for revision in (base, head):
            session.smoke(revision)
            print(f"   {revision.role}: {revision.label}, batchrunner from {revision.origin}")
        order = []
        if "throughput" in plan.measure:
            order.append("throughput c, a3 (bare), throughput c")
        if "latency" in plan.measure:
            order.append("latency c, latency c")
        print(
            f"   each round: {', '.join(order)}; base first in odd rounds, head first in even; "
            "every child checks it imported its revision's batchrunner",
            flush=True,
        )
        results = measure_session(session, plan, base, head)
        report(results, plan)


if __name__ == "__main__":
    main()
