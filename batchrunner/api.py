"""The Python API: a job from a job file or from requests made in Python, run (blocking or
awaited, in a notebook's running event loop too), watched, and read back as records or a table.

    import batchrunner

    job = batchrunner.submit(requests, db="sqlite:///answers.db", simulate=True)
    job.run(on_progress=print)      # or: await job.run_async()
    frame = job.to_pandas()

Nothing here is a second implementation: a job is recorded by `commands.submit_job` (requests
given in Python are spooled to a temporary job file and go through the same checks), run by
`commands.run` (the one mode dispatch), watched through the CLI's `commands.Progress`, and read
back through `export.result_records` (the records `export results` writes).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from batchrunner import commands, run_thread
from batchrunner.dialects.openai import CHAT, normalize_endpoint
from batchrunner.errors import JobFileError, Problem, UsageError
from batchrunner.export import result_records
from batchrunner.jobfile import MAX_PROBLEMS_SHOWN, JobDefaults
from batchrunner.ledger import JobSummary, Ledger, database_url
from batchrunner.ledger.models import CONCURRENT, FAILED, MODES, SUCCEEDED
from batchrunner.outcome import Outcome
from batchrunner.runner.report import RunReport
from batchrunner.settings import RunSettings

if TYPE_CHECKING:
    from batchrunner.runner.batch import BatchProgress

PYTHON_SOURCE = "<requests given in Python>"  # the job's source where a file's path would be
TABLE_PAGE = 10_000  # records per piece of a table, so no more of them are held at once


@dataclass(frozen=True)
class ProgressSnapshot:
    """Where a job stands while it runs, over its whole life (a resumed job counts what its
    earlier runs did): items finished (succeeded or failed) out of all, tokens and cost. In
    concurrent mode it is taken as results are committed to the ledger, so it shows only
    what is durable; in batch mode at each poll of the batches."""

    job_id: int
    total: int
    done: int
    succeeded: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


ProgressCallback = Callable[[ProgressSnapshot], None]


class ProgressCounter:
    """A `commands.Progress` (what the CLI's progress bar is given) that hands a
    `ProgressSnapshot` to a callback after every step of the run."""

    def __init__(self, ledger: Ledger, job_id: int, callback: ProgressCallback) -> None:
        self._ledger, self._job_id, self._callback = ledger, job_id, callback
        self._snapshot = _snapshot_of(ledger.summary(job_id))

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        now = self._snapshot
        succeeded = sum(outcome.state == SUCCEEDED for outcome in outcomes)
        failed = sum(outcome.state == FAILED for outcome in outcomes)
        costs = [o.result.cost_usd for o in outcomes if o.result.cost_usd is not None]
        cost = now.cost_usd if not costs else (now.cost_usd or 0.0) + sum(costs)
        self._snapshot = ProgressSnapshot(
            job_id=now.job_id,
            total=now.total,
            done=now.done + succeeded + failed,
            succeeded=now.succeeded + succeeded,
            failed=now.failed + failed,
            input_tokens=now.input_tokens + sum(o.result.input_tokens or 0 for o in outcomes),
            output_tokens=now.output_tokens + sum(o.result.output_tokens or 0 for o in outcomes),
            cost_usd=cost,
        )
        self._callback(self._snapshot)

    def on_batches(self, progress: BatchProgress) -> None:
        """A poll of the batches: the ledger says what is settled (polls are seconds apart)."""
        self._snapshot = _snapshot_of(self._ledger.summary(self._job_id))
        self._callback(self._snapshot)


def _snapshot_of(summary: JobSummary) -> ProgressSnapshot:
    succeeded = summary.counts.get(SUCCEEDED, 0)
    failed = summary.counts.get(FAILED, 0)
    return ProgressSnapshot(
        job_id=summary.id,
        total=summary.item_count,
        done=succeeded + failed,
        succeeded=succeeded,
        failed=failed,
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
        cost_usd=summary.cost_usd,
    )


class Job:
    """A job in a ledger: run it, watch it, read its results. It holds the ledger open;
    `close()` it (or use it in a `with` block) when done."""

    def __init__(self, ledger: Ledger, job_id: int) -> None:
        self.ledger = ledger
        self.id = job_id

    def __repr__(self) -> str:
        return f"<batchrunner.Job {self.id} in {self.ledger.url!r}>"

    def summary(self) -> JobSummary:
        """Its counts, tokens, cost and state, as `batchrunner status` shows them."""
        return self.ledger.summary(self.id)

    def run(
        self,
        *,
        wait: bool = True,
        poll_s: float = 5.0,
        on_progress: ProgressCallback | None = None,
        **settings: Any,
    ) -> RunReport:
        """Run (or resume) the job in its mode until it ends or stops, as `batchrunner run`
        does; `settings` override the job's for this run (RunSettings' names: concurrency=,
        rpm=, budget=...). A batch job is waited for unless `wait=False`. It works inside a
        running event loop (a notebook's) too: the run has a thread and a loop of its own,
        and this call waits for it. A Ctrl-C (a kernel interrupt) stops it, resumably."""
        work = self._run_work(wait, poll_s, on_progress, settings)
        try:
            return run_thread.wait_in_run_thread(work)
        except KeyboardInterrupt:
            self.ledger.record_stop(self.id, "interrupted")  # what `status` tells, as the CLI
            raise

    async def run_async(
        self,
        *,
        wait: bool = True,
        poll_s: float = 5.0,
        on_progress: ProgressCallback | None = None,
        **settings: Any,
    ) -> RunReport:
        """`run`, awaited (asyncio): this event loop stays free while the job runs in its own
        thread (`on_progress` is called from that thread). Cancelling the await stops the
        run, as a Ctrl-C would; the job stays resumable."""
        import asyncio

        future = run_thread.in_run_thread(self._run_work(wait, poll_s, on_progress, settings))
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            run_thread.stop_run_thread(future)
            if not future.cancelled():  # it had started
                await asyncio.wait([asyncio.wrap_future(future)])
                self.ledger.record_stop(self.id, "interrupted")
            raise

    def _run_work(
        self,
        wait: bool,
        poll_s: float,
        on_progress: ProgressCallback | None,
        settings: dict[str, Any],
    ) -> Callable[[], RunReport]:
        """The run, as `commands.run` does it for the CLI, ready to start in the run thread."""
        overrides = _checked_settings(settings)
        progress = ProgressCounter(self.ledger, self.id, on_progress) if on_progress else None
        return functools.partial(
            commands.run,
            self.ledger,
            self.id,
            overrides,
            wait=wait,
            poll_s=poll_s,
            progress=progress,
        )

    def cancel(self) -> int:
        """Cancel its pending items (and remote batches), as `batchrunner cancel`; how many."""
        return commands.cancel_job(self.ledger, self.id)

    def results(self) -> Iterator[dict[str, Any]]:
        """One record per item, in input order, as `export results` writes them (the response
        as a dict, the input line's extra keys spliced in), paged from the ledger."""
        for record in result_records(self.ledger, self.id):
            yield orjson.loads(orjson.dumps(record))  # the response, spliced in as JSON

    def to_arrow(self) -> Any:
        """The results as a `pyarrow.Table` with the columns of `export results --format csv`
        (the answer's text, the error's parts, tokens, cost; the response as JSON text).
        Needs pyarrow."""
        pyarrow = _optional("pyarrow", "Job.to_arrow()")
        pieces = [pyarrow.Table.from_pylist(page) for page in self._table_pages()]
        if not pieces:
            return pyarrow.table({})
        return pyarrow.concat_tables(pieces, promote_options="permissive")

    def to_pandas(self) -> Any:
        """The results as a `pandas.DataFrame`, with the columns of `to_arrow`. Needs pandas."""
        pandas = _optional("pandas", "Job.to_pandas()")
        pieces = [pandas.DataFrame.from_records(page) for page in self._table_pages()]
        if not pieces:
            return pandas.DataFrame()
        return pandas.concat(pieces, ignore_index=True)

    def _table_pages(self) -> Iterator[list[dict[str, Any]]]:
        records = result_records(self.ledger, self.id, "csv")
        while page := list(itertools.islice(records, TABLE_PAGE)):
            yield page

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def submit(
    requests: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    db: str | None = None,
    mode: str = CONCURRENT,
    name: str | None = None,
    model: str | None = None,
    endpoint: str = CHAT,
    simulate: bool = False,
    new: bool = False,
    reuse: bool = False,
    redact: bool = False,
    **settings: Any,
) -> Job:
    """Check and record a job, as `batchrunner submit` does, without running it (`run()` it).

    `requests` is a job file's path, or the requests themselves: dicts in either form of a
    job file's lines (a request body with an optional "custom_id" and "url", or a Batch API
    line), streamed to a temporary file and checked there, so an iterable of millions is
    fine. A bad one is a `JobFileError` naming it as `requests[INDEX]`, and nothing is
    recorded. A request body without a custom_id gets its index ("0", "1", ...).
    `db` is the ledger's URL (default: $BATCHRUNNER_DB or ./batchrunner.db); `simulate` runs
    it against the built-in fake server (no key, no cost); `settings` are RunSettings'
    (concurrency=, rpm=, max_attempts=, base_url=, budget=...), stored with the job."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    given = _checked_settings(settings)
    run_settings = RunSettings().merged(given)
    defaults = JobDefaults(endpoint=normalize_endpoint(endpoint), model=model)
    options: dict[str, Any] = {
        "defaults": defaults,
        "settings": run_settings,
        "mode": mode,
        "simulated": simulate,
        "new": new,
        "reuse": reuse,
        "redact": redact,
    }
    url = database_url(db)
    if isinstance(requests, (str, os.PathLike)):
        ledger, submitted = commands.submit_job(url, os.fspath(requests), name=name, **options)
        return Job(ledger, submitted.job_id)
    with tempfile.TemporaryDirectory(prefix="batchrunner-") as folder:
        path = os.path.join(folder, "requests.jsonl")
        _spool(requests, path)
        try:
            ledger, submitted = commands.submit_job(
                url, path, name=name or "python", origin=PYTHON_SOURCE, **options
            )
        except JobFileError as exc:
            raise _as_requests(exc, path) from None
    return Job(ledger, submitted.job_id)


def open_job(job: int | str | None = None, *, db: str | None = None) -> Job:
    """A recorded job by id or name (None: the latest), in the ledger at `db` (default:
    $BATCHRUNNER_DB or ./batchrunner.db), which must exist."""
    ledger = Ledger(database_url(db), create=False)
    try:
        return Job(ledger, ledger.find_job(job))
    except BaseException:
        ledger.close()
        raise


_SETTING_NAMES = frozenset(field.name for field in fields(RunSettings))


def _checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as overrides; a name RunSettings does not have is refused (a typo
    would otherwise be dropped without a word)."""
    unknown = sorted(settings.keys() - _SETTING_NAMES)
    if unknown:
        raise UsageError(
            f"unknown setting {unknown[0]!r}; the settings: {', '.join(sorted(_SETTING_NAMES))}"
        )
    return {key: value for key, value in settings.items() if value is not None}


def _spool(requests: Iterable[Mapping[str, Any]], path: str) -> None:
    """One JSON line per request, in order (line N is requests[N-1]); a request that is no
    JSON object is written as it is, for the job file check to name."""
    problems: list[Problem] = []
    more = 0
    with open(path, "wb") as out:
        for index, request in enumerate(requests):
            value: Any = dict(request) if isinstance(request, Mapping) else request
            if isinstance(value, dict) and not value.keys() & {"body", "method", "custom_id", "id"}:
                value["custom_id"] = str(index)  # a body without an id: its index
            try:
                out.write(orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE))
            except TypeError as exc:
                if len(problems) < MAX_PROBLEMS_SHOWN:
                    problems.append(Problem(f"requests[{index}]", 0, f"not JSON: {exc}"))
                else:
                    more += 1
                out.write(b"{}\n")  # keeps the lines in step with the indexes
    if problems:
        raise JobFileError(problems, more=more)


_LINE = re.compile(r"\bline (\d+)\b")


def _as_requests(error: JobFileError, path: str) -> JobFileError:
    """The job file check's problems, naming each request by its index instead of the
    temporary file's line."""

    def index(match: re.Match[str]) -> str:
        return f"requests[{int(match.group(1)) - 1}]"

    problems = []
    for problem in error.problems:
        if problem.path == path and problem.line:
            where = f"requests[{problem.line - 1}]"
        else:
            where = "requests" if problem.path == path else problem.path
        message = _LINE.sub(index, problem.message.replace("in the file", "given"))
        message = message.replace("pass --model", "pass model=")  # the option's name here
        problems.append(Problem(where, 0, message))
    return JobFileError(problems, more=error.more)


def _optional(package: str, needed_by: str) -> Any:
    """An optional package, or an ImportError that says which and how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"{needed_by} needs {package}, which is not installed: "
            f"pip install 'batchrunner[dataframes]' (or pip install {package})"
        ) from None
