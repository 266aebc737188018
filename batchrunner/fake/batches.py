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

Validation rejects what the real API rejects: a line that is not a JSON object, a url other than
the batch's endpoint, a duplicate custom_id, a body without a model, and lines naming more than
one model (those fail the batch while it validates, naming the line where there is one); an input
file over `max_lines` requests or `max_bytes` bytes is refused by `create` itself (400), and an
upload over `max_upload_bytes` by the Files API. The limits are class attributes: a test lowers
them on its server (`server.batch_api.max_lines = 10`). The output and error files list their
lines in a shuffled order (seeded by `FakeConfig.seed`), as the real API keeps no input order, and
a batch reports its `usage` (the sum over its answered lines) as the real API does for new
batches. `create_delay_s` and `upload_delay_s` hold the answer back once the batch or the file
exists (setting them back to 0 lets held answers go), for tests that kill a client while its
request is in flight.

The logic is a core of plain methods (`upload_file`, `file_content`, `create_batch`,
`list_batches`, `retrieve_batch`, `cancel_batch`...) that return the API's JSON as a dict, or a
`Refusal` (HTTP status and error body); the aiohttp routes are thin wrappers around them, and
fake/in_process.py calls them directly. Those direct calls come from other threads than the
server's event loop, so the state is guarded by a lock (never held across an await); the holds
are the HTTP routes' alone.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from batchrunner.dialects.openai import ENDPOINTS
from batchrunner.fake import answers
from batchrunner.fake.batch_files import (
    ENDED,
    USAGE_FIELDS,
    first_model,
    now,
    output_line,
    request_id,
    token_limit_error,
    usage_of,
    validate_input,
)
from batchrunner.fake.faults import error_answer, forced_answer, model_missing
from batchrunner.fake.prompt_cache import applies_to, retention_refusal

if TYPE_CHECKING:
    from batchrunner.fake.server import FakeServer

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error answer: its HTTP status and body (JSON, or the bytes a gateway's HTML page is)."""

    status: int
    body: dict[str, Any] | bytes


Answer = dict[str, Any] | Refusal  # what a core method gives: the API's JSON, or a refusal
Route = Callable[[web.Request], Awaitable[web.Response]]
Check = Callable[[web.Request], "Refusal | None"]  # a refusal for a request, if it earns one


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
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_FIELDS, 0))


class FakeBatchApi:
    """Routes and state for /v1/files and /v1/batches, attached to a FakeServer."""

    max_lines = 50_000  # requests in one input file; `create` refuses more
    max_bytes = 200 * 1024 * 1024  # size of an input file; `create` refuses more
    # route name ("upload", "create", "retrieve", ...) -> the HTTP status it answers instead
    refuse: dict[str, int]
    max_upload_bytes = 512 * 1024 * 1024  # size of any uploaded file (the app also caps bodies)
    create_delay_s = 0.0  # answer a create this late; the batch exists from the start
    upload_delay_s = 0.0  # answer an upload this late; the file is stored from the start
    delete_delay_s = 0.0  # take a delete this late: the file is deleted only then

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.lines_by_id: Counter[str] = Counter()  # batch lines answered, per custom_id
        self.batches_created = 0
        self.refuse = {}
        self.calls: Counter[str] = Counter()  # requests per route ("upload", "create", ...)
        self.total_calls = 0
        self._random = random.Random(server.config.seed)  # the order of the output lines
        self._lock = threading.Lock()  # the state above, for callers on other threads

    def called(self, route: str) -> None:
        """Count one request to a route ("upload", "create", ...), however it came."""
        with self._lock:
            self.calls[route] += 1
            self.total_calls += 1

    def add_routes(self, app: web.Application, prefix: str, check: Check | None = None) -> None:
        """The routes under `prefix` (/v1; Azure's /openai), each checked by `check` first."""
        keyed = functools.partial(self._keyed, check=check)
        app.router.add_post(f"{prefix}/files", keyed("upload", self._upload))
        app.router.add_get(f"{prefix}/files/{{file_id}}", keyed("file", self._file))
        app.router.add_get(
            f"{prefix}/files/{{file_id}}/content", keyed("content", self._file_content)
        )
        app.router.add_delete(f"{prefix}/files/{{file_id}}", keyed("delete", self._delete_file))
        app.router.add_post(f"{prefix}/batches", keyed("create", self._create))
        app.router.add_get(f"{prefix}/batches", keyed("list", self._list))
        app.router.add_get(f"{prefix}/batches/{{batch_id}}", keyed("retrieve", self._retrieve))
        app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", keyed("cancel", self._cancel))

    def _keyed(self, name: str, route: Route, check: Check | None = None) -> Route:
        """The route, refusing a request without the key the server asks for with a 401, as
        the online routes do (and what `check` refuses, as it says); a route named in
        `refuse` answers its status instead (a server failing its uploads, say)."""

        async def checked(request: web.Request) -> web.Response:
            self.server.record(request)
            if self.server.key_refused(request):
                return _response(Refusal(401, error_answer("401").body))
            if name in self.refuse:
                self.called(name)
                return _response(self._refused_route(request, self.refuse[name]))
            refusal = check(request) if check is not None else None
            if refusal is not None:
                return _response(refusal)
            return await route(request)

        return checked

    def _refused_route(self, request: web.Request, status: int) -> Refusal:
        if status == 404:  # as OpenAI answers a path it does not serve
            missing = f"Invalid URL ({request.method} {request.path})"
            return Refusal(404, answers.error_body(missing, "invalid_request_error", None))
        return Refusal(status, error_answer(str(status)).body)

    # -- the core: plain values in and out, callable from any thread ----------------------------

    def upload_file(self, filename: str, purpose: str, content: bytes) -> Answer:
        """Store a file; its description."""
        if len(content) > self.max_upload_bytes:
            return _refused(400, "File is too large.")
        with self._lock:
            return self._store(filename, purpose, content).describe()

    def file(self, file_id: str) -> Answer:
        with self._lock:
            stored = self.files.get(file_id)
        return stored.describe() if stored else _refused(404, "No such File object.")

    def file_content(self, file_id: str) -> bytes | Refusal:
        with self._lock:
            stored = self.files.get(file_id)
        return stored.content if stored else _refused(404, "No such File object.")

    def delete_file(self, file_id: str) -> Answer:
        """Delete a file; one that is not there is a 404, as OpenAI answers."""
        with self._lock:
            deleted = self.files.pop(file_id, None) is not None
        if not deleted:
            return _refused(404, f"No such File object: {file_id}")
        return {"id": file_id, "object": "file", "deleted": True}

    def create_batch(self, payload: dict[str, Any]) -> Answer:
        """Create a batch from a create request's JSON payload; its description."""
        config = self.server.config
        if config.force_status is not None:
            forced = forced_answer(config.force_status, config.force_code)
            return Refusal(forced.status, forced.body)
        with self._lock:
            stored = self.files.get(str(payload.get("input_file_id")))
        endpoint = str(payload.get("endpoint"))
        if stored is None:
            return _refused(400, "Invalid 'input_file_id': no such file.")
        known = endpoint if endpoint.startswith("/v1/") else f"/v1{endpoint}"  # Azure's has no v1
        if known not in ENDPOINTS or payload.get("completion_window") != "24h":
            return _refused(400, "Invalid 'endpoint' or 'completion_window'.")
        refusal = self._refusal(stored.content)
        if refusal is not None:
            return _refused(400, refusal)
        lines, errors = validate_input(stored.content, endpoint)  # outside the lock: pure
        tokens = sum(answers.prompt_of(endpoint, line["body"])[1] for line in lines)
        limit = config.batch_token_limit
        with self._lock:
            if not errors and limit is not None:
                active = (b for b in self.batches.values() if self._is_active(b))
                if sum(b.prompt_tokens for b in active) + tokens > limit:
                    errors = [token_limit_error(lines, limit)]
            batch = FakeBatch(
                id=f"batch_{uuid.uuid4().hex[:24]}",
                input_file_id=stored.id,
                endpoint=str(endpoint),
                metadata=payload.get("metadata"),
                created_at=now(),
                started=time.monotonic(),
                lines=lines,
                prompt_tokens=0 if errors else tokens,
                errors=errors,
            )
            self.batches[batch.id] = batch
            self.batches_created += 1
            return self._describe(batch)

    def list_batches(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first, after the batch `after` when given."""
        with self._lock:
            newest_first = list(reversed(self.batches.values()))
            if after is not None:
                ids = [b.id for b in newest_first]
                newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
            data = [self._describe(b) for b in newest_first[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(newest_first) > limit,
        }

    def retrieve_batch(self, batch_id: str) -> Answer:
        with self._lock:
            batch = self.batches.get(batch_id)
            return self._describe(batch) if batch else _refused(404, "No such batch.")

    def cancel_batch(self, batch_id: str) -> Answer:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return _refused(404, "No such batch.")
            if self._status(batch) in ("validating", "in_progress"):
                batch.cancelled_at = time.monotonic()
                batch.stamps["cancelling_at"] = now()
            return self._describe(batch)

    def _store(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        """Keep a file (the lock held)."""
        stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, content, now())
        self.files[stored.id] = stored
        return stored

    def _refusal(self, content: bytes) -> str | None:
        """Why `create` refuses the input file outright (too big, too many lines), if it does."""
        if len(content) > self.max_bytes:
            return (
                f"The batch input file is larger than the {self.max_bytes} maximum for the "
                f"{first_model(content)} model. Please try again with a smaller batch."
            )
        requests = sum(1 for raw in content.splitlines() if raw.strip())
        if requests > self.max_lines:
            return (
                f"The batch input file has {requests} requests, more than the {self.max_lines} "
                f"maximum for the {first_model(content)} model. Please try again with a "
                "smaller batch."
            )
        return None

    # -- the HTTP routes: thin wrappers around the core -----------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        self.called("upload")
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
            return _response(
                _refused(400, "A multipart form with 'file' and 'purpose' is required.")
            )
        answer = self.upload_file(upload.filename or "upload.jsonl", purpose, upload.file.read())
        if not isinstance(answer, Refusal):
            await self._hold("upload_delay_s")
        return _response(answer)

    async def _file(self, request: web.Request) -> web.Response:
        self.called("file")
        return _response(self.file(request.match_info["file_id"]))

    async def _file_content(self, request: web.Request) -> web.Response:
        self.called("content")
        content = self.file_content(request.match_info["file_id"])
        if isinstance(content, Refusal):
            return _response(content)
        return web.Response(body=content, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        self.called("delete")
        await self._hold("delete_delay_s")
        return _response(self.delete_file(request.match_info["file_id"]))

    async def _create(self, request: web.Request) -> web.Response:
        self.called("create")
        answer = self.create_batch(await request.json())
        if not isinstance(answer, Refusal):
            await self._hold("create_delay_s")
        return _response(answer)

    async def _hold(self, knob: str) -> None:
        """Hold an answer back for the knob's seconds, or until a test sets it back to 0."""
        until = time.monotonic() + float(getattr(self, knob))
        while getattr(self, knob) > 0 and time.monotonic() < until:
            await asyncio.sleep(0.01)

    async def _list(self, request: web.Request) -> web.Response:
        self.called("list")
        limit = int(request.query.get("limit", "20"))
        return _response(self.list_batches(limit, request.query.get("after")))

    async def _retrieve(self, request: web.Request) -> web.Response:
        self.called("retrieve")
        return _response(self.retrieve_batch(request.match_info["batch_id"]))

    async def _cancel(self, request: web.Request) -> web.Response:
        self.called("cancel")
        return _response(self.cancel_batch(request.match_info["batch_id"]))

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
            batch.stamps.setdefault("in_progress_at", now())
            done = self._done_lines(batch, elapsed)
            batch.counts["completed"] = done  # progress as the real API reports it
            return "in_progress"
        if elapsed < validating + working + finishing:
            batch.stamps.setdefault("in_progress_at", now())
            batch.stamps.setdefault("finalizing_at", now())
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
                failures.append(
                    output_line(custom_id, None, {"code": code, "message": ENDED[code]})
                )
                continue
            self.lines_by_id[custom_id] += 1
            status_code, body = self._answer(line)
            response = {"status_code": status_code, "request_id": request_id(), "body": body}
            (outputs if status_code == 200 else failures).append(
                output_line(custom_id, response, None)
            )
            if status_code == 200:
                for name, tokens in usage_of(body).items():
                    batch.usage[name] += tokens
        self._random.shuffle(outputs)  # the real API keeps no input order
        self._random.shuffle(failures)
        batch.counts = {
            "completed": len(outputs),
            "failed": len(failures) if status in ("completed", "expired", "cancelled") else 0,
        }
        if outputs:
            batch.output_file_id = self._store("output.jsonl", "batch_output", b"".join(outputs)).id
        if failures:
            batch.error_file_id = self._store("errors.jsonl", "batch_output", b"".join(failures)).id
        batch.stamps[f"{status}_at"] = now()
        batch.settled = status
        return status

    def _answer(self, line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A line's status code and body, as the online endpoint would give them."""
        trigger = answers.find_trigger(line["raw"])
        seen = self.lines_by_id[line["custom_id"]]
        output_trigger = None
        served = self.server.config.models
        model = str(line["body"].get("model") or "")
        if served is not None and model not in served:
            missing = model_missing(model).body
            assert isinstance(missing, dict)
            return 404, missing
        refused = [name for name in self.server.config.refuse_params if name in line["body"]]
        if refused:  # as the online endpoint refuses a parameter it does not take
            message = f"Unrecognized request argument supplied: {refused[0]}"
            return 400, answers.error_body(message, "invalid_request_error", None)
        if trigger is not None and (trigger.times is None or seen <= trigger.times):
            if trigger.name in answers.OUTPUT_TRIGGERS:
                output_trigger = trigger.name
            elif not trigger.name.startswith("batch_"):
                failure = error_answer("500" if trigger.name in ("drop", "hang") else trigger.name)
                body = failure.body if isinstance(failure.body, dict) else {"error": "bad gateway"}
                return failure.status, body
        cached = None
        cache = self.server.prompt_cache() if applies_to(line["url"]) else None
        if cache is not None:  # lines go through the cache one after the other, in file order
            refusal = retention_refusal(line["body"])
            if refusal is not None:
                return 400, refusal
            prompt_tokens = answers.prompt_of(line["url"], line["body"])[1]
            visit = cache.arrive(line["url"], line["body"], prompt_tokens)
            cache.answered(visit)
            cached = visit.cached_tokens
        return 200, self.server.success_body(line["url"], line["body"], output_trigger, cached)

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
            "usage": {
                "input_tokens": batch.usage["input_tokens"],
                "input_tokens_details": {"cached_tokens": batch.usage["cached_tokens"]},
                "output_tokens": batch.usage["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": batch.usage["reasoning_tokens"]},
                "total_tokens": batch.usage["total_tokens"],
            },
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


def _refused(status: int, message: str) -> Refusal:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return Refusal(status, answers.error_body(message, kind, None))


def _response(answer: Answer) -> web.Response:
    """An answer over HTTP: JSON, or a refusal with its status (HTML where a gateway's was)."""
    if not isinstance(answer, Refusal):
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
    if isinstance(answer.body, bytes):
        return web.Response(body=answer.body, status=answer.status, content_type="text/html")
    return web.Response(
        body=orjson.dumps(answer.body), status=answer.status, content_type="application/json"
    )
