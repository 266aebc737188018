"""The fake server's Files and Batch API: upload, create, poll, cancel, download.

A batch moves through validating -> in_progress -> finalizing -> completed on a clock (the
`batch_*_s` knobs, fractions of a second in tests); its state is worked out whenever someone
looks, so nothing runs in the background. Each input line is answered like the online endpoint
would answer it, markers included (`[fake:500]` gives a line with status_code 500), and:

- `[fake:batch_invalid]` in a line fails the batch's validation, naming that line;
- `[fake:batch_omit]` leaves the line out of both output files;
- `batch_expire_after = N` answers the first N lines and expires the rest (`batch_expired`);
- `batch_token_limit` fails a batch whose prompt tokens, with those of the unfinished batches,
  exceed it (`token_limit_exceeded`), as the real API does after `create` succeeded.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from batchrunner.fake import answers
from batchrunner.fake.faults import error_answer, forced_answer

if TYPE_CHECKING:
    from batchrunner.fake.server import FakeServer

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created_at: int
    started: float  # monotonic
    lines: list[dict[str, Any]]
    prompt_tokens: int
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation or token limit
    cancelled_at: float | None = None
    settled: str | None = None  # the final status, once its files are written
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"completed": 0, "failed": 0})
    stamps: dict[str, int] = field(default_factory=dict)


class FakeBatchApi:
    """Routes and state for /v1/files and /v1/batches, attached to a FakeServer."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.lines_by_id: Counter[str] = Counter()  # batch lines answered, per custom_id
        self.batches_created = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}", self._file)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_delete("/v1/files/{file_id}", self._delete_file)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)

    # -- files ---------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
            return _error(400, "A multipart form with 'file' and 'purpose' is required.")
        stored = self._store(upload.filename or "upload.jsonl", purpose, upload.file.read())
        return _json(stored.describe())

    def _store(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, content, _now())
        self.files[stored.id] = stored
        return stored

    async def _file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        return _json(stored.describe()) if stored else _error(404, "No such File object.")

    async def _file_content(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return _error(404, "No such File object.")
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        deleted = self.files.pop(file_id, None) is not None
        return _json({"id": file_id, "object": "file", "deleted": deleted})

    # -- batches -------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        config = self.server.config
        if config.force_status is not None:
            forced = forced_answer(config.force_status, config.force_code)
            return web.Response(
                body=orjson.dumps(forced.body),
                status=forced.status,
                content_type="application/json",
            )
        payload = await request.json()
        stored = self.files.get(str(payload.get("input_file_id")))
        endpoint = payload.get("endpoint")
        if stored is None:
            return _error(400, "Invalid 'input_file_id': no such file.")
        if endpoint not in ENDPOINTS or payload.get("completion_window") != "24h":
            return _error(400, "Invalid 'endpoint' or 'completion_window'.")
        lines, errors = _validate(stored.content, str(endpoint))
        tokens = sum(answers.prompt_of(endpoint, line["body"])[1] for line in lines)
        limit = self.server.config.batch_token_limit
        if not errors and limit is not None:
            enqueued = sum(b.prompt_tokens for b in self.batches.values() if self._is_active(b))
            if enqueued + tokens > limit:
                errors = [_token_limit_error(lines, limit)]
        batch = FakeBatch(
            id=f"batch_{uuid.uuid4().hex[:24]}",
            input_file_id=stored.id,
            endpoint=str(endpoint),
            metadata=payload.get("metadata"),
            created_at=_now(),
            started=time.monotonic(),
            lines=lines,
            prompt_tokens=0 if errors else tokens,
            errors=errors,
        )
        self.batches[batch.id] = batch
        self.batches_created += 1
        return _json(self._describe(batch))

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        newest_first = list(reversed(self.batches.values()))
        if after is not None:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        page = newest_first[:limit]
        data = [self._describe(b) for b in page]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(newest_first) > limit,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        return _json(self._describe(batch)) if batch else _error(404, "No such batch.")

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such batch.")
        if self._status(batch) in ("validating", "in_progress"):
            batch.cancelled_at = time.monotonic()
            batch.stamps["cancelling_at"] = _now()
        return _json(self._describe(batch))

    # -- the clock -----------------------------------------------------------------------------

    def _is_active(self, batch: FakeBatch) -> bool:
        return self._status(batch) in ACTIVE

    def _status(self, batch: FakeBatch) -> str:
        """Where the batch stands now; settling it (writing its files) when it ends."""
        if batch.settled is not None:
            return batch.settled
        config = self.server.config
        elapsed = time.monotonic() - batch.started
        validating, working = config.batch_validating_s, config.batch_in_progress_s
        finishing = config.batch_finalizing_s
        if elapsed < validating:
            return "validating"
        if batch.errors:
            return self._settle(batch, "failed", 0)
        if batch.cancelled_at is not None:
            done = self._done_lines(batch, batch.cancelled_at - batch.started)
            if time.monotonic() - batch.cancelled_at < finishing:
                return "cancelling"
            return self._settle(batch, "cancelled", done)
        if elapsed < validating + working:
            batch.stamps.setdefault("in_progress_at", _now())
            done = self._done_lines(batch, elapsed)
            batch.counts["completed"] = done  # progress as the real API reports it
            return "in_progress"
        if elapsed < validating + working + finishing:
            batch.stamps.setdefault("in_progress_at", _now())
            batch.stamps.setdefault("finalizing_at", _now())
            return "finalizing"
        expire_after = config.batch_expire_after
        if expire_after is not None and expire_after < len(batch.lines):
            return self._settle(batch, "expired", expire_after)
        return self._settle(batch, "completed", len(batch.lines))

    def _done_lines(self, batch: FakeBatch, elapsed: float) -> int:
        config = self.server.config
        share = (elapsed - config.batch_validating_s) / max(config.batch_in_progress_s, 1e-9)
        return max(0, min(len(batch.lines), int(len(batch.lines) * share)))

    def _settle(self, batch: FakeBatch, status: str, answered: int) -> str:
        """Answer the first `answered` lines, end the rest as the status says, write files."""
        outputs: list[bytes] = []
        failures: list[bytes] = []
        for index, line in enumerate(batch.lines):
            if status == "failed":
                break
            custom_id = line["custom_id"]
            if b"[fake:batch_omit]" in line["raw"]:
                continue
            if index >= answered:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                failures.append(_line(custom_id, None, {"code": code, "message": _ENDED[code]}))
                continue
            self.lines_by_id[custom_id] += 1
            status_code, body = self._answer(line)
            response = {"status_code": status_code, "request_id": _request_id(), "body": body}
            (outputs if status_code == 200 else failures).append(_line(custom_id, response, None))
        batch.counts = {
            "completed": len(outputs),
            "failed": len(failures) if status in ("completed", "expired", "cancelled") else 0,
        }
        if outputs:
            batch.output_file_id = self._store("output.jsonl", "batch_output", b"".join(outputs)).id
        if failures:
            batch.error_file_id = self._store("errors.jsonl", "batch_output", b"".join(failures)).id
        batch.stamps[f"{status}_at"] = _now()
        batch.settled = status
        return status

    def _answer(self, line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A line's status code and body, as the online endpoint would give them."""
        trigger = answers.find_trigger(line["raw"])
        seen = self.lines_by_id[line["custom_id"]]
        output_trigger = None
        if trigger is not None and (trigger.times is None or seen <= trigger.times):
            if trigger.name in ("length", "content_filter"):
                output_trigger = trigger.name
            elif not trigger.name.startswith("batch_"):
                failure = error_answer("500" if trigger.name in ("drop", "hang") else trigger.name)
                body = failure.body if isinstance(failure.body, dict) else {"error": "bad gateway"}
                return failure.status, body
        return 200, self.server.success_body(line["url"], line["body"], output_trigger)

    def _describe(self, batch: FakeBatch) -> dict[str, Any]:
        status = self._status(batch)
        total = len(batch.lines)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.lines[0]["body"].get("model") if batch.lines else None,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "expires_at": batch.created_at + 24 * 3600,
            **{name: batch.stamps.get(name) for name in _STAMPS},
            "request_counts": {"total": total, **batch.counts},
            "metadata": batch.metadata,
        }


_STAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_ENDED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


def _validate(content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's lines, or the validation errors the real API would list."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        problem = None
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            line, problem = None, "This line is not parseable as valid JSON."
        if problem is None and not isinstance(line, dict):
            problem = "Each line must be a JSON object."
        elif problem is None and isinstance(line, dict):
            body = line.get("body")
            custom_id = line.get("custom_id")
            if line.get("url") != endpoint or line.get("method") != "POST":
                problem = f"The url must be {endpoint} and the method POST."
            elif not isinstance(custom_id, str) or custom_id in seen:
                problem = "Each custom_id must be a unique string."
            elif not isinstance(body, dict) or not body.get("model"):
                problem = "The body must be an object naming a model."
            elif b"[fake:batch_invalid]" in raw:
                problem = "This line was rejected on purpose ([fake:batch_invalid])."
            else:
                seen.add(custom_id)
                models.add(str(body["model"]))
                lines.append({**line, "raw": raw})
        if problem is not None:
            errors.append(_batch_error("invalid_request", problem, number))
    if len(models) > 1:
        errors.append(_batch_error("mixed_models", "Every line must use one model.", None))
    return lines, errors


def _batch_error(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _token_limit_error(lines: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    model = lines[0]["body"].get("model") if lines else "the model"
    message = (
        f"Enqueued token limit reached for {model} in organization org-fake. Limit: "
        f"{limit:,} enqueued tokens. Please try submitting your batch again later."
    )
    return _batch_error("token_limit_exceeded", message, None)


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    record = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id}
    return orjson.dumps({**record, "response": response, "error": error}) + b"\n"


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _json(answers.error_body(message, kind, None), status)
