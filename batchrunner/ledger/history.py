"""A job's life over time, for `report`: what finished when, how fast, how slow the answers
were, what was spent per model, which errors came, which workers and batches did the work.

Everything is aggregated as it is read, never loaded whole: counts per time bucket are GROUP
BYs in the database (one pass over the job's items, one over its attempts; the per-model sums
and the attempts per run are one more each), and the latency
percentiles come from a histogram of log-spaced bins per time bucket, filled by that same pass
over the attempts (the bin is computed in SQL: PostgreSQL's log(), SQLite's log10() where its
build has the math functions) or, on a SQLite without them, while paging through the attempts
(PAGE rows a query, by id). So a job of millions reports in seconds with flat memory. The time
buckets are a fixed number of equal slices of the job's life, from its first run's start to its
last run's end.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Float, Integer, case, cast, func, literal, null, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from batchrunner.failures import ErrorKind
from batchrunner.ledger.batches import BATCH_STATES
from batchrunner.ledger.models import (
    FAILED,
    attempts_t,
    batches_t,
    items_t,
    jobs_t,
    pauses_t,
    runs_t,
)
from batchrunner.ledger.outages import outlasting_read
from batchrunner.ledger.records import (
    BatchRow,
    QueriesMixin,
    RunRow,
    row_columns,
    utcnow,
)

BUCKETS = 60  # slices of the job's life in every plot over time
# Slice widths (seconds) to choose from: the narrowest that covers the job's life in BUCKETS.
NICE_BUCKET_S = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
PAGE = 20_000  # attempts per query while their latencies are read
EXAMPLES = 3  # errors shown per kind
MAX_KINDS = 40  # error kinds given examples (ErrorKind has fewer; a ledger may hold others)
MAX_RUNS = 200  # workers listed, the busiest first
# Latency histogram: BINS_PER_DECADE log-spaced bins from LATENCY_FLOOR_MS up; a percentile
# read from it is the bin's geometric middle, within 10**(1/(2*BINS_PER_DECADE)) - 1 (about 6%)
# of the true value.
BINS_PER_DECADE = 20
LATENCY_FLOOR_MS = 0.1
LATENCY_BINS = 8 * BINS_PER_DECADE  # up to 10,000 s
PERCENTILES = (50, 90, 99)
RATE_LIMIT = ErrorKind.RATE_LIMIT.value


@dataclass(frozen=True, slots=True)
class Timeline:
    """The job's life cut into `buckets` slices of `bucket_s` seconds from `start`."""

    start: datetime
    bucket_s: float
    buckets: int

    def at(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.bucket_s)

    def index(self, seconds_after_start: float | None) -> int:
        """The bucket of a moment `seconds_after_start` (as the SQL computes it: the quotient
        truncated); moments outside go to the edges."""
        if seconds_after_start is None or seconds_after_start < 0:
            return 0
        return self.clamp(int(seconds_after_start / self.bucket_s))

    def clamp(self, index: int | None) -> int:
        """A bucket computed in SQL, within the timeline (early and late times at its edges)."""
        return min(self.buckets - 1, max(0, index or 0))


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency percentiles in milliseconds (None: no answer had a latency), from `count`."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class ErrorExample:
    custom_id: str
    http_status: int | None
    error_code: str | None
    error_message: str | None  # as stored: keys already masked; escape it to show it


@dataclass(frozen=True, slots=True)
class ErrorKindHistory:
    """One error kind: the items it failed, the answers that carried it, a few examples."""

    kind: str
    failed_items: int
    attempts: int
    examples: tuple[ErrorExample, ...]


@dataclass(frozen=True, slots=True)
class RunActivity:
    """One run (a process; a worker in a shared job) and the attempts it sent."""

    run: RunRow
    attempts: int
    succeeded: int
    errors: int  # attempts that carried an error (retried or failed)


@dataclass
class JobHistory:
    """Everything `report` plots, per time bucket where it is over time."""

    timeline: Timeline
    finished: dict[str, list[int]] = field(default_factory=dict)  # item state -> per bucket
    attempts: list[int] = field(default_factory=list)  # requests answered, per bucket
    rate_limited: list[int] = field(default_factory=list)  # 429 answers (rate_limit), per bucket
    # seconds in each bucket when a run held every request back after a 429 (any of its runs)
    paused_s: list[float] = field(default_factory=list)
    errors_over_time: dict[str, list[int]] = field(default_factory=dict)  # kind -> per bucket
    latency: list[Percentiles] = field(default_factory=list)  # per bucket
    latency_overall: Percentiles = Percentiles(0, None, None, None)
    errors: list[ErrorKindHistory] = field(default_factory=list)
    runs: list[RunActivity] = field(default_factory=list)
    run_count: int = 0  # all of the job's runs (`runs` lists the busiest MAX_RUNS)
    batches: list[BatchRow] = field(default_factory=list)


class HistoryQueries(QueriesMixin):
    """The reads behind `report`; mixed into Ledger."""

    @outlasting_read
    def history(
        self,
        job_id: int,
        models: Sequence[str],
        buckets: int = BUCKETS,
        bins_in_sql: bool | None = None,
    ) -> JobHistory:
        """The job's history; `models`: the job's (its summary's: what each used and cost is
        the summary's to sum, `status` shows the same); `bins_in_sql` False pages through the
        attempts for the latency histogram even where the database could bin them (None:
        wherever it can)."""
        with self._read() as conn:
            timeline = _timeline(conn, job_id, buckets)
            history = JobHistory(timeline)
            seconds = _seconds_after(conn, timeline.start)
            binned = _latency_bin(conn) if bins_in_sql is not False else None
            _finished_over_time(conn, job_id, timeline, seconds, history)
            histograms = _attempts_over_time(conn, job_id, timeline, seconds, binned, history)
            history.errors = _errors(conn, job_id, history, list(models))
            history.paused_s = _paused(conn, job_id, timeline)
            history.runs, history.run_count = _runs(conn, job_id)
            history.batches = [
                BatchRow(*row)
                for row in conn.execute(
                    select(*row_columns(batches_t, BatchRow))
                    .where(batches_t.c.job_id == job_id, batches_t.c.state.in_(BATCH_STATES))
                    .order_by(batches_t.c.id)
                )
            ]
        if histograms is None:
            histograms = _latencies(self, job_id, timeline)  # pages of its own, short reads
        overall = [sum(counts) for counts in zip(*histograms, strict=True)]
        history.latency = [_percentiles(counts) for counts in histograms]
        history.latency_overall = _percentiles(overall)
        return history

    def _latency_pages(
        self, job_id: int, timeline: Timeline
    ) -> Iterator[list[tuple[int, float, float]]]:
        """The job's attempts with a latency, PAGE at a time by id: (id, seconds after the
        timeline's start, latency_ms)."""
        after = 0
        while True:
            with self._read() as conn:
                seconds = _seconds_after(conn, timeline.start)
                rows = conn.execute(
                    select(
                        attempts_t.c.id,
                        seconds(attempts_t.c.ended_at),
                        attempts_t.c.latency_ms,
                    )
                    .where(
                        attempts_t.c.job_id == job_id,
                        attempts_t.c.id > after,
                        attempts_t.c.latency_ms.is_not(None),
                    )
                    .order_by(attempts_t.c.id)
                    .limit(PAGE)
                ).all()
            if not rows:
                return
            yield [(int(r[0]), float(r[1] or 0.0), float(r[2])) for r in rows]
            after = int(rows[-1][0])


def _paused(conn: Connection, job_id: int, timeline: Timeline) -> list[float]:
    """Seconds paused per bucket: the union of the job's pause windows (two workers paused
    at once count once; a window kept twice by a repeated write, once), paged in time order."""
    per_bucket = [0.0] * timeline.buckets
    merged: tuple[datetime, datetime] | None = None
    for start, until in _pause_windows(conn, job_id):
        if merged is not None and start <= merged[1]:
            merged = (merged[0], max(merged[1], until))
            continue
        if merged is not None:
            _spread(merged, timeline, per_bucket)
        merged = (start, until)
    if merged is not None:
        _spread(merged, timeline, per_bucket)
    return [round(seconds, 3) for seconds in per_bucket]


def _pause_windows(conn: Connection, job_id: int) -> Iterator[tuple[datetime, datetime]]:
    after: tuple[datetime, int] | None = None
    while True:
        query = select(pauses_t.c.started_at, pauses_t.c.until_at, pauses_t.c.id).where(
            pauses_t.c.job_id == job_id
        )
        if after is not None:
            query = query.where(
                (pauses_t.c.started_at > after[0])
                | ((pauses_t.c.started_at == after[0]) & (pauses_t.c.id > after[1]))
            )
        rows = conn.execute(query.order_by(pauses_t.c.started_at, pauses_t.c.id).limit(PAGE)).all()
        for start, until, _ in rows:
            yield start, until
        if len(rows) < PAGE:
            return
        after = (rows[-1][0], rows[-1][2])


def _spread(window: tuple[datetime, datetime], timeline: Timeline, into: list[float]) -> None:
    """Add a window's seconds to the buckets it covers (clipped to the timeline)."""
    start = (window[0] - timeline.start).total_seconds()
    end = (window[1] - timeline.start).total_seconds()
    span = timeline.bucket_s * timeline.buckets
    start, end = max(0.0, start), min(span, end)
    # Bucket by bucket from the first one's index: recomputing the index from each bucket's
    # end in floats (43 * 0.1 / 0.1 < 43) would stop the spread there.
    index = timeline.clamp(int(start / timeline.bucket_s))
    while start < end and index < timeline.buckets:
        bucket_end = min(end, (index + 1) * timeline.bucket_s)
        into[index] += max(0.0, bucket_end - start)
        start, index = bucket_end, index + 1


def _timeline(conn: Connection, job_id: int, buckets: int) -> Timeline:
    """From the first run's start (or the job's) to the last run's end (or now, if it runs)."""
    job = conn.execute(
        select(
            jobs_t.c.created_at, jobs_t.c.started_at, jobs_t.c.finished_at, jobs_t.c.stopped_at
        ).where(jobs_t.c.id == job_id)
    ).one()
    first, last_end, last_beat = conn.execute(
        select(
            func.min(runs_t.c.started_at),
            func.max(runs_t.c.ended_at),
            func.max(runs_t.c.heartbeat_at),
        ).where(runs_t.c.job_id == job_id)
    ).one()
    starts = [t for t in (first, job.started_at) if t is not None]
    start = min(starts) if starts else job.created_at
    ends = [t for t in (last_end, last_beat, job.finished_at, job.stopped_at) if t is not None]
    end = max(ends) if ends else utcnow()
    span = max((end - start).total_seconds(), 1.0)  # short jobs: slices under a second
    bucket_s = next((n for n in NICE_BUCKET_S if n * buckets >= span), 0.0)
    if not bucket_s:
        bucket_s = float(math.ceil(span / buckets))
    return Timeline(start, bucket_s, max(1, min(buckets, math.ceil(span / bucket_s))))


# A time column's seconds after a moment, in SQL.
Seconds = Callable[[ColumnElement[datetime]], ColumnElement[float]]


def _seconds_after(conn: Connection, start: datetime) -> Seconds:
    """How each database says "seconds from `start` to this column": SQLite keeps times as
    text (julianday reads it), PostgreSQL as timestamps."""
    if conn.dialect.name == "sqlite":
        start_day = calendar.timegm(start.utctimetuple()) / 86400.0 + 2440587.5
        start_day += start.microsecond / 86_400e6

        def sqlite(column: ColumnElement[datetime]) -> ColumnElement[float]:
            return cast((func.julianday(column) - literal(start_day)) * 86400.0, Float)

        return sqlite

    def postgres(column: ColumnElement[datetime]) -> ColumnElement[float]:
        return cast(func.extract("epoch", column - literal(start)), Float)

    return postgres


def _bucket(
    conn: Connection, seconds: ColumnElement[float], timeline: Timeline
) -> ColumnElement[int]:
    """The bucket of a time in SQL, clamped again in Python. SQLite has no floor() in every
    build, but its CAST truncates, which is floor for the times after the start (those before
    go to the first bucket anyway); PostgreSQL's CAST rounds, so it gets floor()."""
    slices = seconds / float(timeline.bucket_s)
    if conn.dialect.name == "sqlite":
        return cast(slices, Integer)
    return cast(func.floor(slices), Integer)


def _finished_over_time(
    conn: Connection, job_id: int, timeline: Timeline, seconds: Seconds, history: JobHistory
) -> None:
    bucket = _bucket(conn, seconds(items_t.c.finished_at), timeline)
    rows = conn.execute(
        select(items_t.c.state, bucket, func.count())
        .where(items_t.c.job_id == job_id, items_t.c.finished_at.is_not(None))
        .group_by(items_t.c.state, bucket)
    )
    for state, index, count in rows:
        series = history.finished.setdefault(state, [0] * timeline.buckets)
        series[timeline.clamp(index)] += count


Histograms = list[list[int]]  # per time bucket: answers per latency bin


def _latency_bin(conn: Connection) -> ColumnElement[int] | None:
    """An answer's latency bin in SQL (NULL without a latency); None where the database has no
    logarithm (a SQLite built without its math functions)."""
    if conn.dialect.name == "sqlite":
        try:
            conn.exec_driver_sql("SELECT log10(10.0)").all()
        except OperationalError:
            return None
        log10 = func.log10
    else:
        log10 = func.log  # PostgreSQL's log() is base 10
    latency = attempts_t.c.latency_ms
    decades = log10(latency / LATENCY_FLOOR_MS) * float(BINS_PER_DECADE)
    return case(
        (latency.is_(None), null()),
        (latency <= LATENCY_FLOOR_MS, 0),
        else_=cast(func.floor(decades) if conn.dialect.name != "sqlite" else decades, Integer),
    )


def _attempts_over_time(
    conn: Connection,
    job_id: int,
    timeline: Timeline,
    seconds: Seconds,
    binned: ColumnElement[int] | None,
    history: JobHistory,
) -> Histograms | None:
    """Answers per bucket, by error kind, 429s (rate_limit) apart; and, with `binned`, the
    latency histograms from the same pass (else None)."""
    history.attempts = [0] * timeline.buckets
    history.rate_limited = [0] * timeline.buckets
    bucket = _bucket(conn, seconds(attempts_t.c.ended_at), timeline)
    keys = [bucket, attempts_t.c.error_kind, *([binned] if binned is not None else [])]
    histograms = [[0] * LATENCY_BINS for _ in range(timeline.buckets)]
    top = LATENCY_BINS - 1
    rows = conn.execute(
        select(*keys, func.count()).where(attempts_t.c.job_id == job_id).group_by(*keys)
    )
    for index, kind, *latency_bin, count in rows:
        at = timeline.clamp(index)
        history.attempts[at] += count
        if latency_bin and latency_bin[0] is not None:
            histograms[at][min(top, max(0, latency_bin[0]))] += count
        if kind is None:
            continue
        series = history.errors_over_time.setdefault(kind, [0] * timeline.buckets)
        series[at] += count
        if kind == RATE_LIMIT:
            history.rate_limited[at] += count
    return histograms if binned is not None else None


def _latencies(ledger: HistoryQueries, job_id: int, timeline: Timeline) -> Histograms:
    """The latency histograms per bucket, filled page by page (no logarithm in the SQL)."""
    histograms = [[0] * LATENCY_BINS for _ in range(timeline.buckets)]
    log10 = math.log10
    top = LATENCY_BINS - 1
    for page in ledger._latency_pages(job_id, timeline):
        for _, seconds, latency_ms in page:
            if latency_ms > LATENCY_FLOOR_MS:
                where = min(top, int(log10(latency_ms / LATENCY_FLOOR_MS) * BINS_PER_DECADE))
            else:
                where = 0
            histograms[timeline.index(seconds)][where] += 1
    return histograms


def _percentiles(bins: list[int]) -> Percentiles:
    total = sum(bins)
    if not total:
        return Percentiles(0, None, None, None)
    values: list[float] = []
    for wanted in PERCENTILES:
        rank = math.ceil(total * wanted / 100)
        seen = 0
        for index, count in enumerate(bins):
            seen += count
            if seen >= rank:
                middle = LATENCY_FLOOR_MS * 10 ** ((index + 0.5) / BINS_PER_DECADE)
                values.append(round(middle, 1))
                break
    return Percentiles(total, *values)


def _errors(
    conn: Connection, job_id: int, history: JobHistory, models: list[str]
) -> list[ErrorKindHistory]:
    """Each error kind seen: failed items (from the items) and answers carrying it (from the
    attempts, counted over time already), with examples: failed items first, then answers (an
    item failed unsent has no attempt; a retried error has no failed item)."""
    failed: dict[str, int] = dict(
        conn.execute(
            select(items_t.c.error_kind, func.count())
            .where(items_t.c.job_id == job_id, items_t.c.state == FAILED)
            .group_by(items_t.c.error_kind)
        ).all()
    )
    answered = {kind: sum(series) for kind, series in history.errors_over_time.items()}
    kinds = sorted(
        {str(k) for k in (*failed, *answered)},
        key=lambda k: (-(failed.get(k, 0) + answered.get(k, 0)), k),
    )
    found = []
    for kind in kinds[:MAX_KINDS]:
        examples = _first_failed(conn, job_id, kind, models)
        if len(examples) < EXAMPLES and answered.get(kind):
            shown = {example.custom_id for example in examples}
            examples += [
                ErrorExample(*row)
                for row in conn.execute(
                    select(
                        items_t.c.custom_id,
                        attempts_t.c.http_status,
                        attempts_t.c.error_code,
                        attempts_t.c.error_message,
                    )
                    .join(items_t, items_t.c.id == attempts_t.c.item_id)
                    .where(attempts_t.c.job_id == job_id, attempts_t.c.error_kind == kind)
                    .order_by(attempts_t.c.id)
                    .limit(EXAMPLES * 2)
                )
                if row[0] not in shown
            ][: EXAMPLES - len(examples)]
        found.append(
            ErrorKindHistory(kind, int(failed.get(kind, 0)), answered.get(kind, 0), tuple(examples))
        )
    return found


def _first_failed(
    conn: Connection, job_id: int, kind: str, models: list[str]
) -> list[ErrorExample]:
    """The first items (by when they finished) that failed with `kind`: per model, the summary
    index (job, state, model, error kind, finished_at) hands them over in that order at once,
    where a search of the job's failed items would read them all."""
    earliest: list[tuple[datetime, ErrorExample]] = []
    for model in models[:MAX_KINDS]:
        rows = conn.execute(
            select(
                items_t.c.finished_at,
                items_t.c.custom_id,
                items_t.c.http_status,
                items_t.c.error_code,
                items_t.c.error_message,
            )
            .where(
                items_t.c.job_id == job_id,
                items_t.c.state == FAILED,
                items_t.c.model == model,
                items_t.c.error_kind == kind,
            )
            .order_by(items_t.c.finished_at)
            .limit(EXAMPLES)
        )
        earliest += [(row[0] or datetime.min, ErrorExample(*row[1:])) for row in rows]
    earliest.sort(key=lambda pair: pair[0])
    return [example for _, example in earliest[:EXAMPLES]]


def _runs(conn: Connection, job_id: int) -> tuple[list[RunActivity], int]:
    """The job's runs with the attempts each sent (attempts.run_id), the busiest first."""
    runs = {
        row[0]: RunRow(*row)
        for row in conn.execute(
            select(*row_columns(runs_t, RunRow)).where(runs_t.c.job_id == job_id)
        )
    }
    sent = {
        run_id: (int(n), int(ok or 0), int(bad or 0))
        for run_id, n, ok, bad in conn.execute(
            select(
                attempts_t.c.run_id,
                func.count(),
                func.count().filter(attempts_t.c.outcome == "succeeded"),
                func.count().filter(attempts_t.c.error_kind.is_not(None)),
            )
            .where(attempts_t.c.job_id == job_id)
            .group_by(attempts_t.c.run_id)
        )
    }
    activity = [RunActivity(run, *sent.get(run_id, (0, 0, 0))) for run_id, run in runs.items()]
    activity.sort(key=lambda a: (-a.attempts, a.run.started_at))
    return activity[:MAX_RUNS], len(runs)
