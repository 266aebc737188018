"""The library behind each CLI command; tests call these directly, the CLI only adds printing.

A job's mode is dispatched here and nowhere else: `run` (and `cancel_job`, `refresh_batches`)
look at the job and take the concurrent or the batch path; the provider (providers.py) gives
each path its backend, its dialect and its key.

The runners, the backends (pyreqwest, the openai SDK), the price tables and the fake server are
imported where they are used: together they are over half a second of start-up that `status`
and `export` do not need.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from batchrunner.errors import LedgerError, UsageError
from batchrunner.failures import ErrorKind
from batchrunner.jobfile import (
    FileSummary,
    JobDefaults,
    check_source,
    read_source_items,
)
from batchrunner.ledger import JobSummary, Ledger
from batchrunner.ledger.batches import SUBMITTED
from batchrunner.ledger.models import BATCH, CANCELLED, CONCURRENT
from batchrunner.logs import EVENTS
from batchrunner.outcome import Outcome
from batchrunner.providers import Provider, hosted_prices, provider_for
from batchrunner.redact import Redactor
from batchrunner.runner.report import RunReport
from batchrunner.settings import RUN_CONCURRENCY, RunSettings

if TYPE_CHECKING:
    from batchrunner.estimate import Estimate
    from batchrunner.fake import FakeConfig
    from batchrunner.runner.batch import BatchProgress, BatchRunner
    from batchrunner.tables import RowTemplate

SIMULATED_KEY = "sk-simulated-no-real-key"

T = TypeVar("T")


# The cycle collector's first-generation threshold while a job is ingested or run (Python's
# default is 700).
GC_THRESHOLD = 50_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Each line read and each request sent allocates a few dozen objects that die by reference
    counting, almost never in cycles; at the default pace the cycle collector took 15-20% of a
    run's CPU. Inside this block it runs every GC_THRESHOLD allocations instead (a few MB of
    young objects at most); the process's own setting comes back afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main` to the end on uvloop where it is installed (a fifth or so less CPU per request
    than asyncio's own loop, and a run is CPU-bound on one core at high rates), else asyncio's,
    with fewer cycle collections. Called from a thread that already runs an event loop (a
    notebook's, where a second one cannot start), it runs `main` in the run thread and waits."""
    import anyio

    from batchrunner.run_thread import loop_running_here, stoppable, wait_in_run_thread

    if loop_running_here():
        done: T = wait_in_run_thread(functools.partial(run_async, main))
        return done
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    with fewer_collections():
        result: T = anyio.run(stoppable, main, backend_options=options)
    return result


@dataclass
class Submitted:
    job_id: int
    summary: FileSummary
    estimate: Estimate
    redacted: int = 0  # card numbers and keys masked in the prompts (--redact)
    reused: int = 0  # items that took an earlier job's answer (--reuse)


class AlreadyAJob(UsageError):
    """The file (its content) is already a job of this ledger: `submit` takes that job up
    again (see `resubmitted`); the Python API refuses, as a second job needs `new`."""

    def __init__(self, message: str, job_id: int, state: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state


@fewer_collections()
def submit_job(
    ledger_url: str,
    path: str,
    *,
    defaults: JobDefaults,
    settings: RunSettings,
    name: str | None = None,
    mode: str = "concurrent",
    simulated: bool = False,
    new: bool = False,
    reuse: bool = False,
    redact: bool = False,
    table: RowTemplate | None = None,
    origin: str | None = None,
    needs_key: bool = False,
) -> tuple[Ledger, Submitted]:
    """Validate the whole file, then record the job and its items in one transaction.

    The ledger is opened only once the file is known to be good: bad input touches nothing.
    `redact` masks the prompts on their way in, so neither the ledger nor the API sees them.
    With `table`, the file is a table whose rows that template makes into requests. `origin`
    names what the job came from when the file is not it (requests given in Python, spooled
    to a temporary file). `needs_key`: the provider's key is required, and looked for once the
    file is known good (a missing file is named before a missing key)."""
    from batchrunner.estimate import EstimateBuilder
    from batchrunner.pricing import job_price_table
    from batchrunner.tables import TableSource, request_source

    source = request_source(path, table, defaults)
    summary = check_source(source, defaults, batch=mode == BATCH)
    if needs_key:
        api_key_for(settings)
    settings = with_prices_decided(settings, simulated)
    prices = job_price_table(settings)
    estimate = EstimateBuilder(path=path, overrides=prices)
    with nothing_recorded_yet():  # (a refused create_job says so itself)
        ledger = Ledger(ledger_url)
        existing = ledger.jobs_from_source(summary.sha256)
    if existing and not new:
        job_id, state = existing[-1]
        ledger.close()
        raise AlreadyAJob(
            f"{origin or path} is already job {job_id} ({state}): resume it with `batchrunner run "
            f"{job_id}`, see it with `batchrunner status {job_id}`, or pass --new for a second job",
            job_id,
            state,
        )
    items = read_source_items(source, defaults)
    redactor = Redactor() if redact else None
    options = settings.stored()
    if isinstance(source, TableSource):  # the export joins the answers to the rows by it
        options["table"] = source.described()
    job_id = ledger.create_job(
        name=name or Path(origin or path).stem,
        mode=mode,
        source_path=origin or os.path.abspath(path),
        source_sha256=summary.sha256,
        options=options,
        simulated=simulated,
        items=estimate.passing(redactor.items(items) if redactor else items, total=summary.items),
        reuse=reuse,
    )
    costs = {"concurrent": estimate.estimate.cost_concurrent, "batch": estimate.estimate.cost_batch}
    ledger.update_job_options(job_id, {"estimate_usd": costs[mode]})
    reused = ledger.summary(job_id).reused if reuse else 0
    masked = redactor.masked if redactor else 0
    return ledger, Submitted(job_id, summary, estimate.estimate, masked, reused)


def resubmitted(
    ledger: Ledger, job_id: int, source: str, *, simulated: bool, mode: str
) -> JobSummary:
    """`submit` of a file (`source`) that is already job `job_id`: its summary, for `submit` to
    run what is left of it or show it. A submit that asks for another kind of job than the one
    recorded (real instead of simulated or the other way round, the other mode) is refused:
    that is a second job (--new)."""
    summary = ledger.summary(job_id)
    if summary.simulated != simulated:
        was, wanted = ("simulated", "a real") if summary.simulated else ("real", "a simulated")
        raise UsageError(
            f"{source} is already job {job_id}, a {was} one: pass --new to record {wanted} job "
            "of it"
        )
    if summary.mode != mode:
        raise UsageError(
            f"{source} is already job {job_id}, in {summary.mode} mode: pass --new to record a "
            f"{mode} job of it"
        )
    return summary


def check_simulated(ledger: Ledger, job_id: int, simulate: bool) -> bool:
    """Whether the job is simulated (its runs always go to the built-in fake server, as it was
    recorded); `run --simulate` of a real job is refused: fake answers would stand among real
    ones, billed and exported as if the API had given them."""
    _, simulated = ledger.job_options(job_id)
    if simulate and not simulated:
        raise UsageError(
            f"job {job_id} is a real job: --simulate cannot run it (fake answers would mix with "
            f"real ones); rehearse its file with `batchrunner submit FILE --simulate --new`"
        )
    return simulated


@contextmanager
def nothing_recorded_yet() -> Iterator[None]:
    """Around what `submit` does before it records its job: a ledger that refuses it there
    leaves nothing to resume, so the error says to submit again."""
    try:
        yield
    except LedgerError as exc:
        raise LedgerError(exc.problem, recorded=False) from None


def with_prices_decided(settings: RunSettings, simulated: bool = False) -> RunSettings:
    """The settings with the job's pricing decided once: whether hosted prices apply (by its
    base URL, unless --hosted-prices / --local-prices said)."""
    return replace(settings, hosted_prices=hosted_prices(settings, simulated))


def estimate_file(
    path: str,
    defaults: JobDefaults,
    settings: RunSettings,
    assume_output: int | None = None,
    table: RowTemplate | None = None,
) -> Estimate:
    """What `submit` with these settings would count and price, for the whole file (a table
    with its template, as `submit` reads it)."""
    from batchrunner.estimate import estimate_items
    from batchrunner.jobfile import read_source_items
    from batchrunner.pricing import job_price_table
    from batchrunner.tables import request_source

    source = request_source(path, table, defaults)
    check_source(source, defaults)
    prices = job_price_table(with_prices_decided(settings))
    items = read_source_items(source, defaults)
    return estimate_items(items, path=path, assume_output=assume_output, overrides=prices)


def render_file(path: str, defaults: JobDefaults, table: RowTemplate, out: IO[bytes]) -> int:
    """`render`: check a table as `submit` would, then write the Batch API lines it would
    record to `out` (nothing is recorded); return how many."""
    from batchrunner.tables import request_source, write_job_lines

    source = request_source(path, table, defaults)
    check_source(source, defaults)
    return write_job_lines(source, defaults, out)


# Settings a run changes for the rest of the job's life, not for that run alone: how its
# answers are priced (one job, one price), and its budget (over the job's whole life).
JOB_LIFE_SETTINGS = ("prices", "price_as", "hosted_prices", "budget", "keep_files")


def job_settings(ledger: Ledger, job_id: int, overrides: dict[str, Any]) -> RunSettings:
    """The job's stored settings with this run's overrides (its prices and budget kept with
    the job from now on); says when the job was submitted with headers this run was not given
    (their values are never stored)."""
    options, _ = ledger.job_options(job_id)
    settings = RunSettings.from_stored(options).merged(overrides)
    ledger.wait_for_database(settings.db_wait)  # from now on: a run's reads and writes
    lasting = {key for key in JOB_LIFE_SETTINGS if overrides.get(key) is not None}
    if lasting:
        stored = settings.stored()
        ledger.update_job_options(job_id, {key: stored[key] for key in lasting})
    given = {name.lower() for name, _ in (*settings.headers, *settings.query)}
    missing = [name for name in options.get("withheld") or () if name.lower() not in given]
    if missing:
        EVENTS.warning(
            "job %s was submitted with %s, which are not stored (headers, secret query "
            "parameters); give them to this run too (--header 'Name: value', --query name=value)",
            job_id,
            ", ".join(missing),
        )
    return settings


def api_key_for(settings: RunSettings) -> str | None:
    """The provider's key (OPENAI_API_KEY); required only when talking to OpenAI itself."""
    return provider_for(settings).api_key(settings)


class Progress(Protocol):
    """What a run reports as it goes (the CLI's progress bar), in either mode."""

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        """Concurrent mode: outcomes just committed."""

    def on_batches(self, progress: BatchProgress) -> None:
        """Batch mode: the items settled and what the live batches report done."""


def run(
    ledger: Ledger,
    job_id: int,
    overrides: dict[str, Any] | None = None,
    *,
    wait: bool = False,
    poll_s: float = 5.0,
    progress: Progress | None = None,
    handle_signals: bool = False,
) -> RunReport:
    """Run (or resume) a job in its own mode, to the end or until it stops; in batch mode,
    submit what is pending and settle what ended (all of it, with `wait`)."""
    if ledger.job_mode(job_id) == BATCH:
        on_batches = progress.on_batches if progress is not None else None
        return run_batch_job(
            ledger, job_id, overrides, wait=wait, poll_s=poll_s, on_progress=on_batches
        )
    on_flush = progress.on_outcomes if progress is not None else None
    return run_async(
        functools.partial(
            run_job, ledger, job_id, overrides, on_flush=on_flush, handle_signals=handle_signals
        )
    )


def retry_failed(ledger: Ledger, job_id: int, kinds: Sequence[str] = ()) -> int:
    """`run --retry-failed [--kind KIND ...]`: put the job's failed items (of these error kinds;
    none given: all) back to pending for the next run, each with max_attempts more; return how
    many. A kind that is not an ErrorKind is refused before anything changes."""
    known = [kind.value for kind in ErrorKind]
    wrong = [kind for kind in kinds if kind not in known]
    if wrong:
        raise UsageError(f"--kind {wrong[0]!r} is not an error kind; the kinds: {', '.join(known)}")
    return ledger.retry_failed(job_id, tuple(dict.fromkeys(kinds)))


def _stop_kept(ledger: Ledger, report: RunReport) -> RunReport:
    """A run that stopped early leaves its reason with the job, for `status` (the next run
    clears it)."""
    if report.stop_reason and report.state != "completed":
        ledger.record_stop(report.job_id, report.stop_reason)
    return report


@asynccontextmanager
async def simulated_endpoint(config: FakeConfig | None = None) -> AsyncIterator[str]:
    """The fake OpenAI-compatible server on 127.0.0.1, in this event loop."""
    from batchrunner.fake import FakeConfig, FakeServer

    # --simulate stands for the API: it caches prompts as OpenAI documents (fake/prompt_cache.py)
    simulated = FakeConfig(latency_ms=20.0, latency_jitter_ms=60.0, prompt_cache=True)
    server = FakeServer(config or simulated)
    base_url = await server.start()
    try:
        yield base_url
    finally:
        await server.stop()


async def run_job(
    ledger: Ledger,
    job_id: int,
    overrides: dict[str, Any] | None = None,
    *,
    on_flush: Callable[[list[Outcome]], None] | None = None,
    handle_signals: bool = False,
    fake_config: FakeConfig | None = None,
    shared: bool = False,
) -> RunReport:
    """Run (or resume) a concurrent job's unfinished items to the end, or until it is stopped;
    `shared` works on it beside other workers instead of alone. (`run` takes either mode.)"""
    if ledger.job_mode(job_id) != CONCURRENT:
        raise UsageError(f"job {job_id} is a batch job: run it with `batchrunner run {job_id}`")
    settings = job_settings(ledger, job_id, overrides or {})
    _, simulated = ledger.job_options(job_id)
    if simulated:
        async with simulated_endpoint(fake_config) as base_url:
            settings = settings.merged({"base_url": base_url})
            return await _run(
                ledger, job_id, settings, SIMULATED_KEY, on_flush, handle_signals, shared
            )
    key = api_key_for(settings)
    return await _run(ledger, job_id, settings, key, on_flush, handle_signals, shared)


async def run_worker(
    ledger: Ledger,
    job_ids: list[int] | None,
    overrides: dict[str, Any] | None = None,
    *,
    handle_signals: bool = False,
) -> list[RunReport]:
    """Work on the given jobs (None: every concurrent job with work left) beside any other
    workers, until none has work left or this worker is stopped."""
    reports: list[RunReport] = []
    while True:
        chosen = job_ids if job_ids is not None else ledger.job_ids(limit=1000)
        waiting = [job for job in chosen if _has_work(ledger, job)]
        if not waiting:
            return reports
        for job in waiting:
            report = await run_job(
                ledger, job, overrides, handle_signals=handle_signals, shared=True
            )
            reports.append(report)
            if report.stop_reason and report.state != CANCELLED:
                return reports  # stopped (Ctrl-C, quota, budget), not out of work
        if all(r.state != "completed" for r in reports[-len(waiting) :]):
            return reports  # only deferred or stuck work left: `run` or a later worker


def _has_work(ledger: Ledger, job_id: int) -> bool:
    summary = ledger.summary(job_id)
    unfinished = summary.counts.get("pending", 0) + summary.counts.get("running", 0)
    return summary.mode == CONCURRENT and unfinished > 0


async def _run(
    ledger: Ledger,
    job_id: int,
    settings: RunSettings,
    api_key: str | None,
    on_flush: Callable[[list[Outcome]], None] | None,
    handle_signals: bool,
    shared: bool = False,
) -> RunReport:
    from batchrunner import metrics
    from batchrunner.runner.concurrent import ConcurrentRunner

    _note_concurrency(ledger, job_id, settings)
    provider = provider_for(settings)
    backend = provider.request_backend(provider.endpoint(settings, api_key), settings)
    watch = metrics.watch(job_id, on_flush)  # counts what is committed, when metrics are served
    async with backend:
        runner = ConcurrentRunner(
            ledger, job_id, settings, backend, provider.dialect, watch.on_flush, shared=shared
        )
        with watch.attached(runner):
            return _stop_kept(ledger, await runner.run(handle_signals=handle_signals))


def _note_concurrency(ledger: Ledger, job_id: int, settings: RunSettings) -> None:
    """Keep the concurrency this run sends at (its --concurrency is its own, not the job's
    from now on), so that `status` bounds what is in flight by it."""
    options, _ = ledger.job_options(job_id)
    if options.get(RUN_CONCURRENCY, options.get("concurrency")) != settings.concurrency:
        ledger.update_job_options(job_id, {RUN_CONCURRENCY: settings.concurrency})


def run_batch_job(
    ledger: Ledger,
    job_id: int,
    overrides: dict[str, Any] | None = None,
    *,
    wait: bool = False,
    poll_s: float = 5.0,
    on_progress: Callable[[BatchProgress], None] | None = None,
    fake_config: FakeConfig | None = None,
) -> RunReport:
    """One pass over a Batch API job (submit what is pending, settle what ended), or, with
    `wait`, passes until every item is settled. A simulated job always waits: its remote
    batches live in this process's fake server."""
    if ledger.job_mode(job_id) != BATCH:
        raise UsageError(f"job {job_id} is a concurrent job: run it with `batchrunner run`")
    settings = job_settings(ledger, job_id, overrides or {})
    _, simulated = ledger.job_options(job_id)
    if simulated:
        from batchrunner.fake import FakeConfig, run_in_thread

        quick = FakeConfig(
            batch_validating_s=0.1,
            batch_in_progress_s=0.5,
            batch_finalizing_s=0.1,
            prompt_cache=True,
        )
        with run_in_thread(fake_config or quick) as server:
            settings = settings.merged({"base_url": server.base_url})
            return _run_batches(ledger, job_id, settings, SIMULATED_KEY, True, poll_s, on_progress)
    key = api_key_for(settings)
    return _run_batches(ledger, job_id, settings, key, wait, poll_s, on_progress)


def _run_batches(
    ledger: Ledger,
    job_id: int,
    settings: RunSettings,
    api_key: str | None,
    wait: bool,
    poll_s: float,
    on_progress: Callable[[BatchProgress], None] | None,
) -> RunReport:
    from batchrunner import metrics

    on_settled = metrics.watch(job_id).on_settled  # when metrics are served
    runner = _batch_runner(ledger, job_id, settings, api_key, on_progress, on_settled)
    report = runner.run(wait, poll_s)
    report = _stop_kept(ledger, report)
    leftovers = report.state == "stopped" and not report.stop_reason
    if settings.finish == "concurrent" and wait and leftovers:

        async def finish() -> RunReport:  # the batches ended with leftovers: run them now
            return await _run(ledger, job_id, settings, api_key, None, True)

        return run_async(finish)
    return report


def refresh_batches(ledger: Ledger, job_id: int) -> bool:
    """Ask the API how a batch job's submitted batches stand; False when there is nothing to
    ask (a concurrent job, no such batches, a simulated job whose fake server is gone, or a
    ledger opened read-only, where what the API says could not be recorded)."""
    if ledger.read_only or ledger.job_mode(job_id) != BATCH:
        return False
    _, simulated = ledger.job_options(job_id)
    if simulated or not ledger.batches_of(job_id, (SUBMITTED,)):
        return False
    settings = job_settings(ledger, job_id, {})
    _batch_runner(ledger, job_id, settings, api_key_for(settings)).refresh()
    return True


def cancel_job(ledger: Ledger, job_id: int) -> int:
    """Cancel a job's pending items, and in batch mode its remote batches; return how many
    items. A run working on the job (any process, every worker) sees it cancelled within
    seconds and stops: its requests in flight finish and are recorded, what it held unsent is
    cancelled, and a batch run settles what its batches return. A key is needed only for
    remote batches: not for a concurrent job, a batch job with none out, or a simulated one
    (its batches live in the process that runs it, which cancels them)."""
    _, simulated = ledger.job_options(job_id)
    if ledger.job_mode(job_id) != BATCH or simulated or not ledger.batches_of(job_id):
        ledger.update_job_state(job_id, CANCELLED)
        return ledger.cancel_pending(job_id)
    settings = job_settings(ledger, job_id, {})
    return _batch_runner(ledger, job_id, settings, api_key_for(settings)).cancel()


def _batch_runner(
    ledger: Ledger,
    job_id: int,
    settings: RunSettings,
    api_key: str | None,
    on_progress: Callable[[BatchProgress], None] | None = None,
    on_settled: Callable[[list[Outcome]], None] | None = None,
) -> BatchRunner:
    from batchrunner.runner.batch import BatchRunner

    provider: Provider = provider_for(settings)
    backend = provider.batch_backend(provider.endpoint(settings, api_key), settings)
    return BatchRunner(ledger, job_id, settings, backend, provider.dialect, on_progress, on_settled)


def exit_code(ledger: Ledger, report: RunReport) -> int:
    """0 all succeeded (or, for batches, all submitted; or the job was cancelled, as its user
    asked), 1 finished with failures, 3 stopped early and resumable."""
    if report.state == "submitted":
        return 0
    if report.state not in ("completed", CANCELLED):
        return 3
    counts = ledger.summary(report.job_id).counts
    unanswered = counts.get("cancelled", 0) if report.state == "completed" else 0
    return 1 if counts.get("failed", 0) or unanswered else 0
