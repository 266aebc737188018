"""The request backend for OpenAI-compatible servers: pyreqwest (Rust's reqwest and hyper) and
orjson, no SDK on the hot path.

Bare loops on one core against a local server (bench/throughput.py): the openai SDK manages
700-1,200 requests/s, aiohttp about 10,000, pyreqwest about 25,000 at half aiohttp's CPU per
request or less: HTTP framing, the connection pool and timeouts run in Rust, off the interpreter.
Every request sent is exactly one attempt: no hidden retries here.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import TracebackType
from urllib.parse import quote, urlsplit

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    BuilderError,
    ConnectError,
    DecodeError,
    DetailedPyreqwestError,
    RequestError,
    RequestTimeoutError,
)
from pyreqwest.proxy import ProxyBuilder

from batchrunner import trust
from batchrunner.backends.base import Reply, TransportFailure
from batchrunner.dialects.openai import (
    CLIENT_REQUEST_ID,
    MAX_CLIENT_REQUEST_ID,
    PROXY_REFUSED,
    auth_headers,
    endpoint_url,
    has_rate_limits,
    proxy_refused,
    read_server_limits,
    retry_after_seconds,
)
from batchrunner.errors import UsageError
from batchrunner.failures import ErrorKind
from batchrunner.network import CONNECT_TIMEOUT_S, Network

# The cause pyreqwest gives for a failure while connecting (TCP, TLS, a proxy's tunnel).
CONNECT_PHASE = "client error (Connect)"


class HttpBackend:
    """One HTTP client for a run (a `RequestBackend`); `post` returns a `Reply` or a
    `TransportFailure`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_connections: int,
        network: Network | None = None,
        *,
        auth: dict[str, str] | None = None,
        deployment_paths: frozenset[str] = frozenset(),
    ) -> None:
        """`auth`: the key's header(s), OpenAI's Bearer unless given; `deployment_paths`: the
        paths whose address names the request's model (Azure's deployments)."""
        self._base_url = base_url
        self._network = network or Network()
        self._headers = {
            "Content-Type": "application/json",
            **self._network.headers,
            **(auth if auth is not None else auth_headers(api_key)),
        }
        self._timeout = timeout
        self._max_connections = max_connections
        self._deployment_paths = deployment_paths
        # where each job url (and, for deployments, model) is posted: a job has few
        self._urls: dict[str, str] = {}
        self._deployment_urls: dict[tuple[str, str], str] = {}
        self._client: Client | None = None

    async def __aenter__(self) -> HttpBackend:
        builder = (
            ClientBuilder()
            .max_connections(self._max_connections)
            .timeout(timedelta(seconds=self._timeout))
            .connect_timeout(timedelta(seconds=min(CONNECT_TIMEOUT_S, self._timeout)))
            .default_headers(self._headers)
            .no_proxy()  # the environment's proxies are read once, by network.py, for both modes
        )  # HTTP/1.1 only (pyreqwest's default): one connection per request in flight
        builder = self._through_proxy(builder)
        roots = trust.root_certificates()
        for pem in roots.values():
            builder = builder.add_root_certificate_pem(pem)
        try:
            client = builder.build()
        except BuilderError as exc:
            raise UsageError(
                f"could not load the trusted certificates from {', '.join(roots)}: {_reason(exc)}"
            ) from None
        try:  # a URL reqwest cannot send to fails here, once, not on every item
            if urlsplit(self._base_url).scheme not in ("http", "https"):
                raise ValueError("it must start with http:// or https://")
            client.post(self._url("/v1/chat/completions")).build()
        except (BuilderError, ValueError) as exc:
            reason = _reason(exc) if isinstance(exc, BuilderError) else str(exc)
            raise UsageError(f"the base URL {self._base_url!r} is not usable: {reason}") from None
        self._client = await client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()

    async def post(
        self, url: str, body: bytes, custom_id: str, model: str = ""
    ) -> Reply | TransportFailure:
        assert self._client is not None, "use HttpBackend as an async context manager"
        if self._deployment_paths:
            address = self._deployment_urls.get((url, model)) or self._url(url, model)
        else:
            address = self._urls.get(url) or self._url(url)
        request = self._client.post(address).body_bytes(body)
        request_id = quote(custom_id, safe="")
        if len(request_id) <= MAX_CLIENT_REQUEST_ID:
            request = request.header(CLIENT_REQUEST_ID, request_id)
        started = time.perf_counter()
        try:
            response = await request.build().send()
            payload = bytes(await response.bytes())
        except (ConnectError, RequestTimeoutError) as exc:
            # pyreqwest's labels are loose: a connection dropped after the request went out is
            # a ConnectError and a slow answer a ConnectTimeoutError. Only the Connect phase
            # among the causes says nothing was sent (refused, no such host, TLS).
            if CONNECT_PHASE in _causes(exc) or proxy_refused(_reason(exc)):
                return self._unreachable(exc, started)
            if isinstance(exc, ConnectError):
                return TransportFailure(
                    ErrorKind.CONNECTION, f"connection error: {_reason(exc)}", _ms(started)
                )
            elapsed = time.perf_counter() - started
            return TransportFailure(
                ErrorKind.TIMEOUT,
                f"no answer within {elapsed:.0f}s; outcome unknown, possibly billed",
                elapsed * 1000,
            )
        except DecodeError as exc:
            reason = _reason(exc)
            message = f"broken response body: {reason}"
            return TransportFailure(ErrorKind.BAD_RESPONSE, message, _ms(started))
        except RequestError as exc:
            return TransportFailure(
                ErrorKind.CONNECTION, f"connection error: {_reason(exc)}", _ms(started)
            )
        answer_headers = response.headers
        try:
            retry_after = retry_after_seconds(answer_headers)
            limits = read_server_limits(answer_headers) if has_rate_limits(answer_headers) else None
        except ValueError:  # a header value that is not text: as if the server had sent none
            retry_after, limits = None, None
        return Reply(
            status=response.status,
            body=payload,
            latency_ms=(time.perf_counter() - started) * 1000,
            retry_after=retry_after,
            limits=limits,
        )

    def _url(self, url: str, model: str = "") -> str:
        path = url.removeprefix("/v1")
        if path in self._deployment_paths:  # base/deployments/MODEL/path?query
            base = f"{self._base_url}/deployments/{quote(model, safe='')}"
            joined = endpoint_url(base, url, self._network.query)
            self._deployment_urls[url, model] = joined
            return joined
        joined = self._urls[url] = endpoint_url(self._base_url, url, self._network.query)
        return joined

    def _unreachable(self, exc: DetailedPyreqwestError, started: float) -> TransportFailure:
        """Nothing reached the server; a proxy that refused its credentials is the job's."""
        reason = _reason(exc)
        if proxy_refused(reason):
            return TransportFailure(ErrorKind.AUTH, PROXY_REFUSED, _ms(started))
        causes = [c for c in _causes(exc) if not c.startswith("error sending request")]
        why = ": ".join(causes) or reason
        return TransportFailure(
            ErrorKind.UNREACHABLE, f"cannot reach {self._base_url}: {why}", _ms(started)
        )

    def _through_proxy(self, builder: ClientBuilder) -> ClientBuilder:
        """The job's proxy, its credentials as Basic auth (reqwest would take them from the
        URL too; this way they never sit in a URL it might print)."""
        network = self._network
        address = network.proxy_without_credentials
        if address is None:
            return builder
        try:
            proxy = ProxyBuilder.all(address)
        except (BuilderError, ValueError) as exc:
            reason = _reason(exc) if isinstance(exc, BuilderError) else str(exc)
            raise UsageError(f"the proxy {address!r} is not usable: {reason}") from None
        credentials = network.proxy_credentials
        if credentials is not None:
            proxy = proxy.basic_auth(*credentials)
        return builder.proxy(proxy)


def _causes(exc: DetailedPyreqwestError) -> list[str]:
    return [cause["message"] for cause in exc.details.get("causes") or []]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _reason(exc: DetailedPyreqwestError) -> str:
    """pyreqwest's chain of causes, outermost first: "error sending request for url (...):
    client error (Connect): invalid peer certificate: UnknownIssuer"."""
    return ": ".join(_causes(exc) or [exc.message or type(exc).__name__])
