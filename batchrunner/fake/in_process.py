"""A `BatchBackend` over the fake server's Batch API in this process: no HTTP, no SDK.

It exists as the in-memory twin of backends/openai_batches.py (as procrastinate's
InMemoryConnector is of its PostgreSQL connector, or httpx's MockTransport of a real
transport): the batch state machine can be driven and tested without sockets, threads waiting
on answers, or the SDK's retries; and the `BatchBackend` Protocol is proven by two
implementations that must give the same results (tests/test_batch_backends.py runs one
contract against both).

It calls the core of `FakeBatchApi` (fake/batches.py), counts each call in the fake's `calls`
as the HTTP route would, and turns a refusal into `BackendError` through the dialect's
`judge_reply`, exactly as the SDK backend classifies an HTTP answer.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from batchrunner.backends.base import FIND_PAGE, FIND_PAGES_MAX, BatchProblem, RemoteBatch
from batchrunner.dialects.openai import judge_reply
from batchrunner.errors import BackendError
from batchrunner.failures import ErrorKind
from batchrunner.fake.batches import Refusal
from batchrunner.fake.server import FakeServer

T = TypeVar("T")


class InProcessBatches:
    """A `BatchBackend` calling `server.batch_api` directly, from any thread."""

    def __init__(self, server: FakeServer) -> None:
        self._api = server.batch_api

    def _ask(self, route: str, call: Callable[[], T | Refusal]) -> T:
        """One call to the fake, counted under its route's name; a refusal raised."""
        self._api.called(route)
        answer = call()
        if isinstance(answer, Refusal):
            raise _backend_error(answer)
        return answer

    def upload(self, path: Path) -> str:
        content = path.read_bytes()
        stored = self._ask("upload", partial(self._api.upload_file, path.name, "batch", content))
        return str(stored["id"])

    def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        payload = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        return _remote(self._ask("create", partial(self._api.create_batch, payload)))

    def find(self, key: str, value: str) -> RemoteBatch | None:
        """The newest batch whose metadata has key=value, among the recent ones."""
        after: str | None = None
        for _ in range(FIND_PAGES_MAX):
            page = self._ask("list", partial(self._api.list_batches, FIND_PAGE, after))
            for batch in page["data"]:
                if (batch["metadata"] or {}).get(key) == value:
                    return _remote(batch)
            if not page["has_more"] or not page["data"]:
                return None
            after = page["last_id"]
        return None

    def retrieve(self, batch_id: str) -> RemoteBatch:
        return _remote(self._ask("retrieve", partial(self._api.retrieve_batch, batch_id)))

    def cancel(self, batch_id: str) -> RemoteBatch:
        return _remote(self._ask("cancel", partial(self._api.cancel_batch, batch_id)))

    def lines(self, file_id: str, scratch: Path) -> Iterator[bytes]:
        """The file's non-blank lines, newline kept, from memory (`scratch` goes unused)."""
        content = self._ask("content", partial(self._api.file_content, file_id))
        for line in io.BytesIO(content):  # split as a file opened "rb" splits
            if line.strip():
                yield line

    def delete_file(self, file_id: str) -> None:
        try:
            self._ask("delete", partial(self._api.delete_file, file_id))
        except BackendError as exc:
            if exc.status != 404:  # 404: deleted already
                raise


def _backend_error(refusal: Refusal) -> BackendError:
    body = refusal.body if isinstance(refusal.body, bytes) else orjson.dumps(refusal.body)
    verdict = judge_reply(refusal.status, body, None)
    kind = verdict.kind or ErrorKind.BAD_RESPONSE  # a refusal with status 200
    message = f"HTTP {refusal.status}: {verdict.message}"
    return BackendError(kind, message, verdict.code, refusal.status)


def _remote(batch: dict[str, Any]) -> RemoteBatch:
    """The API's description of a batch, as openai_batches._remote reads the SDK's."""
    counts = batch.get("request_counts") or {}
    errors = batch.get("errors") or {}
    return RemoteBatch(
        id=batch["id"],
        status=batch["status"],
        total=counts.get("total", 0),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        output_file_id=batch.get("output_file_id"),
        error_file_id=batch.get("error_file_id"),
        problems=tuple(
            BatchProblem(e.get("code"), e.get("message"), e.get("line"))
            for e in errors.get("data") or []
        ),
        metadata=dict(batch.get("metadata") or {}),
        usage=batch.get("usage"),
    )
