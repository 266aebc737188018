"""A forwarding HTTP proxy on 127.0.0.1 for the network tests: plain requests in absolute form
(`POST http://host:port/v1/... HTTP/1.1`) are forwarded, `CONNECT host:port` is tunnelled, and
every request it is asked to carry is kept (`seen`). With credentials it answers 407 to a
request without the matching `Proxy-Authorization`, as a corporate proxy does.

Each connection carries one request: the proxy asks the server to close after its answer and
tells the client the same, so no connection is ever reused across the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HOP_BY_HOP = ("connection", "proxy-connection", "proxy-authorization", "keep-alive")


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # the absolute URL, or host:port for CONNECT
    headers: dict[str, str]  # names in lower case, Proxy-Authorization left out


@dataclass
class ForwardProxy:
    credentials: tuple[str, str] | None = None
    seen: list[Seen] = field(default_factory=list)
    refused: int = 0  # requests answered 407
    url: str = ""

    async def handle(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            head = await client_in.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            client_out.close()
            return
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if line]
        named = {name.lower(): value for name, value in headers}
        if self.credentials is not None:
            expected = base64.b64encode(":".join(self.credentials).encode()).decode()
            if named.get("proxy-authorization") != f"Basic {expected}":
                self.refused += 1
                client_out.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
                client_out.write(b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n")
                client_out.write(b"Connection: close\r\n\r\n")
                await client_out.drain()
                client_out.close()
                return
        kept = {name: value for name, value in named.items() if name != "proxy-authorization"}
        self.seen.append(Seen(method, target, kept))
        if method == "CONNECT":
            await self._tunnel(target, client_in, client_out)
        else:
            await self._forward(method, target, version, headers, client_in, client_out)

    async def _tunnel(
        self, target: str, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        server_in, server_out = await asyncio.open_connection(host.strip("[]"), int(port))
        client_out.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_out.drain()
        await asyncio.gather(_pipe(client_in, server_out), _pipe(server_in, client_out))

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, ...]],
        client_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
    ) -> None:
        parts = urlsplit(target)
        server_in, server_out = await asyncio.open_connection(parts.hostname, parts.port or 80)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} {version}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in HOP_BY_HOP]
        lines.append("Connection: close")
        server_out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await server_out.drain()
        upload = asyncio.ensure_future(_pipe(client_in, server_out, close=False))
        try:
            head = await server_in.readuntil(b"\r\n\r\n")
            status, *answer = head.decode("latin-1").split("\r\n")
            answer = [line for line in answer if line and not line.lower().startswith(HOP_BY_HOP)]
            reply = "\r\n".join([status, *answer, "Connection: close"]) + "\r\n\r\n"
            client_out.write(reply.encode("latin-1"))
            await _pipe(server_in, client_out)
        finally:
            upload.cancel()
            server_out.close()


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, close: bool = True
) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if close:
            with contextlib.suppress(Exception):
                sink.close()


@contextlib.contextmanager
def forward_proxy(credentials: tuple[str, str] | None = None) -> Iterator[ForwardProxy]:
    """The proxy on 127.0.0.1 and a free port, in a thread of its own, for one test."""
    proxy = ForwardProxy(credentials)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server: asyncio.Server | None = None

    def serve() -> None:
        nonlocal server
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(proxy.handle, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        proxy.url = f"http://127.0.0.1:{port}"
        ready.set()
        loop.run_forever()
        server.close()
        tunnels = asyncio.all_tasks(loop)  # connections still open (a client's idle tunnel)
        for task in tunnels:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tunnels, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=serve, name="forward-proxy", daemon=True)
    thread.start()
    if not ready.wait(timeout=10):
        raise RuntimeError("the proxy did not start within 10 s")
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
