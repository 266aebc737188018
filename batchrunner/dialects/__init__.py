"""Providers' wire formats. A dialect is a module of pure functions (dialects/openai.py is the
one there is); the runners take it as a `Dialect`, so that another provider's module can stand
in for it. `ServerLimits` is what any dialect reads out of a server's rate-limit headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from batchrunner.failures import ErrorKind, Verdict
from batchrunner.structured import Answer, OutputFormat
from batchrunner.usage import Usage


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one answer's rate-limit headers say; None where a header was missing."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    @property
    def empty(self) -> bool:
        return self == ServerLimits()


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One line of a batch's output or error file, judged like the same answer online."""

    custom_id: str
    verdict: Verdict
    http_status: int | None  # None: the batch never ran the line
    body: str | None  # the answer's body as JSON text


class Dialect(Protocol):
    """What the runners ask of a provider's wire format."""

    NAME: str
    BATCH_MAX_BYTES: int
    BATCH_MAX_INPUTS: int

    def judge_reply(self, status: int, body: bytes, retry_after: float | None) -> Verdict: ...

    def read_usage(self, body: dict[str, Any]) -> Usage: ...

    def read_finish_reason(self, body: dict[str, Any]) -> str | None: ...

    def output_text(self, response: dict[str, Any]) -> str | None: ...

    def requested_format(self, url: str, body: dict[str, Any]) -> OutputFormat | None: ...

    def answer_texts(self, response: dict[str, Any]) -> list[Answer]: ...

    def auth_headers(self, api_key: str | None) -> dict[str, str]: ...

    def batch_line(
        self, custom_id: str, url: str, body: str, extra: str | None = None
    ) -> bytes: ...

    def batch_line_size(self, custom_id: str, url: str, body: str) -> int: ...

    def batch_inputs(self, url: str, body: str) -> int: ...

    def read_batch_line(self, raw: bytes) -> BatchLine | None: ...

    def batch_problem_kind(self, code: str | None) -> ErrorKind: ...
