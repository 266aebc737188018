"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests, benchmarks and `--simulate`.

It answers chat, responses and embeddings requests in the real API's shapes, so the real
`openai` SDK and batchrunner's own transport can talk to it, and it misbehaves on demand:
random or forced errors, dropped connections, hangs, and per-minute rate limits with OpenAI's
headers. A request whose body holds `[fake:503x2]` fails its first two tries; see `answers.py`
and `faults.py` for every marker. With `prompt_cache` set it simulates OpenAI's prompt caching
(`prompt_cache.py`), so the cached tokens an answer reports depend on how requests were sent.

The request's id comes from the `X-Client-Request-Id` header (batchrunner sends the item's
custom_id there), so tests can count how often each item was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from batchrunner.dialects.openai import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ENDPOINTS,
    output_cap,
    requested_format,
)
from batchrunner.fake import answers
from batchrunner.fake.azure import add_azure_routes
from batchrunner.fake.batches import FakeBatchApi
from batchrunner.fake.faults import (
    Bucket,
    ErrorAnswer,
    error_answer,
    forced_answer,
    model_missing,
    rate_limited,
)
from batchrunner.fake.prompt_cache import CacheSettings, PromptCache, applies_to, retention_refusal


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FakeConfig:
    """Knobs; change them on a running server through `server.config` or POST /_fake/config."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate_429: float = 0.0
    error_rate_5xx: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    force_status: int | None = None
    force_code: str | None = None
    force_message: str | None = None  # the forced error's message instead of the API's own
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    rate_window_s: float = 60.0  # enforce the limits over this window (see faults.Bucket)
    cached_fraction: float = 0.0  # of every prompt, reported cached (when prompt_cache is off)
    # Prompt caching simulated as OpenAI documents it (fake/prompt_cache.py): a pool of machines,
    # requests routed by prefix and prompt_cache_key, overflow above a per-pair rate, expiry.
    prompt_cache: bool = False
    cache_machines: int = 4096
    cache_pair_rpm: int = 15  # requests/min one (prefix, key) pair gets on its machine
    cache_ttl_s: float = 300.0  # a cached prefix is forgotten after this long unused
    cache_ttl_24h_s: float = 86400.0  # ... with prompt_cache_retention "24h"
    cache_max_blocks: int = 250_000  # 128-token blocks cached over the whole pool, at most
    embedding_dims: int = 16
    # Parameters this server refuses with a 400 (an older server, a strict proxy)
    refuse_params: tuple[str, ...] = ()
    api_key: str | None = None  # when set, any other key gets a 401
    echo_auth: bool = False  # error messages and chat answers quote the Authorization header
    record_requests: bool = False  # keep each request's path, query and headers (`received`)
    azure_api_version: str | None = None  # set: serve Azure OpenAI's shape only (fake/azure.py)
    # A server that lacks some models or endpoints (a local server without /v1/responses, an
    # account without a model): set, only these are served; others get the 404 such a server
    # sends (model_not_found as OpenAI's; a bare "File Not Found" as llama.cpp's, for a path).
    models: tuple[str, ...] | None = None
    endpoints: tuple[str, ...] | None = None
    batch_validating_s: float = 0.05  # how long a batch spends in each state (see batches.py)
    batch_in_progress_s: float = 0.3
    batch_finalizing_s: float = 0.05
    batch_expire_after: int | None = None  # answer this many lines of a batch, expire the rest
    batch_token_limit: int | None = None  # enqueued prompt tokens across unfinished batches
    seed: int | None = None


class FakeServer:
    """The aiohttp app plus the counters tests read."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.requests_by_id: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.total_requests = 0
        self.first_request_at: float | None = None  # monotonic, to measure request rates
        self.last_request_at: float | None = None
        self.base_url = ""
        self.received: list[Received] = []  # with config.record_requests: every request
        self._random = random.Random(self.config.seed)
        self._buckets: dict[str, Bucket] = {}
        self._prompt_cache: PromptCache | None = None
        self._prompt_cache_lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self.batch_api = FakeBatchApi(self)

    def reset_counts(self) -> None:
        self.requests_by_id.clear()
        self.status_counts.clear()
        self.total_requests = 0
        self.first_request_at = self.last_request_at = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        if self.config.azure_api_version is not None:  # Azure's addresses, and only those
            add_azure_routes(self, app)
        else:
            for url in ENDPOINTS:
                app.router.add_post(url, self._answer)
            app.router.add_get("/v1/models", self._models)
            self.batch_api.add_routes(app, "/v1")
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/config", self._set_config)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on host:port (0: a free port), over TLS when given `ssl_context`."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024, ssl_context=ssl_context)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{host}:{bound_port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the API -------------------------------------------------------------------------------

    def key_refused(self, request: web.Request) -> bool:
        """Whether the request lacks the key `api_key` asks for: a Bearer token, or in the
        Azure shape an `api-key` header (which it always needs, whatever its value)."""
        key = self.config.api_key
        if self.config.azure_api_version is not None:
            given = request.headers.get("api-key")
            return not given or (key is not None and given != key)
        return key is not None and request.headers.get("Authorization") != f"Bearer {key}"

    async def _answer(self, request: web.Request, url: str | None = None) -> web.StreamResponse:
        """Answer an online request to `url` (the request's own path unless given)."""
        url = url or request.path
        raw = await request.read()
        request_id = self._count(request, raw)
        config = self.config
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(request, error_answer("400"))
        if not isinstance(body, dict):
            return self._error(request, error_answer("400"))
        model = str(body.get("model") or "")
        if self.key_refused(request):
            return self._error(request, error_answer("401"))
        if config.endpoints is not None and url not in config.endpoints:
            return self._error(request, ErrorAnswer(404, b"File Not Found", {}))
        if config.models is not None and model not in config.models:
            return self._error(request, model_missing(model))
        if config.force_status is not None:
            forced = forced_answer(config.force_status, config.force_code, config.force_message)
            return self._error(request, forced)
        refused = [name for name in config.refuse_params if name in body]
        if refused:  # a server that does not take a parameter, in OpenAI's words for it
            message = f"Unrecognized request argument supplied: {refused[0]}"
            refused_body = answers.error_body(message, "invalid_request_error", None)
            return self._error(request, ErrorAnswer(400, refused_body, {}))
        cache = self.prompt_cache() if applies_to(url) else None
        refusal = retention_refusal(body) if cache is not None else None
        if refusal is not None:
            return self._error(request, ErrorAnswer(400, refusal, {}))

        trigger = answers.find_trigger(raw)
        output_trigger = None
        if trigger is not None and (
            trigger.times is None or self.requests_by_id[request_id] <= trigger.times
        ):
            misbehaviour = await self._misbehave(request, trigger.name)
            if misbehaviour is not None:
                return misbehaviour
            output_trigger = trigger.name

        prompt = answers.prompt_of(url, body)
        prompt_tokens = prompt[1]
        limits = self._take_limits(model, prompt_tokens + (output_cap(body) or 0))
        if isinstance(limits, ErrorAnswer):
            return self._error(request, limits)

        roll = self._random.random()
        if roll < config.drop_rate:
            return self._drop(request)
        roll -= config.drop_rate
        if roll < config.error_rate_429:
            return self._error(request, error_answer("429"), limits)
        roll -= config.error_rate_429
        if roll < config.error_rate_5xx:
            return self._error(request, error_answer(self._random.choice(["500", "503"])), limits)
        roll -= config.error_rate_5xx
        if roll < config.hang_rate:
            await asyncio.sleep(config.hang_seconds)

        visit = cache.arrive(url, body, prompt_tokens) if cache is not None else None
        await self._latency()
        if cache is not None and visit is not None:
            cache.answered(visit)
        cached = visit.cached_tokens if visit is not None else None
        answer = self.success_body(url, body, output_trigger, cached, prompt)
        if config.echo_auth:
            self._quote_auth(request, answer)
        return self._json(request, 200, answer, limits)

    def _quote_auth(self, request: web.Request, answer: dict[str, Any]) -> None:
        """A chat answer that quotes the request's Authorization header, as a gateway's debug
        echo (or a model repeating what it was shown) may."""
        for choice in answer.get("choices") or []:
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                received = request.headers.get("Authorization", "")
                message["content"] += f" (request had Authorization: {received})"

    def success_body(
        self,
        url: str,
        body: dict[str, Any],
        trigger: str | None,
        cached: int | None = None,
        prompt: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """The 200 answer's body for a request (also what a batch's output line holds), with
        `cached` prompt tokens (the prompt cache's figure; None: `cached_fraction` of them);
        `prompt`: its `answers.prompt_of`, when the caller counted it already."""
        config = self.config
        model = str(body.get("model") or "")
        prompt_text, prompt_tokens = prompt or answers.prompt_of(url, body)
        if url.endswith("/embeddings"):
            return answers.embeddings_body(model, body, config.embedding_dims)
        if url.endswith("/moderations"):
            return answers.moderations_body(model, body)
        if url.endswith(("/images/generations", "/images/edits")):
            return answers.image_body(model, body)
        if url.endswith("/videos"):
            return answers.video_body(model, body)
        if cached is None:
            cached = int(prompt_tokens * config.cached_fraction)
        default_cap = COMPLETIONS_DEFAULT_MAX_TOKENS if url.endswith("/v1/completions") else None
        wanted = requested_format(url, body)  # a structured output: JSON that fits
        completion = answers.complete(model, prompt_text, body, trigger, default_cap, wanted)
        if url.endswith("/responses"):
            return answers.responses_body(model, prompt_tokens, cached, completion)
        if not url.endswith("/chat/completions") and url.endswith("/completions"):
            return answers.completions_body(model, prompt_tokens, completion)
        return answers.chat_body(model, prompt_tokens, cached, completion, config.seed or 0)

    def prompt_cache(self) -> PromptCache | None:
        """The simulated prompt cache while `prompt_cache` is on (a new, cold one when its
        settings change); None while it is off."""
        config = self.config
        if not config.prompt_cache:
            return None
        settings = CacheSettings(
            machines=config.cache_machines,
            pair_rpm=config.cache_pair_rpm,
            ttl_s=config.cache_ttl_s,
            ttl_24h_s=config.cache_ttl_24h_s,
            max_blocks=config.cache_max_blocks,
            seed=config.seed,
        )
        with self._prompt_cache_lock:
            if self._prompt_cache is None or self._prompt_cache.settings != settings:
                self._prompt_cache = PromptCache(settings)
            return self._prompt_cache

    async def _misbehave(self, request: web.Request, name: str) -> web.StreamResponse | None:
        """The answer a `[fake:NAME]` marker asks for; None for the output markers."""
        if name in answers.OUTPUT_TRIGGERS:
            return None
        if name == "drop":
            return self._drop(request)
        if name == "hang":
            await asyncio.sleep(self.config.hang_seconds)
            return None
        return self._error(request, error_answer(name))

    def record(self, request: web.Request) -> None:
        """Keep what a request carried, when asked (`record_requests`), online or batch."""
        if self.config.record_requests:
            headers = {name.lower(): value for name, value in request.headers.items()}
            self.received.append(
                Received(request.method, request.path, request.query_string, headers)
            )

    def _count(self, request: web.Request, raw: bytes) -> str:
        self.record(request)
        header = request.headers.get("X-Client-Request-Id")
        request_id = unquote(header) if header else "sha1:" + hashlib.sha1(raw).hexdigest()
        self.requests_by_id[request_id] += 1
        self.total_requests += 1
        self.last_request_at = time.monotonic()
        if self.first_request_at is None:
            self.first_request_at = self.last_request_at
        return request_id

    def _take_limits(self, model: str, tokens: int) -> dict[str, str] | ErrorAnswer:
        """Take one request and its tokens from the buckets; the headers, or a 429."""
        wanted = [("requests", self.config.rpm_limit, 1), ("tokens", self.config.tpm_limit, tokens)]
        headers: dict[str, str] = {}
        for kind, limit, amount in wanted:
            if limit is None:
                continue
            bucket = self._buckets.get(kind)
            window = self.config.rate_window_s
            if bucket is None or (bucket.limit, bucket.window_s) != (limit, window):
                bucket = self._buckets[kind] = Bucket(limit, window)
            wait = bucket.take(amount)
            if wait:
                return rate_limited(kind, model, bucket, amount, wait)
            headers.update(bucket.headers(kind))
        return headers

    async def _latency(self) -> None:
        delay = self.config.latency_ms + self._random.random() * self.config.latency_jitter_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    def _error(
        self, request: web.Request, answer: ErrorAnswer, extra: dict[str, str] | None = None
    ) -> web.Response:
        headers = {**(extra or {}), **answer.headers}
        if self.config.echo_auth and isinstance(answer.body, dict):
            received = request.headers.get("Authorization", "")
            answer.body["error"]["message"] += f" (request had Authorization: {received})"
        if isinstance(answer.body, bytes):
            self.status_counts[answer.status] += 1
            return web.Response(
                status=answer.status, body=answer.body, content_type="text/html", headers=headers
            )
        return self._json(request, answer.status, answer.body, headers)

    def _json(
        self,
        request: web.Request,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.status_counts[status] += 1
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"x-request-id": f"req_{uuid.uuid4().hex}", **(headers or {})},
        )

    def _drop(self, request: web.Request) -> web.Response:
        """Close the connection without a word, like a proxy dying mid-request."""
        self.status_counts[0] += 1
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp's own way to drop a handler without writing

    # -- control and introspection ---------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        names = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini", "text-embedding-3-small"]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]
        return self._json(request, 200, {"object": "list", "data": data})

    async def _stats(self, request: web.Request) -> web.Response:
        stats = {
            "total_requests": self.total_requests,
            "distinct_ids": len(self.requests_by_id),
            "status_counts": {str(k): v for k, v in self.status_counts.items()},
            "config": asdict(self.config),
            "prompt_cache": self._prompt_cache.stats() if self._prompt_cache else None,
        }
        return web.json_response(stats)

    async def _set_config(self, request: web.Request) -> web.Response:
        changes = await request.json()
        known = {f.name for f in fields(FakeConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            return web.json_response({"error": f"unknown settings: {unknown}"}, status=400)
        for name, value in changes.items():
            setattr(self.config, name, value)
        return web.json_response(asdict(self.config))

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_counts()
        self._buckets.clear()
        self._prompt_cache = None  # cold again
        return web.json_response({"reset": True})


@contextlib.contextmanager
def run_in_thread(
    config: FakeConfig | None = None, port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> Iterator[FakeServer]:
    """The server on its own event loop in a daemon thread, for sync tests and the CLI (over
    TLS with `ssl_context`)."""
    server = FakeServer(config)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start(port=port, ssl_context=ssl_context))
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
    thread.start()
    if not ready.wait(timeout=10):
        raise RuntimeError("the fake server did not start within 10 s")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def serve_forever(host: str, port: int, config: FakeConfig) -> None:
    """Block serving until Ctrl-C (`batchrunner fake-server`)."""

    async def main() -> None:
        server = FakeServer(config)
        await server.start(host, port)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
