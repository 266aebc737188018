"""The Files and Batch API through the openai SDK, in provider-neutral types.

Reads (retrieve, list, download) may be retried by the SDK; `create` may not: a retried create
after a lost answer could start the same batch twice. A failed create is instead resolved by
looking the batch up by the metadata token it was created with (`find`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from openai.types import Batch

READ_RETRIES = 3
LIST_PAGE = 100
LIST_PAGES_MAX = 20  # how far back `find` looks: the newest 2,000 batches
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True, slots=True)
class BatchProblem:
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
        return self.status in TERMINAL


def _remote(batch: Batch) -> RemoteBatch:
    counts = batch.request_counts
    problems = (
        tuple(BatchProblem(e.code, e.message, e.line) for e in (batch.errors.data or []))
        if batch.errors
        else ()
    )
    return RemoteBatch(
        id=batch.id,
        status=batch.status,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        problems=problems,
        metadata=dict(batch.metadata or {}),
        usage=batch.usage.model_dump() if batch.usage else None,
    )


class BatchApi:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 600.0) -> None:
        client = openai.OpenAI(
            api_key=api_key or "none", base_url=base_url, timeout=timeout, max_retries=0
        )
        self._once = client
        self._retrying = client.with_options(max_retries=READ_RETRIES)

    def upload(self, path: Path) -> str:
        with path.open("rb") as handle:
            return self._retrying.files.create(file=(path.name, handle), purpose="batch").id

    def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        batch = self._once.batches.create(
            input_file_id=input_file_id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata,
        )
        return _remote(batch)

    def find(self, key: str, value: str) -> RemoteBatch | None:
        """The newest batch whose metadata has key=value, among the recent ones."""
        page = self._retrying.batches.list(limit=LIST_PAGE)
        for _ in range(LIST_PAGES_MAX):
            for batch in page.data:
                if (batch.metadata or {}).get(key) == value:
                    return _remote(batch)
            if not page.has_next_page():
                return None
            page = page.get_next_page()
        return None

    def retrieve(self, batch_id: str) -> RemoteBatch:
        return _remote(self._retrying.batches.retrieve(batch_id))

    def cancel(self, batch_id: str) -> RemoteBatch:
        return _remote(self._retrying.batches.cancel(batch_id))

    def download(self, file_id: str, destination: Path) -> None:
        """Stream a file to disk: output files can be hundreds of MB."""
        with (
            self._retrying.files.with_streaming_response.content(file_id) as response,
            destination.open("wb") as out,
        ):
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)

    def lines(self, file_id: str, scratch: Path) -> Iterator[bytes]:
        """The file's lines, read back from a downloaded copy in `scratch`."""
        path = scratch / f"{file_id}.jsonl"
        self.download(file_id, path)
        try:
            with path.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        yield line
        finally:
            path.unlink(missing_ok=True)
