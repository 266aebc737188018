"""The lean per-item POST: aiohttp and orjson, no SDK on the hot path.

The openai SDK manages about 300-900 requests/s per core; raw aiohttp reaches several thousand.
Every request sent is exactly one attempt: no hidden retries here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote

import aiohttp

from batchrunner.runner.limits import ServerLimits, read_server_limits

MAX_CLIENT_REQUEST_ID = 512
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    latency_ms: float
    retry_after: float | None
    limits: ServerLimits | None = None  # the x-ratelimit-* headers, when the server sent any


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No usable answer: kind is timeout, connection or bad_response."""

    kind: str
    message: str
    latency_ms: float


def retry_after_seconds(headers: aiohttp.typedefs.LooseHeaders) -> float | None:
    """`retry-after-ms` (OpenAI) or `retry-after` in seconds, if the server sent one."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def endpoint_url(base_url: str, url: str) -> str:
    """Join like the SDK does: base_url ends in /v1, job urls start with /v1."""
    return base_url.rstrip("/") + url.removeprefix("/v1")


class HttpTransport:
    """One aiohttp session for a run; `post` returns a `Reply` or a `TransportFailure`."""

    def __init__(
        self, base_url: str, api_key: str | None, timeout: float, max_connections: int
    ) -> None:
        self._base_url = base_url
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpTransport:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, body: bytes, custom_id: str) -> Reply | TransportFailure:
        assert self._session is not None, "use HttpTransport as an async context manager"
        headers = {}
        request_id = quote(custom_id, safe="")
        if len(request_id) <= MAX_CLIENT_REQUEST_ID:
            headers["X-Client-Request-Id"] = request_id
        started = time.perf_counter()
        try:
            async with self._session.post(
                endpoint_url(self._base_url, url), data=body, headers=headers
            ) as response:
                payload = await response.read()
                answer_headers = response.headers
                has_limits = _has_any(answer_headers, RATE_HEADERS)
                return Reply(
                    status=response.status,
                    body=payload,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    retry_after=retry_after_seconds(answer_headers),
                    limits=read_server_limits(answer_headers) if has_limits else None,
                )
        except TimeoutError:
            elapsed = time.perf_counter() - started
            return TransportFailure(
                "timeout",
                f"no answer within {elapsed:.0f}s; outcome unknown, possibly billed",
                elapsed * 1000,
            )
        except aiohttp.ClientPayloadError as exc:
            return TransportFailure("bad_response", f"broken response body: {exc}", _ms(started))
        except aiohttp.ClientError as exc:
            return TransportFailure("connection", _describe(exc), _ms(started))


def _has_any(headers: Mapping[str, str], names: tuple[str, ...]) -> bool:
    return any(name in headers for name in names)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _describe(exc: aiohttp.ClientError) -> str:
    text = str(exc) or type(exc).__name__
    return f"connection error: {text}"
