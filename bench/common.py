"""Shared pieces of the benchmarks: local servers in their own process, the clients under test,
child processes measured for time and peak RSS, job files, and result tables.

Everything here talks to 127.0.0.1 only. Each idea lives once: the benchmark scripts compose
these helpers and add only their own scenario.

Run as a script it serves (used by `ServerProcess`, not by hand):

    python bench/common.py serve minimal            # canned chat.completion, no work at all
    python bench/common.py serve fake '{"latency_ms": 200}'   # batchrunner's FakeServer
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LOCALHOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
BENCH_KEY = "sk-bench-local-only"
BENCH_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}

# -- machine and output ------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def batchrunner_revision() -> str:
    """Where the measured batchrunner is imported from, and its git revision if known."""
    import batchrunner

    folder = Path(batchrunner.__file__).resolve().parent.parent
    marker = folder / "REVISION"  # a snapshot made with `git archive` (see README.md)
    if marker.is_file():
        return f"{marker.read_text().strip()} (snapshot at {folder})"
    try:
        rev = subprocess.run(
            ["git", "-C", str(folder), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{rev or 'unknown revision'} ({folder})"


def batchrunner_origin() -> dict[str, str]:
    """The measured batchrunner's `__file__` and revision (for a parent checking its child)."""
    import batchrunner

    return {"file": str(Path(batchrunner.__file__).resolve()), "revision": batchrunner_revision()}


def machine_summary() -> str:
    """When and on what: time, cores, CPU, Python, OS."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"{now} | nproc {os.cpu_count()} | {cpu_model()} | Python "
        f"{platform.python_version()} | {platform.system()} {platform.release()}"
    )


def print_header(title: str) -> None:
    """What the figures were measured on: print it before them."""
    print(f"== {title}")
    print(f"   {machine_summary()} | batchrunner {batchrunner_revision()}")


@contextmanager
def figures_output(as_json: bool) -> Iterator[dict[str, Any]]:
    """`--json`: the human report goes to stderr, and one JSON object of the figures the body
    put in the yielded dict goes to stdout at the end (with the measured batchrunner's
    `__file__`; bench/revisions.py reads it). Without `as_json` the dict is simply ignored.
    Nothing is printed to stdout when the body fails."""
    figures: dict[str, Any] = {}
    if not as_json:
        yield figures
        return
    stdout = sys.stdout
    with redirect_stdout(sys.stderr):
        yield figures
    figures.setdefault("batchrunner", batchrunner_origin())
    stdout.write(json.dumps(figures) + "\n")
    stdout.flush()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table: numbers right-aligned, with thousands separators."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return "-" if value is None else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row, raw in zip(text, rows, strict=True):
        parts = []
        for value, original, width in zip(row, raw, widths, strict=True):
            numeric = isinstance(original, int | float)
            parts.append(value.rjust(width) if numeric else value.ljust(width))
        print("  ".join(parts))


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


@contextmanager
def temp_dir(keep: bool = False) -> Iterator[Path]:
    """A scratch folder for job files and ledgers, removed afterwards unless `keep`."""
    if keep:
        yield Path(tempfile.mkdtemp(prefix="batchrunner-bench-"))
        return
    with tempfile.TemporaryDirectory(prefix="batchrunner-bench-") as path:
        yield Path(path)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- cores -------------------------------------------------------------------------------------


def split_cores() -> tuple[set[int], set[int]] | None:
    """(server cores, client cores) on a machine with >= 2 usable cores, else None."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    return {cores[0]}, {cores[1]}


def pin(pid: int, cores: set[int] | None) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cores)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


@contextmanager
def cpu_shares(server_pid: int) -> Iterator[dict[str, float]]:
    """Filled on exit: the share of one core the server and this client process (all its
    threads) were busy. A client near 1.0 is CPU-bound; a server near 1.0 is the limit."""
    shares: dict[str, float] = {}
    server, client, started = cpu_seconds(server_pid), cpu_seconds(os.getpid()), time.perf_counter()
    try:
        yield shares
    finally:
        elapsed = max(time.perf_counter() - started, 1e-9)
        shares["server"] = (cpu_seconds(server_pid) - server) / elapsed
        shares["client"] = (cpu_seconds(os.getpid()) - client) / elapsed


# -- job files -----------------------------------------------------------------------------------


def chat_request(index: int) -> dict[str, Any]:
    """The request body every client sends: one short user message."""
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question number {index}"}]}


def job_line(index: int) -> bytes:
    """One Batch API job line, with a metadata key that comes back in the export."""
    line = {
        "custom_id": f"item-{index}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_request(index),
        "metadata": {"row": index},
    }
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def write_job_file(path: Path, count: int) -> Path:
    with path.open("wb") as out:
        for start in range(0, count, 10_000):
            out.write(b"".join(job_line(i) for i in range(start, min(count, start + 10_000))))
    return path


# -- servers in their own process ----------------------------------------------------------------

CANNED_BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)
CANNED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\n"
    + f"Content-Length: {len(CANNED_BODY)}\r\n\r\n".encode()
    + CANNED_BODY
)


class CannedProtocol(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server that answers every request with one tiny chat.completion.

    It parses only what framing needs (Content-Length or chunked), so the server costs as little
    as possible and the clients, not the server, are what a throughput run measures."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._latency_s = latency_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        answers = 0
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            end = _request_end(buffer, head_end)
            if end < 0:
                break
            buffer = buffer[end:]
            answers += 1
        self._buffer = buffer
        if answers and self._transport is not None:
            if self._latency_s > 0:
                loop = asyncio.get_running_loop()
                loop.call_later(self._latency_s, self._answer, answers)
            else:
                self._answer(answers)

    def _answer(self, count: int) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(CANNED_RESPONSE * count)


def _request_end(buffer: bytes, head_end: int) -> int:
    """Where the request whose head ends at `head_end` ends, or -1 if not all of it is here."""
    head = buffer[:head_end].lower()
    body_start = head_end + 4
    if b"transfer-encoding: chunked" in head:
        last = buffer.find(b"0\r\n\r\n", body_start)
        return -1 if last < 0 else last + 5
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return body_start
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    end = body_start + length
    return end if len(buffer) >= end else -1


async def _serve(kind: str, config: dict[str, Any]) -> None:
    if kind == "minimal":
        loop = asyncio.get_running_loop()
        latency_s = float(config.get("latency_ms", 0.0)) / 1000
        server = await loop.create_server(
            lambda: CannedProtocol(latency_s), LOCALHOST, 0, backlog=4096
        )
        port = server.sockets[0].getsockname()[1]
    else:
        from batchrunner.fake import FakeConfig, FakeServer

        fake = FakeServer(FakeConfig(**config))
        base_url = await fake.start(LOCALHOST, 0)
        port = int(urlsplit(base_url).port or 0)
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes


@dataclass
class ServerProcess:
    """A server in a child process on 127.0.0.1, pinned to its own core when there are two.

    kind: "minimal" (canned answers) or "fake" (batchrunner's FakeServer with `config`)."""

    kind: str = "minimal"
    config: dict[str, Any] = field(default_factory=dict)
    base_url: str = ""
    placement: str = ""  # how server and client share the cores, for the report
    _process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        command = [sys.executable, str(Path(__file__).resolve()), "serve", self.kind]
        command.append(orjson.dumps(self.config).decode())
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_DIR
        )
        assert self._process.stdout is not None
        line = _readline_within(self._process.stdout, 30.0)
        if not line.startswith(b"PORT "):
            self.__exit__()
            raise RuntimeError(f"the {self.kind} server did not start: {line!r}")
        self.base_url = f"http://{LOCALHOST}:{int(line.split()[1])}/v1"
        cores = split_cores()
        if cores:
            pin(self._process.pid, cores[0])
            pin(0, cores[1])
            self.placement = f" (server on core {min(cores[0])}, client on core {min(cores[1])})"
        else:
            self.placement = " (one core: server and client share it)"
        return self

    def __exit__(self, *_exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stats(self) -> dict[str, Any]:
        """The fake server's counters (GET /_fake/stats)."""
        return dict(orjson.loads(self._control("GET", "stats")))

    def reset(self) -> None:
        """Zero the fake server's counters and refill its rate-limit buckets."""
        self._control("POST", "reset")

    def _control(self, method: str, name: str) -> bytes:
        assert self.kind == "fake", "only the fake server has control endpoints"
        url = self.base_url.removesuffix("/v1") + f"/_fake/{name}"
        request = urllib.request.Request(url, data=b"{}" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())


def _readline_within(stream: Any, seconds: float) -> bytes:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    return result[0] if result else b""


def check_local(base_url: str) -> None:
    """Refuse anything but 127.0.0.1: benchmarks never reach a real API."""
    if urlsplit(base_url).hostname != LOCALHOST:
        raise SystemExit(f"benchmarks only talk to {LOCALHOST}, not {base_url}")


# -- the clients under test -----------------------------------------------------------------------


@dataclass
class Measure:
    """One timed run of one client."""

    name: str
    items: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


def check_answers(result: Measure) -> None:
    """Stop the benchmark unless every request of `result` got a 200."""
    if result.statuses.get(200, 0) != result.items:
        raise SystemExit(f"{result.name}: not every request got a 200: {dict(result.statuses)}")


async def run_pool(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """`one(i)` for i in range(count), at most `concurrency` at a time."""
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            await one(index)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(worker())


async def bare_aiohttp(base_url: str, count: int, concurrency: int) -> Measure:
    """(a) The floor: aiohttp + orjson, one session, no ledger, no SDK."""
    import aiohttp

    check_local(base_url)
    url = base_url + "/chat/completions"
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, headers=BENCH_HEADERS) as session:

        async def one(index: int) -> None:
            async with session.post(url, data=orjson.dumps(chat_request(index))) as response:
                payload = await response.read()
                statuses[response.status] += 1
                if response.status == 200:
                    orjson.loads(payload)

        await run_pool(count, concurrency, one)
    return Measure("a: aiohttp+orjson", count, time.perf_counter() - started, statuses)


async def bare_pyreqwest(base_url: str, count: int, concurrency: int) -> Measure:
    """(a3) The floor of batchrunner's own transport: pyreqwest + orjson, one client, no ledger."""
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    check_local(base_url)
    url = base_url + "/chat/completions"
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    builder = ClientBuilder().max_connections(concurrency).default_headers(BENCH_HEADERS)
    builder = builder.no_proxy()
    async with builder.timeout(timedelta(seconds=60)).build() as client:

        async def one(index: int) -> None:
            request = client.post(url).body_bytes(orjson.dumps(chat_request(index))).build()
            response = await request.send()
            payload = bytes(await response.bytes())
            statuses[response.status] += 1
            if response.status == 200:
                orjson.loads(payload)

        await run_pool(count, concurrency, one)
    return Measure("a3: pyreqwest+orjson, uvloop", count, time.perf_counter() - started, statuses)


def sdk_aiohttp_available() -> str | None:
    """None if `openai.DefaultAioHttpClient` works here, else why not."""
    try:
        import openai

        client = openai.DefaultAioHttpClient()
    except (ImportError, AttributeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    asyncio.run(client.aclose())
    return None


async def openai_sdk(base_url: str, count: int, concurrency: int, aiohttp: bool) -> Measure:
    """(b) AsyncOpenAI with max_retries=0; (b2) the same over its aiohttp transport."""
    import openai

    check_local(base_url)
    http_client = openai.DefaultAioHttpClient() if aiohttp else None
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=BENCH_KEY, max_retries=0, http_client=http_client
    )
    statuses: Counter[int] = Counter()
    started = time.perf_counter()

    async def one(index: int) -> None:
        request = chat_request(index)
        try:
            await client.chat.completions.create(model=MODEL, messages=request["messages"])
            statuses[200] += 1
        except openai.APIStatusError as exc:
            statuses[exc.status_code] += 1

    try:
        await run_pool(count, concurrency, one)
    finally:
        await client.close()
    name = "b2: openai SDK, aiohttp" if aiohttp else "b: openai SDK (httpx2)"
    return Measure(name, count, time.perf_counter() - started, statuses)


@dataclass
class E2E:
    """batchrunner end to end: ingest (validate + record) then run to the last commit."""

    items: int
    ingest_s: float
    run_s: float
    state: str
    counts: dict[str, int]
    attempts: int
    commits: int  # group-commit transactions the writer made (on_flush calls)

    @property
    def total_s(self) -> float:
        return self.ingest_s + self.run_s

    def measure(self, name: str = "c: batchrunner e2e") -> Measure:
        extra = {
            "ingest_s": self.ingest_s,
            "run_s": self.run_s,
            "state": self.state,
            "per_commit": self.attempts / max(self.commits, 1),
        }
        statuses = Counter({200: self.counts.get("succeeded", 0)})
        return Measure(name, self.items, self.total_s, statuses, extra)


def batchrunner_e2e(
    base_url: str,
    job_file: Path,
    db_url: str,
    time_limit: float,
    wrap: Callable[[Callable[[], Any]], Any] | None = None,
    **settings: Any,
) -> E2E:
    """`submit` through the library: submit_job (validate + record), then run_job to the end.

    `settings` are RunSettings fields (concurrency, rpm, max_attempts, ...). The run is cut
    after `time_limit` seconds (it then stops cleanly and reports state "stopped"). `wrap`, if
    given, runs the run phase (e.g. under a profiler)."""
    import anyio

    from batchrunner.commands import run_async, run_job, submit_job
    from batchrunner.jobfile import JobDefaults
    from batchrunner.settings import RunSettings

    check_local(base_url)
    options = RunSettings(base_url=base_url, **settings)
    started = time.perf_counter()
    ledger, submitted = submit_job(db_url, str(job_file), defaults=JobDefaults(), settings=options)
    ingested = time.perf_counter()

    commits = 0

    def on_flush(records: list[Any]) -> None:
        nonlocal commits
        commits += 1

    async def go() -> str:
        with anyio.move_on_after(time_limit):
            return str((await run_job(ledger, submitted.job_id, on_flush=on_flush)).state)
        return "stopped (time limit)"

    def run() -> str:
        return run_async(go)  # the event loop `batchrunner submit` runs on

    state = wrap(run) if wrap else run()
    finished = time.perf_counter()
    summary = ledger.summary(submitted.job_id)
    ledger.close()
    return E2E(
        items=submitted.summary.items,
        ingest_s=ingested - started,
        run_s=finished - ingested,
        state=state,
        counts=dict(summary.counts),
        attempts=summary.attempts,
        commits=commits,
    )


# The modules a concurrent run imports lazily. Each entry lists the places one module may live,
# the refactored layout first, then the old one (034d182: batchrunner.runner.transport), so the
# bench works with either revision of batchrunner.
LAZY_RUN_MODULES: tuple[tuple[str, ...], ...] = (
    ("batchrunner.backends.http", "batchrunner.runner.transport"),
    ("batchrunner.runner.concurrent",),
)


def import_first(*names: str) -> str | None:
    """Import the first of `names` that exists and return its name; None if none does.

    Only "this module does not exist" moves on to the next name: an ImportError raised inside a
    module that does exist (a missing dependency, a syntax error) propagates."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if not missing or not (name == missing or name.startswith(missing + ".")):
                raise
            continue
        return name
    return None


def import_attr(attribute: str, *modules: str) -> Any:
    """`attribute` of the first of `modules` that exists and has it: list the refactored place
    first, then the old one, and the bench works with either revision of batchrunner."""
    for name in modules:
        found = import_first(name)
        if found is not None and hasattr(sys.modules[found], attribute):
            return getattr(sys.modules[found], attribute)
    raise ImportError(f"none of {', '.join(modules)} has {attribute}")


def warm_imports(clients: Iterable[str] = ("a", "b", "c")) -> None:
    """Import the clients' modules up front, so no timed run pays for an import."""
    import aiohttp  # noqa: F401

    if {"b", "b2"} & set(clients):
        import openai  # noqa: F401
    if "c" in clients:
        import anyio

        from batchrunner.commands import run_async

        for places in LAZY_RUN_MODULES:  # the run imports these lazily
            if import_first(*places) is None:
                print(
                    f"warning: none of {', '.join(places)} exists in this batchrunner; the "
                    "first timed run pays for importing it",
                    file=sys.stderr,
                )
        run_async(anyio.lowlevel.checkpoint)  # the first run also imports its loop's modules


def bounded(coroutine: Awaitable[Measure], seconds: float, uvloop: bool = False) -> Measure:
    """Run one async measurement to the end, or fail after `seconds`; on uvloop if asked."""

    async def go() -> Measure:
        async with asyncio.timeout(seconds):
            return await coroutine

    if uvloop:
        import uvloop as loops

        return loops.run(go())
    return asyncio.run(go())


# -- child processes: wall time and peak RSS ------------------------------------------------------


@dataclass
class ChildRun:
    seconds: float
    peak_rss: int  # bytes: that one child's own peak resident set (see `run_child`)
    returncode: int
    stderr: str


def batchrunner_command(*args: str) -> list[str]:
    """The CLI as anyone can run it from a checkout with the project installed."""
    return [sys.executable, "-m", "batchrunner", *args]


def _max_rss_bytes(usage: Any) -> int:
    return int(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def _vm_hwm(pid: int) -> int:
    """The peak RSS so far of a live process (Linux /proc VmHWM), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_child(command: Sequence[str], time_limit: float, cwd: Path) -> ChildRun:
    """Run `command`: its wall time and its own peak RSS; killed after `time_limit` seconds.

    wait4's ru_maxrss alone is wrong for a child smaller than this process: Linux carries the
    parent's high-water mark over fork and exec. So the peak is the larger of /proc VmHWM
    (sampled every 10 ms; it only grows) and ru_maxrss when that exceeds this process's own."""
    own_peak = _max_rss_bytes(resource.getrusage(resource.RUSAGE_SELF))
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd)
        outcome: list[tuple[int, int, Any]] = []
        waiter = threading.Thread(target=lambda: outcome.append(os.wait4(process.pid, 0)))
        waiter.start()
        sampled = 0
        while waiter.is_alive() and time.perf_counter() - started < time_limit:
            sampled = max(sampled, _vm_hwm(process.pid))
            waiter.join(0.01)
        if waiter.is_alive():
            process.kill()
            waiter.join()
        seconds = time.perf_counter() - started
        _, status, usage = outcome[0]
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        text = stderr.read().decode("utf-8", "replace")
    kernel = _max_rss_bytes(usage)
    peak = max(sampled, kernel if kernel > own_peak else 0)
    if seconds >= time_limit:
        text += f"\n[killed after the {time_limit:.0f} s limit]"
    return ChildRun(seconds, peak, process.returncode, text)


def require_ok(name: str, child: ChildRun) -> None:
    if child.returncode != 0:
        raise SystemExit(f"{name} failed (exit {child.returncode}):\n{child.stderr[-2000:]}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        settings = orjson.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
        asyncio.run(_serve(sys.argv[2], settings))
    else:
        print(__doc__)
