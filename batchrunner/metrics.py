"""Prometheus metrics of the runs in this process: `--metrics-port PORT` on `submit`, `run` and
`worker` serves /metrics (the official prometheus_client, on 127.0.0.1 unless --metrics-host
says otherwise).

Counters come from the outcomes the ledger committed (the writer's `on_flush` in concurrent
mode, the settled lines as written in batch mode), so they agree with the ledger: items by
outcome and error kind, attempts, tokens by kind, cost, request latency. Gauges (requests in
flight, the limits in force and learned) and the rate-limit pauses are read from the run
itself (`ConcurrentRunner.gauges`) when Prometheus scrapes, and the ledger's commit time after
each commit. One process serves one registry, whatever jobs it runs one after another.

Labels: job_id (not `job`, which Prometheus gives every target: its scrape job's name), model,
worker (hostname:pid, as `status` shows workers); plus outcome, error kind, token kind or limit
where a metric has them. Their values are bounded: the models of the jobs run (beyond
MAX_MODELS, "other"), ErrorKind's members, never a custom_id.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from batchrunner.errors import UsageError
from batchrunner.failures import ErrorKind
from batchrunner.ledger.models import FINISHED_STATES
from batchrunner.logs import EVENTS, worker_name
from batchrunner.outcome import Outcome
from batchrunner.runner.report import RunGauges

PORT_ENV = "BATCHRUNNER_METRICS_PORT"
HOST_ENV = "BATCHRUNNER_METRICS_HOST"
DEFAULT_HOST = "127.0.0.1"
MAX_MODELS = 100  # model label values per process; more are counted as "other"
KINDS = frozenset(kind.value for kind in ErrorKind)
TOKEN_KINDS = ("input", "cached", "output", "reasoning")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OnFlush = Callable[[list[Outcome]], None]


class LiveRun(Protocol):
    """What a run shows its metrics (runner/concurrent.py's ConcurrentRunner)."""

    def gauges(self) -> RunGauges: ...


class Metrics:
    """The metrics of one process, in a registry of its own, and the server that shows them."""

    def __init__(self) -> None:
        # imported here: every run looks for metrics, few serve them (70 ms of start-up)
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.worker = worker_name()
        self._models: set[str] = set()
        by_model = ("job_id", "model", "worker")
        by_run = ("job_id", "worker")
        r = self.registry
        self.items = Counter(
            "batchrunner_items",
            "Items finished (as committed to the ledger), by outcome and error kind.",
            (*by_model, "outcome", "error_kind"),
            registry=r,
        )
        self.attempts = Counter(
            "batchrunner_attempts",
            "Requests answered (attempts committed), by the attempt's outcome and error kind.",
            (*by_model, "outcome", "error_kind"),
            registry=r,
        )
        self.tokens = Counter(
            "batchrunner_tokens",
            "Tokens of the answers committed, by kind: input, cached (part of input), output, "
            "reasoning (part of output).",
            (*by_model, "kind"),
            registry=r,
        )
        self.cost = Counter(
            "batchrunner_cost_usd", "Cost of the answers committed (USD).", by_model, registry=r
        )
        self.latency = Histogram(
            "batchrunner_request_latency_seconds",
            "Time from sending a request to its answer.",
            by_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_writes = Histogram(
            "batchrunner_ledger_write_seconds",
            "Time of one ledger commit of outcomes (the writer's group commit).",
            by_run,
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.pauses = Counter(
            "batchrunner_rate_limit_pauses",
            "Pauses of every request of a run after a 429 or a limit the server says is spent.",
            by_run,
            registry=r,
        )
        self.in_flight = Gauge(
            "batchrunner_requests_in_flight",
            "Requests sent and not yet answered.",
            by_run,
            registry=r,
        )
        self.limits = Gauge(
            "batchrunner_rate_limit",
            "Rate limits per minute (limit: rpm, tpm): in_force is what this worker sends at "
            "(the tighter of configured and learned, its share among the job's workers, ramping "
            "after a 429); learned is what the server's headers reported.",
            (*by_run, "limit", "source"),
            registry=r,
        )
        self._server: object | None = None
        self.port = 0

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: any free port); the port it took."""
        from prometheus_client import start_http_server

        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(
                f"--metrics-port {port}: cannot serve metrics on {host}:{port} ({exc.strerror}); "
                "choose another port (each worker on a machine needs its own)"
            ) from None
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def close(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            self._server = None

    def model(self, name: str | None) -> str:
        """The model label: the model's name, within MAX_MODELS per process."""
        name = name or ""
        if name in self._models:
            return name
        if len(self._models) < MAX_MODELS:
            self._models.add(name)
            return name
        return "other"

    def count(self, job: str, outcomes: list[Outcome]) -> None:
        """Count committed outcomes: items finished, attempts, tokens, cost, latency."""
        items: Tally[tuple[str, str, str]] = Tally()
        attempts: Tally[tuple[str, str, str]] = Tally()
        tokens: Tally[tuple[str, str]] = Tally()
        cost: dict[str, float] = {}
        worker = self.worker
        for outcome in outcomes:
            result = outcome.result
            model = self.model(outcome.model)
            kind = result.error_kind or ""
            kind = kind if not kind or kind in KINDS else "other"
            if outcome.state in FINISHED_STATES:
                items[model, outcome.state, kind] += 1
            if not outcome.is_attempt:
                continue
            attempts[model, outcome.attempt_outcome, kind] += 1
            for token_kind, value in zip(
                TOKEN_KINDS,
                (
                    result.input_tokens,
                    result.cached_tokens,
                    result.output_tokens,
                    result.reasoning_tokens,
                ),
                strict=True,
            ):
                if value:
                    tokens[model, token_kind] += value
            if result.cost_usd:
                cost[model] = cost.get(model, 0.0) + result.cost_usd
            if result.latency_ms is not None:
                self.latency.labels(job, model, worker).observe(result.latency_ms / 1000)
        for (model, state, kind), n in items.items():
            self.items.labels(job, model, worker, state, kind).inc(n)
        for (model, attempt, kind), n in attempts.items():
            self.attempts.labels(job, model, worker, attempt, kind).inc(n)
        for (model, token_kind), n in tokens.items():
            self.tokens.labels(job, model, worker, token_kind).inc(n)
        for model, usd in cost.items():
            self.cost.labels(job, model, worker).inc(usd)


_SERVING: Metrics | None = None  # this process's, once `serve` was called


def serve(host: str = DEFAULT_HOST, port: int = 0) -> Metrics:
    """Serve this process's metrics on host:port from now on (one server per process)."""
    global _SERVING
    if _SERVING is None:
        metrics = Metrics()
        metrics.serve(host, port)
        _SERVING = metrics
        EVENTS.info("metrics on http://%s:%s/metrics", host, metrics.port)
    return _SERVING


def stop_serving() -> None:
    """Stop the server `serve` started (tests; a process's ends with it)."""
    global _SERVING
    if _SERVING is not None:
        _SERVING.close()
        _SERVING = None


class JobWatch:
    """One run of one job, watched by the process's metrics (a no-op when none are served):
    its committed outcomes counted, its gauges read while it is attached."""

    def __init__(self, metrics: Metrics | None, job_id: int, then: OnFlush | None) -> None:
        self._metrics = metrics
        self._job = str(job_id)
        self._then = then
        self._run: LiveRun | None = None
        self._pauses = 0

    @property
    def on_flush(self) -> OnFlush | None:
        """The writer's callback: count, then call the one given (the progress bar)."""
        return self._then if self._metrics is None else self._flushed

    @property
    def on_settled(self) -> OnFlush | None:
        """Batch mode's: the settled lines, as written."""
        return None if self._metrics is None else self._counted

    def _counted(self, outcomes: list[Outcome]) -> None:
        if self._metrics is not None:
            self._metrics.count(self._job, outcomes)

    def _flushed(self, outcomes: list[Outcome]) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.count(self._job, outcomes)
            if self._run is not None:
                gauges = self._run.gauges()
                metrics.ledger_writes.labels(self._job, metrics.worker).observe(
                    gauges.last_commit_s
                )
                self._count_pauses(gauges)
        if self._then is not None:
            self._then(outcomes)

    def _count_pauses(self, gauges: RunGauges) -> None:
        if self._metrics is not None and gauges.pauses > self._pauses:
            self._metrics.pauses.labels(self._job, self._metrics.worker).inc(
                gauges.pauses - self._pauses
            )
            self._pauses = gauges.pauses

    @contextmanager
    def attached(self, run: LiveRun) -> Iterator[None]:
        """While the run runs: its gauges are read at each scrape, then taken away."""
        metrics = self._metrics
        if metrics is None:
            yield
            return
        self._run = run
        job, worker = self._job, metrics.worker
        readings: dict[tuple[str, str], Callable[[RunGauges], float | None]] = {
            ("rpm", "in_force"): lambda g: g.requests_per_minute,
            ("tpm", "in_force"): lambda g: g.tokens_per_minute,
            ("rpm", "learned"): lambda g: g.learned_requests,
            ("tpm", "learned"): lambda g: g.learned_tokens,
        }
        metrics.in_flight.labels(job, worker).set_function(lambda: run.gauges().in_flight)
        for (limit, source), read in readings.items():
            metrics.limits.labels(job, worker, limit, source).set_function(
                lambda read=read: _or_nan(read(run.gauges()))  # type: ignore[misc]
            )
        try:
            yield
        finally:
            self._count_pauses(run.gauges())
            self._run = None  # the run's series go with it (and the run is not kept alive)
            metrics.in_flight.remove(job, worker)
            for limit, source in readings:
                metrics.limits.remove(job, worker, limit, source)


def watch(job_id: int, then: OnFlush | None = None) -> JobWatch:
    """A watch of one run of `job_id` by this process's metrics, if it serves any."""
    return JobWatch(_SERVING, job_id, then)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
