"""Read a JSONL job file, streaming, and turn each line into a validated `JobItem`.

Two line forms are accepted:

- the OpenAI Batch API line, as-is: {"custom_id", "method": "POST", "url", "body"}; any other
  top-level key (for example "metadata") is kept and comes back in the export;
- a short form: the request body itself, with an optional "custom_id" (or "id") and "url".

`check_job_file` reads the whole file once and raises `JobFileError` listing up to 20 problems,
each naming file:line, before anything is written anywhere. `read_job_items` then yields the
items for the ledger. Neither holds more than one line (and a small duplicate filter) in memory.

Both go through a `RequestSource`: a JSONL job file here (`JobFile`), or a table whose rows a
template makes into the same Batch API lines (tables.py), so one checking and one recording path
serve both, with row numbers where a table has rows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from batchrunner.dialects.openai import (
    BATCH_LINE_KEYS,
    CHAT,
    DEFAULT_MODELS,
    ENDPOINTS,
    batchless_reason,
    body_problem,
    normalize_endpoint,
)
from batchrunner.duplicates import DuplicateFinder, confirm_duplicates
from batchrunner.errors import JobFileError, Problem, describe_value
from batchrunner.items import JobItem

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_PROBLEMS_SHOWN = 20
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class JobDefaults:
    """What fills the gaps of short-form lines (`--endpoint`, `--model`)."""

    endpoint: str = CHAT
    model: str | None = None


@dataclass
class FileSummary:
    """What `check_job_file` learned: enough to record the job and show what is coming."""

    path: str
    items: int = 0
    sha256: str = ""
    endpoints: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)


class LineError(Exception):
    """A problem with one line (or a table's row); becomes a `Problem` with the file and its
    number attached."""


# What a source yields for each line or row: a JSONL line's bytes, a request a table row became
# (a Batch API line as a dict, new for each pass: it is taken apart), the reason a row could not
# become one, or None for a line over MAX_LINE_BYTES.
Entry = bytes | dict[str, Any] | LineError | None


class RequestSource(Protocol):
    """Where a job's requests come from, read as often as checking and recording need."""

    path: str
    unit: str  # what the numbers count, for the problems: "line" or "row"

    def entries(self, digest: Any = None) -> Iterator[tuple[int, Entry]]:
        """(number, entry) for each request, in order; `digest` (a hashlib object) is fed
        what identifies the source (`submit` refuses to record the same source twice)."""
        ...

    def expected_items(self) -> int:
        """About how many requests, to size the duplicate filter."""
        ...

    def occurrences(self, defaults: JobDefaults, suspects: set[str]) -> Iterator[tuple[str, int]]:
        """(custom_id, number) wherever one of `suspects` is an entry's id (the duplicate
        filter's second look, which may skip what cannot hold one cheaply)."""
        ...


def _custom_id(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise LineError(f"{key} must be a non-empty string, got {describe_value(value)}")
    return value


class TypoCheck:
    """Refuses an unknown key a typo away from a known one the line lacks ("custnm_id",
    "mehtod"): kept as an extra key or sent in the body, it would silently leave the real one
    at its default. A line that has the known key (`custom_id` beside `customer_id`) means
    both. Lines repeat their keys, so each key is weighed once (and a file's keys are few)."""

    MAX_REMEMBERED = 10_000

    def __init__(self, known: tuple[str, ...]) -> None:
        self._known = known
        self._near: dict[str, tuple[str, ...]] = {}  # a key -> the known keys it is near

    def __call__(self, line: dict[str, Any]) -> None:
        near = self._near
        for key in line:
            if key in self._known:
                continue
            close = near.get(key)
            if close is None:
                close = self._close_to(key)
                if len(near) < self.MAX_REMEMBERED:
                    near[key] = close
            for meant in close:
                if meant not in line:
                    raise LineError(f'unknown key "{key}": did you mean "{meant}"?')

    def _close_to(self, key: str) -> tuple[str, ...]:
        return tuple(
            known
            for known in self._known
            if edit_distance(key, known) <= (1 if len(known) <= 4 else 2)
        )


_ABSENT = object()  # a key the line does not have (null is a value, and a wrong one)
_BATCH_KEYS = frozenset(BATCH_LINE_KEYS)
_batch_line_typos = TypoCheck(BATCH_LINE_KEYS)
_short_line_typos = TypoCheck(("custom_id", "url"))  # a short line's other keys are the body's


def edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that make `a` into `b`
    (the optimal string alignment distance)."""
    if abs(len(a) - len(b)) > 2:
        return 3  # more than any threshold asks about
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, other in enumerate(b, start=1):
            cost = char != other
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char == b[j - 2] and a[i - 2] == other:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def parse_line(raw: Entry, position: int, defaults: JobDefaults) -> JobItem:
    """Validate one line (without its newline) or entry and build its item, or raise
    `LineError`."""
    custom_id, url, body, extra = _parse_entry(raw, position, defaults)
    return JobItem(
        position=position,
        custom_id=custom_id,
        url=url,
        body=orjson.dumps(body),
        extra=orjson.dumps(extra) if extra else None,
        model=body["model"],
    )


Parsed = tuple[str, str, dict[str, Any], dict[str, Any] | None]


def _parse_entry(entry: Entry, position: int, defaults: JobDefaults) -> Parsed:
    """Validate one entry of a source: its custom_id, url, body and extra keys, or raise
    `LineError`. The check pass needs no more than this; `parse_line` also encodes them."""
    if type(entry) is bytes:
        return _parse(entry, position, defaults)
    if entry is None:
        raise LineError(_too_long())
    if isinstance(entry, LineError):
        raise entry
    assert isinstance(entry, dict)
    return _parse_request(entry, position, defaults)


def _parse(raw: bytes, position: int, defaults: JobDefaults) -> Parsed:
    """Validate one JSONL line (see `_parse_entry`)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise LineError(
                f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})"
            ) from None
        # orjson's own "line 1 column N" would contradict the file:line in front of it
        raise LineError(f"invalid JSON at column {exc.pos + 1}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {describe_value(obj)}")
    return _parse_request(obj, position, defaults)


def _parse_request(obj: dict[str, Any], position: int, defaults: JobDefaults) -> Parsed:
    """Validate one request, a line's JSON object (taken apart in doing so)."""
    extra: dict[str, Any] | None = None
    if "body" in obj or "method" in obj:  # the Batch API line form; what is left is extra
        if not obj.keys() <= _BATCH_KEYS:  # an extra key, unless a typo of a key it lacks
            _batch_line_typos(obj)
        method = obj.pop("method", "POST")
        if method != "POST":
            raise LineError(f'method must be "POST", got {orjson.dumps(method).decode()}')
        if "body" not in obj:
            raise LineError('missing "body"')
        body = obj.pop("body")
        if not isinstance(body, dict):
            raise LineError(f'"body" must be an object, got {describe_value(body)}')
        given_id = obj.pop("custom_id", _ABSENT)
        url = obj.pop("url", defaults.endpoint)
        if given_id is _ABSENT:  # OpenAI and vLLM refuse such a line: so does the check
            raise LineError(
                'missing "custom_id" (a Batch API line needs one; only a short line may go '
                "without, and then gets its line number)"
            )
        custom_id = _custom_id(given_id, "custom_id")
        extra = obj or None
    else:  # the short form: the body itself
        body = obj
        _short_line_typos(body)
        custom_id = str(position)
        for key in ("custom_id", "id"):
            if key in body:
                custom_id = _custom_id(body.pop(key), key)
                break
        url = body.pop("url", defaults.endpoint)
    if url not in ENDPOINTS:  # most lines name one exactly
        if not isinstance(url, str):
            raise LineError(f'"url" must be a string, got {describe_value(url)}')
        url = normalize_endpoint(url)
        if url not in ENDPOINTS:
            raise LineError(f'unknown url "{url}"; expected one of {", ".join(ENDPOINTS)}')
    if "model" not in body and (chosen := defaults.model or DEFAULT_MODELS.get(url)):
        body["model"] = chosen
    problem = body_problem(url, body)
    if problem is not None:
        raise LineError(problem)
    return custom_id, url, body, extra


def _open(path: str) -> Any:
    """The file for reading; a pipe is refused, because it is read three times (check,
    duplicates, record) and a pipe can be read only once."""
    if not os.path.exists(path):
        raise JobFileError([Problem(path, 0, "no such file")])
    if os.path.isdir(path):
        raise JobFileError([Problem(path, 0, "is a directory, not a job file")])
    if not os.path.isfile(path):
        raise JobFileError(
            [Problem(path, 0, "is not a regular file (a pipe or a device?): save it to a file")]
        )
    try:
        return open(path, "rb")
    except OSError as exc:
        raise JobFileError([Problem(path, 0, f"cannot read: {exc.strerror}")]) from None


def file_lines(path: str, digest: Any = None) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, content without line ending) for each non-blank line; content is
    None for a line over MAX_LINE_BYTES, whose bytes are skipped rather than held."""
    with _open(path) as handle:
        number = 0
        readline = handle.readline
        while True:
            chunk = readline(MAX_LINE_BYTES + 1)
            if not chunk:
                return
            number += 1
            if digest is not None:
                digest.update(chunk)
            if number == 1 and chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM) :]
            if number == 1 and chunk.startswith(UTF16_BOMS):  # every line would be an error
                raise JobFileError([Problem(path, 1, "the file is UTF-16: save it as UTF-8")])
            if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
                while chunk and not chunk.endswith(b"\n"):  # skip the rest of the long line
                    chunk = handle.readline(MAX_LINE_BYTES)
                    if digest is not None:
                        digest.update(chunk)
                yield number, None
                continue
            line = chunk.rstrip(b"\r\n")
            if line and not line.isspace():  # as `line.strip()`, without copying the line
                yield number, line


def _too_long() -> str:
    return f"line is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB, the limit for one request"


class JobFile:
    """A JSONL job file as a `RequestSource`: its lines, the file's bytes as its identity."""

    unit = "line"

    def __init__(self, path: str) -> None:
        self.path = path

    def entries(self, digest: Any = None) -> Iterator[tuple[int, Entry]]:
        return file_lines(self.path, digest)

    def expected_items(self) -> int:
        return max(1, os.path.getsize(self.path) // 64 if os.path.isfile(self.path) else 0)

    def occurrences(self, defaults: JobDefaults, suspects: set[str]) -> Iterator[tuple[str, int]]:
        needles = [orjson.dumps(s) for s in suspects]
        for number, raw in file_lines(self.path):
            if raw is None:
                continue
            if str(number) not in suspects and not any(n in raw for n in needles):
                continue
            try:
                custom_id = _parse(raw, number, defaults)[0]
            except LineError:
                continue
            if custom_id in suspects:
                yield custom_id, number


def check_job_file(path: str, defaults: JobDefaults) -> FileSummary:
    """Validate the whole file; raise `JobFileError` with the first problems, in line order."""
    return check_source(JobFile(path), defaults)


def check_source(
    source: RequestSource, defaults: JobDefaults, *, batch: bool = False
) -> FileSummary:
    """Validate every request of a source; raise `JobFileError` with the first problems, in
    order, each naming the file and the line or row. With `batch` (a job for the Batch API), a
    model the Batch API does not take is a problem too."""
    path, unit = source.path, source.unit
    summary = FileSummary(path=path)
    finder = DuplicateFinder(expected_items=source.expected_items())
    problems: list[Problem] = []
    problem_count = 0
    digest = hashlib.sha256()
    last_line = items = 0
    add, endpoints, models = finder.add, summary.endpoints, summary.models
    for number, raw in source.entries(digest):
        last_line = number
        try:
            custom_id, url, body, _ = _parse_entry(raw, number, defaults)
        except LineError as exc:
            problem_count += 1
            if len(problems) < MAX_PROBLEMS_SHOWN:
                problems.append(Problem(path, number, str(exc), unit))
            continue
        model = body["model"]
        if batch and (what := batchless_reason(model)):
            problem_count += 1
            if len(problems) < MAX_PROBLEMS_SHOWN:
                problems.append(Problem(path, number, _no_batch_api(model, what), unit))
        add(custom_id)
        items += 1
        endpoints[url] = endpoints.get(url, 0) + 1
        models[model] = models.get(model, 0) + 1
    summary.items = items
    if finder.maybe_repeated:
        repeats = confirm_duplicates(source.occurrences(defaults, finder.maybe_repeated))
        for line, custom_id, first in repeats:
            problem_count += 1
            problems.append(
                Problem(
                    path, line, f'duplicate custom_id "{custom_id}" (first on {unit} {first})', unit
                )
            )
        problems.sort(key=lambda p: p.line)
        problems = problems[:MAX_PROBLEMS_SHOWN]
    if problems:
        if isinstance(source, JobFile):
            _explain_cut_last_line(path, problems, last_line)
        raise JobFileError(problems, more=problem_count - len(problems))
    if summary.items == 0:
        raise JobFileError([Problem(path, 0, "no requests in the file (it is empty or blank)")])
    summary.sha256 = digest.hexdigest()
    return summary


def _no_batch_api(model: str, what: str) -> str:
    return (
        f'model "{model}" has no Batch API ({what}): send it in concurrent mode (--mode concurrent)'
    )


def _explain_cut_last_line(path: str, problems: list[Problem], last_line: int) -> None:
    """An invalid last line with no newline is most often a file cut short: say so."""
    last = problems[-1]
    if last.line != last_line or not last.message.startswith("invalid JSON"):
        return
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 1))
        if handle.read(1) != b"\n":
            problems[-1] = Problem(path, last.line, last.message + " (the last line is cut short)")


def read_job_items(path: str, defaults: JobDefaults) -> Iterator[JobItem]:
    """Yield the items of a file that `check_job_file` accepted."""
    return read_source_items(JobFile(path), defaults)


def read_source_items(source: RequestSource, defaults: JobDefaults) -> Iterator[JobItem]:
    """Yield the items of a source that `check_source` accepted."""
    for number, raw in source.entries():
        try:
            yield parse_line(raw, number, defaults)
        except LineError as exc:  # the file changed since it was checked
            raise JobFileError([Problem(source.path, number, str(exc), source.unit)]) from None
