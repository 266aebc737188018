"""The two seams between batchrunner and a provider, as Protocols, and the provider-neutral
values that cross them.

- A `RequestBackend` sends one request and hands back what came of it: a `Reply` (any HTTP
  answer, with the hints its headers gave) or a `TransportFailure` (no usable answer). It never
  retries and never judges: the dialect classifies the reply, the runner decides.
- A `BatchBackend` is a provider's Files and Batch API: upload an input file, create a batch,
  find one by its metadata, poll, cancel, read back output and error files. A call the API
  refused raises `BackendError` with the failure's `ErrorKind`, so the batch runner decides
  from the rule table (failures.py) and never sees an SDK or its exceptions.

Implementations: backends/http.py (pyreqwest, the OpenAI-compatible request backend),
backends/openai_batches.py (the openai SDK), fake/in_process.py (the fake server's Batch API,
called in this process).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from batchrunner.dialects import ServerLimits
from batchrunner.failures import ErrorKind

TERMINAL_BATCH_STATES = ("completed", "failed", "expired", "cancelled")
# How far back `BatchBackend.find` looks, in list pages: the newest 2,000 batches.
FIND_PAGE = 100
FIND_PAGES_MAX = 20


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, whatever its status."""

    status: int
    body: bytes
    latency_ms: float
    retry_after: float | None  # seconds the server asked us to wait, from its headers
    limits: ServerLimits | None = None  # the rate-limit headers, when the server sent any


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No usable answer: kind is timeout, connection or bad_response."""

    kind: ErrorKind
    message: str
    latency_ms: float


class RequestBackend(Protocol):
    """Sends one request at a time, many at once; an async context manager for its client."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def post(
        self, url: str, body: bytes, custom_id: str, model: str = ""
    ) -> Reply | TransportFailure:
        """Send `body` to the endpoint `url` (such as /v1/chat/completions), exactly once;
        `model` is the one the body names (some providers address it in the URL)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchProblem:
    """One entry of a failed batch's errors: why, and which input line if it says."""

    code: str | None
    message: str | None
    line: int | None


@dataclass(frozen=True, slots=True)
class RemoteBatch:
    """What the API says about one batch."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    problems: tuple[BatchProblem, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_BATCH_STATES


class BatchBackend(Protocol):
    """A provider's Files and Batch API. Reads may retry inside; `create` never does (a
    retried create after a lost answer could start the same batch twice: the caller looks
    the batch up by its metadata with `find` instead)."""

    def upload(self, path: Path) -> str:
        """Upload an input file; return its file id."""
        ...

    def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        """Create a batch over an uploaded file, with a 24 h window."""
        ...

    def find(self, key: str, value: str) -> RemoteBatch | None:
        """The newest batch whose metadata has key=value, among the recent ones."""
        ...

    def retrieve(self, batch_id: str) -> RemoteBatch: ...

    def cancel(self, batch_id: str) -> RemoteBatch: ...

    def lines(self, file_id: str, scratch: Path) -> Iterator[bytes]:
        """The non-blank lines of an output or error file, streamed through `scratch`."""
        ...

    def delete_file(self, file_id: str) -> None:
        """Delete an input, output or error file. A file that is not there (deleted before)
        is no error: deleting is safe to repeat."""
        ...
