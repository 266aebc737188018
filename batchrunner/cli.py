"""The command line: parse options, call the library, print. The only module that prints.

The heavy parts (the openai SDK, the price tables, the encodings, the fake server) are imported
inside the commands that use them, so that `status` and `export` start quickly.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click
import orjson

from batchrunner import commands
from batchrunner.demand import TYPICAL_OUTPUT
from batchrunner.dialects.openai import ENDPOINTS, normalize_endpoint
from batchrunner.errors import BatchrunnerError
from batchrunner.export import FORMATS, RESULT_FORMATS, write_errors, write_results, write_usage
from batchrunner.jobfile import JobDefaults
from batchrunner.ledger import JobSummary, Ledger, database_url, describe, writable
from batchrunner.ledger.batches import BATCH_STATES
from batchrunner.ledger.models import MODES
from batchrunner.logs import configure
from batchrunner.network import parse_header, parse_query
from batchrunner.redact import install_excepthook, mask
from batchrunner.runner.report import RunReport
from batchrunner.settings import RunSettings
from batchrunner.status import format_job, job_status
from batchrunner.stops import results_step
from batchrunner.terminal import printable

if TYPE_CHECKING:
    from batchrunner.tables import RowTemplate

F = TypeVar("F", bound=Callable[..., Any])


def closed_at_the_end(ledger: Ledger) -> Ledger:
    """Close `ledger` when the command ends, however it ends: its connections go back and a
    SQLite ledger's write-ahead log is folded in now, not whenever the object is collected."""
    click.get_current_context().call_on_close(ledger.close)
    return ledger


def say(message: str) -> None:
    """Everything for the terminal goes here, keys masked (a server may quote one back) and
    control characters escaped (an id or a server's message may hold escape sequences)."""
    click.echo(printable(mask(message)), err=True)


def show(text: str, *, json: bool = False) -> None:
    """A command's output on stdout (tables, JSON), its control characters escaped."""
    click.echo(printable(text, json=json))


def common(func: F) -> F:
    """--db, -v and --log-json on every command, and deliberate errors turned into exit codes."""

    @click.option("--db", "db", help="Ledger URL (default: $BATCHRUNNER_DB or ./batchrunner.db).")
    @click.option("-v", "--verbose", count=True, help="Log one line per attempt.")
    @click.option("--log-json", is_flag=True, help="Log as JSON lines (for log pipelines).")
    @functools.wraps(func)
    def wrapper(*args: Any, db: str | None, verbose: int, log_json: bool, **kwargs: Any) -> Any:
        configure(verbose, log_json)
        try:
            return func(*args, db=database_url(db), **kwargs)
        except BatchrunnerError as exc:
            say(f"error: {exc}")
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def json_option(func: F) -> F:
    """--json: a summary for scripts on stdout."""
    return click.option(
        "--json", "json_", is_flag=True, help="Print a JSON summary on stdout (logs: stderr)."
    )(func)


def run_options(func: F) -> F:
    """The options that shape a run, on `submit` and `run` alike."""
    options = [
        click.option("--concurrency", type=click.IntRange(1), help="Requests in flight [64]."),
        click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests/min."),
        click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens/min."),
        click.option("--max-attempts", type=click.IntRange(1), help="Attempts per item [5]."),
        click.option(
            "--retry-invalid",
            type=click.IntRange(0),
            help="Times to ask again after an answer that fails its JSON schema (or is not the "
            "JSON object asked for); each answer is billed, and --max-attempts still caps "
            "them [0: keep it, flagged].",
        ),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds."),
        click.option(
            "--unreachable-wait",
            type=click.FloatRange(min=0),
            help="Seconds to wait for an endpoint that cannot be reached (probing it) before "
            "the job stops, resumably [120].",
        ),
        click.option(
            "--db-wait",
            type=click.FloatRange(min=0),
            help="Seconds to wait for a ledger database that went away (restarting, locked) "
            "before the run stops, resumably [120].",
        ),
        click.option("--base-url", help="OpenAI-compatible base URL (default $OPENAI_BASE_URL)."),
        click.option(
            "--provider",
            type=click.Choice(["openai", "azure"]),
            help="Whose API: openai (and every server that copies it) [openai], or azure.",
        ),
        click.option(
            "--azure-endpoint",
            help="Azure OpenAI resource, https://NAME.openai.azure.com (default "
            "$AZURE_OPENAI_ENDPOINT); implies --provider azure.",
        ),
        click.option(
            "--api-version",
            help="Azure OpenAI's api-version (default $OPENAI_API_VERSION), or v1 for its v1 API.",
        ),
        click.option(
            "--proxy",
            help="Proxy URL for both modes (default: $HTTPS_PROXY / $HTTP_PROXY / $ALL_PROXY, "
            "$NO_PROXY honoured); given to each run, never stored.",
        ),
        click.option(
            "--header",
            "headers",
            multiple=True,
            metavar="'NAME: VALUE'",
            help="Extra header on every request (repeatable); its value is never stored.",
        ),
        click.option("--organization", help="Organization to bill (default $OPENAI_ORG_ID)."),
        click.option("--project", help="Project to bill (default $OPENAI_PROJECT_ID)."),
        click.option(
            "--query",
            multiple=True,
            metavar="NAME=VALUE",
            help="Query parameter on every request's URL (repeatable).",
        ),
        click.option(
            "--budget",
            type=click.FloatRange(min=0),
            help="Stop before the job's spend (USD, over its whole life) could pass this.",
        ),
        click.option(
            "--cache-aware/--no-cache-aware",
            "cache_aware",
            default=None,
            help="Send requests that share a long prefix so the provider's prompt cache serves "
            "it: each group's first request alone, the rest once it answered, spread over "
            "prompt_cache_key values when the job sets none [on].",
        ),
        click.option(
            "--cache-key-rpm",
            type=click.FloatRange(min=1),
            help="Requests/min per prefix and prompt_cache_key before another key is used "
            "(OpenAI: beyond about 15 a prefix-and-key pair overflows to other machines) [15].",
        ),
        click.option("--prices", help="JSON or TOML prices (USD per 1M tokens) for models."),
        click.option(
            "--price-as",
            multiple=True,
            metavar="[NAME=]MODEL",
            help="Price a name (an Azure deployment, a proxy's alias) as a known model; "
            "MODEL alone prices every name so (repeatable).",
        ),
        click.option(
            "--hosted-prices/--local-prices",
            "hosted_prices",
            default=None,
            help="Price models at the hosted APIs' rates even on a local server (a gateway "
            "that forwards to a paid API), or never (a self-hosted server on a public name) "
            "[hosted unless the base URL is local].",
        ),
        click.option(
            "--batch-max-requests",
            type=click.IntRange(1, 50_000),
            help="Batch mode: requests per batch file [50000].",
        ),
        click.option(
            "--batch-token-limit",
            type=click.IntRange(1),
            help="Batch mode: the account's enqueued-token cap per model; hold batches under it.",
        ),
        click.option(
            "--finish",
            type=click.Choice(["batch", "concurrent"]),
            help="Batch mode: what runs items left by expired batches [batch].",
        ),
        click.option(
            "--keep-files/--delete-files",
            "keep_files",
            default=None,
            help="Batch mode: keep each batch's input, output and error files on the server, "
            "or delete them once the batch has ended and its results are in the ledger "
            "[delete; kept with the job].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def metrics_options(func: F) -> F:
    """--metrics-port / --metrics-host (submit, run, worker): serve Prometheus metrics of the
    runs of this process on /metrics while it runs."""

    @click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        envvar="BATCHRUNNER_METRICS_PORT",
        help="Serve Prometheus metrics on this port's /metrics while running (0: any free "
        "port; default $BATCHRUNNER_METRICS_PORT, else none).",
    )
    @click.option(
        "--metrics-host",
        default="127.0.0.1",
        envvar="BATCHRUNNER_METRICS_HOST",
        show_default=True,
        help="Address to serve metrics on (0.0.0.0: every interface, for a remote Prometheus).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, metrics_port: int | None, metrics_host: str, **kwargs: Any) -> Any:
        if metrics_port is not None:
            from batchrunner import metrics

            try:
                served = metrics.serve(metrics_host, metrics_port)
            except BatchrunnerError as exc:
                say(f"error: {exc}")
                sys.exit(exc.exit_code)
            say(f"metrics on http://{metrics_host}:{served.port}/metrics")
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _overrides(**values: Any) -> dict[str, Any]:
    """Run options as settings; a --prices file is read now and kept with the job."""
    if values.get("prices") is not None:
        from batchrunner.pricing import load_price_file, price_table_as_dict

        values["prices"] = price_table_as_dict(load_price_file(values["prices"]))
    if values.get("headers"):
        values["headers"] = tuple(parse_header(given) for given in values["headers"])
    if values.get("query"):
        values["query"] = tuple(parse_query(given) for given in values["query"])
    if values.get("price_as"):
        values["price_as"] = tuple(_price_as(given) for given in values["price_as"])
    return {k: v for k, v in values.items() if v is not None and v != ()}


def _price_as(given: str) -> tuple[str, str]:
    """`NAME=MODEL`, or `MODEL` for every name of the job."""
    name, _, model = given.rpartition("=") if "=" in given else ("*", "", given)
    if not name.strip() or not model.strip():
        raise click.UsageError(f"--price-as takes NAME=MODEL or MODEL, got {given!r}")
    return name.strip(), model.strip()


# Set by `main`: this process is the command, so once a command is done a Ctrl-C has nothing
# left to stop (not set when the CLI is invoked inside another process, as tests do).
_IS_THE_PROCESS = False


class Commands(click.Group):
    """Ctrl-C at any moment ends a command with one line and exit 3, never a traceback (a run
    handles it itself: see ConcurrentRunner.run). Nothing is lost: every ledger write is one
    transaction, and a kill at any moment is already resumed without loss."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            say("interrupted: nothing is lost (`batchrunner status` shows where each job stands)")
            sys.exit(3)
        finally:
            if _IS_THE_PROCESS:  # exiting now: a late Ctrl-C must not turn into a traceback
                signal.signal(signal.SIGINT, signal.SIG_IGN)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrunner")
def cli() -> None:
    """Run large batches of LLM API requests reliably, with a ledger of every item."""


def wait_options(func: F) -> F:
    """Batch mode: wait for the batches, and how often to look."""
    func = click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.01),
        default=5.0,
        show_default=True,
        help="Batch mode: seconds between polls (backing off to 60).",
    )(func)
    return click.option(
        "--wait", is_flag=True, help="Batch mode: poll until every batch has ended."
    )(func)


def table_options(func: F) -> F:
    """How a table's rows become requests (submit, render); passed on as `table`, a
    RowTemplate, or None for a JSONL job file."""
    options = [
        click.option("--prompt", help="Jinja2 template of each row's user message ({{ column }})."),
        click.option(
            "--template",
            "template_file",
            type=click.Path(dir_okay=False),
            help="Jinja2 file rendering each row as a JSON message list or request body.",
        ),
        click.option("--system", help="System message of each row's request (with --prompt)."),
        click.option("--id-column", help="Column holding each row's custom_id [row number]."),
        click.option(
            "--response-format",
            type=click.Path(dir_okay=False),
            help="JSON Schema file: each request asks for answers in it (json_schema).",
        ),
    ]

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        prompt: str | None,
        template_file: str | None,
        system: str | None,
        id_column: str | None,
        response_format: str | None,
        **kwargs: Any,
    ) -> Any:
        from batchrunner.tables import RowTemplate

        given = (prompt, template_file, system, id_column, response_format)
        table = RowTemplate(*given) if any(v is not None for v in given) else None
        return func(*args, table=table, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--mode", type=click.Choice(MODES), default=MODES[0], show_default=True)
@click.option("--name", help="Job name (default: the file name without extension).")
@click.option("--model", help="Model for lines that name none.")
@click.option("--endpoint", default=ENDPOINTS[0], show_default=True, help="Url of short lines.")
@run_options
@metrics_options
@click.option("--detach", is_flag=True, help="Record the job without running it.")
@click.option("--new", is_flag=True, help="Record a second job even if this file has one.")
@click.option("--reuse", is_flag=True, help="Take answers of identical requests that succeeded.")
@click.option("--redact", is_flag=True, help="Mask card numbers and keys in prompts first.")
@wait_options
@click.option("--simulate", is_flag=True, help="Run against the built-in fake server.")
@json_option
@table_options
@common
def submit(
    file: str,
    mode: str,
    name: str | None,
    model: str | None,
    endpoint: str,
    detach: bool,
    new: bool,
    reuse: bool,
    redact: bool,
    wait: bool,
    poll_interval: float,
    simulate: bool,
    json_: bool,
    db: str,
    table: RowTemplate | None,
    **run: Any,
) -> None:
    """Validate FILE, record every request in the ledger, and run the job. FILE is a JSONL job
    file, or with --prompt/--template a table (.csv, .parquet, .jsonl of rows, .arrow, or a
    saved Hugging Face dataset folder) whose every row becomes one request. A file that is
    already a job is taken up again: what is left of it runs (--new records a second job)."""
    overrides = _overrides(**run)  # stored with the job, but for what each run is given anew
    settings = RunSettings().merged(overrides)
    defaults = JobDefaults(endpoint=normalize_endpoint(endpoint), model=model)
    try:
        ledger, submitted = commands.submit_job(
            db,
            file,
            defaults=defaults,
            settings=settings,
            name=name,
            mode=mode,
            simulated=simulate,
            new=new,
            reuse=reuse,
            redact=redact,
            table=table,
            needs_key=not simulate and not detach,
        )
    except commands.AlreadyAJob as again:
        ledger = closed_at_the_end(Ledger(db, create=False))
        summary = commands.resubmitted(ledger, again.job_id, file, simulated=simulate, mode=mode)
        sys.exit(
            _submitted_again(ledger, summary, file, detach, overrides, wait, poll_interval, json_)
        )
    closed_at_the_end(ledger)
    models = ", ".join(f"{m} x{n:,}" for m, n in submitted.summary.models.items())
    flag = " [simulated]" if simulate else ""
    say(
        f"recorded job {submitted.job_id}{flag}: {submitted.summary.items:,} requests from "
        f"{file} ({models}) in {describe(db)}"
    )
    if redact:
        say(f"--redact masked {submitted.redacted:,} card numbers and keys in the prompts")
    if reuse:
        say(f"--reuse: {submitted.reused:,} answered by earlier jobs (no request, no cost)")
    from batchrunner.estimate import estimate_as_json, estimate_line

    say(estimate_line(submitted.estimate, mode))
    recorded = {"recorded": True, "estimate": estimate_as_json(submitted.estimate)}
    if detach:
        say(f"run it with: batchrunner run {submitted.job_id}")
        _json_summary(ledger, submitted.job_id, 0, json_, recorded)
        return
    code = _run_with_progress(ledger, submitted.job_id, overrides, wait, poll_interval)
    sys.exit(_json_summary(ledger, submitted.job_id, code, json_, recorded))


def _submitted_again(
    ledger: Ledger,
    summary: JobSummary,
    file: str,
    detach: bool,
    overrides: dict[str, Any],
    wait: bool,
    poll_s: float,
    json_: bool,
) -> int:
    """`submit` of a file that is already a job: say so and in what state, then run what is
    left of it, or (nothing left) show it as a run's summary would."""
    job_id = summary.id
    left = summary.counts.get("pending", 0) + summary.counts.get("running", 0)
    about = (
        f"{file} is already job {job_id} ({summary.state}, {left:,} of "
        f"{summary.item_count:,} items left; pass --new for a second job)"
    )
    again = {"recorded": False}
    if summary.state == "cancelled" or (summary.state == "completed" and not left):
        say(f"{about}: nothing left to run")
        status = _say_summary(ledger, job_id)
        code = commands.exit_code(ledger, RunReport(job_id, status["state"], None))
        return _json_summary(ledger, job_id, code, json_, again)
    if detach:
        say(f"{about}; run it with: batchrunner run {job_id}")
        return _json_summary(ledger, job_id, 0, json_, again)
    say(f"{about}: running what is left")
    code = _run_with_progress(ledger, job_id, overrides, wait, poll_s)
    return _json_summary(ledger, job_id, code, json_, again)


@cli.command()
@click.argument("job", required=False)
@click.option(
    "--retry-failed", is_flag=True, help="Put the failed items back to pending first, then run."
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="With --retry-failed: only the items failed with this error kind (repeatable).",
)
@run_options
@metrics_options
@wait_options
@click.option(
    "--simulate",
    is_flag=True,
    help="The job was recorded with --simulate (its runs always are); a real job is refused.",
)
@json_option
@common
def run(
    job: str | None,
    retry_failed: bool,
    kinds: tuple[str, ...],
    wait: bool,
    poll_interval: float,
    simulate: bool,
    json_: bool,
    db: str,
    **run: Any,
) -> None:
    """Run or resume JOB's unfinished items (default: the latest job); in batch mode, submit
    what is pending and settle the batches that ended (all of it, with --wait)."""
    if kinds and not retry_failed:
        raise click.UsageError("--kind chooses which failed items --retry-failed retries")
    ledger = closed_at_the_end(Ledger(db, create=False))
    job_id = ledger.find_job(job)
    if commands.check_simulated(ledger, job_id, simulate) and not simulate:
        say(f"job {job_id} was recorded with --simulate: it runs against the built-in fake server")
    if retry_failed:
        retried = commands.retry_failed(ledger, job_id, kinds)
        which = f" ({', '.join(kinds)})" if kinds else ""
        say(f"--retry-failed: {retried:,} failed items{which} of job {job_id} back to pending")
    code = _run_with_progress(ledger, job_id, _overrides(**run), wait, poll_interval)
    sys.exit(_json_summary(ledger, job_id, code, json_))


@cli.command()
@click.option("--job", "jobs", multiple=True, help="Job id or name (repeatable).")
@click.option("--all", "all_jobs", is_flag=True, help="Every concurrent job with work left.")
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(min=1),
    help="Seconds of silence after which a worker's items go to the others [60].",
)
@run_options
@metrics_options
@common
def worker(
    jobs: tuple[str, ...], all_jobs: bool, lease_s: float | None, db: str, **run: Any
) -> None:
    """Work on jobs beside other workers (any machine, one shared PostgreSQL ledger): claim
    items, send them, and leave when no work is left."""
    if bool(jobs) == all_jobs:
        raise click.UsageError("give --job JOB (one or more) or --all")
    ledger = closed_at_the_end(Ledger(db, create=False))
    job_ids = None if all_jobs else [ledger.find_job(job) for job in jobs]
    overrides = _overrides(**run, lease_s=lease_s)
    reports = commands.run_async(
        functools.partial(commands.run_worker, ledger, job_ids, overrides, handle_signals=True)
    )
    for report in reports:
        say(format_job(job_status(ledger.summary(report.job_id))))
    stopped = [r for r in reports if r.stop_reason and r.state != "cancelled"]
    if stopped:
        say(f"stopped early ({stopped[0].stop_reason})")
        sys.exit(3)
    sys.exit(max((commands.exit_code(ledger, r) for r in reports), default=0))


@cli.command()
@click.argument("job", required=False)
@common
def cancel(job: str | None, db: str) -> None:
    """Cancel JOB: its remote batches and its pending items; what finished stays. The runs
    working on it stop within seconds."""
    ledger = closed_at_the_end(Ledger(db, create=False))
    job_id = ledger.find_job(job)
    count = commands.cancel_job(ledger, job_id)
    say(f"cancelled {count:,} pending items of job {job_id}; what had finished stays")
    if live := len(ledger.runs_of(job_id)):
        say(f"{live} run(s) of it stop within seconds, once their requests in flight are answered")


def _run_with_progress(
    ledger: Ledger, job_id: int, overrides: dict[str, Any], wait: bool, poll_s: float
) -> int:
    """Run the job (in its mode) with a progress bar, then say how it ended."""
    from batchrunner.progress import ProgressBar

    before = job_status(ledger.summary(job_id))
    done = before["total"] - before["counts"]["pending"] - before["counts"]["running"]
    bar = ProgressBar(before["total"], done)
    report: RunReport | None = None
    try:
        report = commands.run(
            ledger,
            job_id,
            overrides,
            wait=wait,
            poll_s=poll_s,
            progress=bar,
            handle_signals=True,
        )
    except KeyboardInterrupt:  # before the run took over Ctrl-C, or during a batch job's wait
        pass
    finally:
        bar.close()
    if report is None:
        held = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C waits for it
        try:
            ledger.record_stop(job_id, "interrupted")  # what `status` tells, as after a run's
        finally:
            signal.signal(signal.SIGINT, held)
        say(f"stopped early (interrupted); resume with: batchrunner run {job_id}")
        return 3
    _say_summary(ledger, job_id)
    if report.state == "submitted":
        say(f"batches in progress; follow them with: batchrunner run {job_id} --wait")
    elif report.state == "cancelled":
        say(f"job {job_id} was cancelled; what had finished stays")
    elif report.state != "completed":
        reason = f" ({report.stop_reason})" if report.stop_reason else ""
        say(f"stopped early{reason}; resume with: batchrunner run {job_id}")
    return commands.exit_code(ledger, report)


def _say_summary(ledger: Ledger, job_id: int) -> dict[str, Any]:
    """The summary a run ends with: the job as `status` shows it, and once it has ended, the
    commands that come next (its results, its status); returns its `status --json` record."""
    status = job_status(ledger.summary(job_id))
    say(format_job(status))
    if found := results_step(status):
        say(f"  {found}")
    return status


def _json_summary(
    ledger: Ledger, job_id: int, code: int, json_: bool, extra: dict[str, Any] | None = None
) -> int:
    """With --json, the job as `status --json` has it (and the exit code) on stdout, for
    scripts; the progress and the human summary stay on stderr. Returns `code`."""
    if json_:
        record = {**(extra or {}), "exit_code": code, "job": job_status(ledger.summary(job_id))}
        show(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode(), json=True)
    return code


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--model", help="Model for lines that name none.")
@click.option("--endpoint", default=ENDPOINTS[0], show_default=True, help="Url of short lines.")
@click.option(
    "--assume-output",
    type=click.IntRange(0),
    help=f"Output tokens of a request that sets no max_tokens [{TYPICAL_OUTPUT}].",
)
@click.option("--base-url", help="The server it would run on: a local one's models are unpriced.")
@click.option("--prices", help="JSON or TOML prices (USD per 1M tokens) for models.")
@click.option("--price-as", multiple=True, metavar="[NAME=]MODEL", help="As for submit.")
@click.option(
    "--hosted-prices/--local-prices", "hosted_prices", default=None, help="As for submit."
)
@click.option("--json", "json_", is_flag=True, help="Print JSON.")
@table_options
def estimate(
    file: str,
    model: str | None,
    endpoint: str,
    assume_output: int | None,
    json_: bool,
    table: RowTemplate | None,
    **pricing: Any,
) -> None:
    """Tokens and cost of FILE in both modes, counted offline before anything is sent, priced
    as `submit` with the same options would price them. FILE is a job file, or with
    --prompt/--template a table, as `submit` takes it."""
    from batchrunner.estimate import estimate_as_json, format_estimate

    try:
        defaults = JobDefaults(endpoint=normalize_endpoint(endpoint), model=model)
        settings = RunSettings().merged(_overrides(**pricing))
        result = commands.estimate_file(file, defaults, settings, assume_output, table)
    except BatchrunnerError as exc:
        say(f"error: {exc}")
        sys.exit(exc.exit_code)
    if json_:
        show(orjson.dumps(estimate_as_json(result), option=orjson.OPT_INDENT_2).decode(), json=True)
    else:
        show(format_estimate(result))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--model", help="Model of every request (unless the template's body names one).")
@click.option("--endpoint", default=ENDPOINTS[0], show_default=True, help="Url of the requests.")
@click.option("-o", "--output", help="Output file (default: stdout).")
@table_options
def render(
    file: str, model: str | None, endpoint: str, output: str | None, table: RowTemplate | None
) -> None:
    """Write the JSONL job file (Batch API lines) that `submit` with these options would record
    from the table FILE, after the same checks; nothing is recorded or sent."""
    if table is None or (table.prompt is None and table.template is None):
        raise click.UsageError("render needs --prompt TEMPLATE or --template FILE")
    defaults = JobDefaults(endpoint=normalize_endpoint(endpoint), model=model)
    try:
        with _output(output) as out:
            count = commands.render_file(file, defaults, table, out)
    except BatchrunnerError as exc:
        say(f"error: {exc}")
        sys.exit(exc.exit_code)
    if output:
        say(f"wrote {count:,} requests from {file} to {output}")


@cli.command()
@click.argument("job", required=False)
@click.option("--json", "json_", is_flag=True, help="Print JSON.")
@common
def status(job: str | None, json_: bool, db: str) -> None:
    """Show JOB (default: all recent jobs) with counts, tokens, cost, progress and rate."""
    # Read-only where it must (a read-only mount, another user's ledger): then the batches
    # are shown as last recorded, not asked for.
    ledger = closed_at_the_end(Ledger(db, create=False, read_only=not writable(db)))
    ids = [ledger.find_job(job)] if job else ledger.job_ids()
    statuses = []
    for job_id in ids:
        _refresh_batches(ledger, job_id)
        summary = ledger.summary(job_id)  # one pass over the items: the costly part
        workers, batches = ledger.runs_of(job_id), ledger.batches_of(job_id, BATCH_STATES)
        statuses.append(job_status(summary, workers=workers, batches=batches))
    if json_:
        show(orjson.dumps({"jobs": statuses}, option=orjson.OPT_INDENT_2).decode(), json=True)
    elif not statuses:
        say(f"no jobs in {describe(db)}")
    else:
        show("\n".join(format_job(s) for s in statuses))


@cli.command()
@click.argument("job", required=False)
@click.option("-o", "--output", help="HTML file to write [job-N-report.html].")
@common
def report(job: str | None, output: str | None, db: str) -> None:
    """Write one self-contained HTML file about JOB (default: the latest job): its summary, then
    plots over its life (items, throughput, latency, 429s, errors), tokens and cost by model,
    errors with examples, batches and workers; from the ledger alone."""
    from batchrunner.report import write_report

    ledger = closed_at_the_end(Ledger(db, create=False))
    job_id = ledger.find_job(job)
    path = output or f"job-{job_id}-report.html"
    with _output(path) as out:
        write_report(ledger, job_id, out)
    say(f"wrote the report of job {job_id} to {path}")


def _refresh_batches(ledger: Ledger, job_id: int) -> None:
    """A batch job's live batches as the API sees them now; the recorded state if it can't
    (and nothing to ask for other jobs)."""
    try:
        commands.refresh_batches(ledger, job_id)
    except Exception as exc:
        say(f"warning: could not poll the batches of job {job_id}: {mask(str(exc))}")


@cli.group()
def export() -> None:
    """Write results or failed items back out."""


@contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or a file written in full before it replaces any old one."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    handle = tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".partial")  # noqa: SIM115
    try:
        with handle:
            yield handle
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def export_options(func: F) -> F:
    """Which job, and where to: the same on every export."""
    func = click.option("-o", "--output", help="Output file (default: stdout).")(func)
    return click.option("--job", help="Job id or name (default: the latest job).")(func)


def _export(
    db: str,
    job: str | None,
    output: str | None,
    what: str,
    write: Callable[[Ledger, int, IO[bytes]], int],
) -> None:
    """Find the job, write it out (to stdout, or a file replaced only once complete)."""
    ledger = closed_at_the_end(Ledger(db, create=False, read_only=True))
    job_id = ledger.find_job(job)
    with _output(output) as out:
        count = write(ledger, job_id, out)
    if output:
        say(f"wrote {count:,} {what} of job {job_id} to {output}")


@export.command("results")
@export_options
@click.option(
    "--format", "fmt", type=click.Choice(RESULT_FORMATS), default="jsonl", show_default=True
)
@common
def export_results(job: str | None, output: str | None, fmt: str, db: str) -> None:
    """One record per item, in input order: response, error, attempts, tokens, cost. openai:
    the Batch API's output lines; csv/parquet of a job from a table: its rows, answers beside."""
    _export(
        db,
        job,
        output,
        "results",
        lambda ledger, job_id, out: write_results(ledger, job_id, out, fmt),
    )


@export.command("errors")
@export_options
@common
def export_errors(job: str | None, output: str | None, db: str) -> None:
    """The failed items as a Batch API job file, ready to submit again."""
    _export(db, job, output, "failed items", write_errors)


@export.command("usage")
@export_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@common
def export_usage(job: str | None, output: str | None, fmt: str, db: str) -> None:
    """Per item: custom_id, model, mode, tokens and cost."""
    _export(
        db,
        job,
        output,
        "usage records",
        lambda ledger, job_id, out: write_usage(ledger, job_id, out, fmt),
    )


@cli.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--error-rate-429", type=float, default=0.0, show_default=True)
@click.option("--error-rate-5xx", type=float, default=0.0, show_default=True)
@click.option("--drop-rate", type=float, default=0.0, show_default=True)
@click.option("--rpm-limit", type=int, help="Enforce requests/min like the real API.")
@click.option("--tpm-limit", type=int, help="Enforce tokens/min like the real API.")
@click.option("--seed", type=int)
@click.option("--prompt-cache", is_flag=True, help="Simulate OpenAI's prompt caching.")
@click.option(
    "--cache-machines",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Machines in the simulated prompt-cache pool.",
)
@click.option(
    "--cache-pair-rpm",
    type=click.IntRange(min=0),
    default=15,
    show_default=True,
    help="Requests/min a prefix-and-key pair gets on its machine before overflowing.",
)
@click.option(
    "--cache-ttl",
    "cache_ttl_s",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds a cached prefix lasts unused (with 24h retention: a day).",
)
def fake_server(host: str, port: int, **knobs: Any) -> None:
    """Serve the fake OpenAI-compatible API, to rehearse a pipeline without a key."""
    from batchrunner.fake import FakeConfig, serve_forever

    config = FakeConfig(**knobs)
    say(f"fake OpenAI-compatible server on http://{host}:{port}/v1 (Ctrl-C to stop)")
    serve_forever(host, port, config)


def main() -> None:
    global _IS_THE_PROCESS
    _IS_THE_PROCESS = True
    install_excepthook()
    cli(prog_name="batchrunner")


if __name__ == "__main__":
    main()
