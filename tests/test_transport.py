"""The HTTP transport against real servers on 127.0.0.1: which certificate authorities it trusts
over TLS, and how a refused certificate (a connection failure) and a body cut short (a bad
response) are reported."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import anyio
import pytest
import trustme

from batchrunner.fake import FakeConfig, FakeServer
from batchrunner.runner.transport import HttpTransport, Reply, TransportFailure

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


async def post_once(ca: trustme.CA) -> Reply | TransportFailure:
    """One chat request to a fake server on 127.0.0.1 whose certificate `ca` signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeServer(FakeConfig())
    base_url = await server.start(ssl_context=context)
    assert base_url.startswith("https://127.0.0.1:")
    try:
        async with HttpTransport(base_url, "sk-test", timeout=10, max_connections=2) as transport:
            return await transport.post("/v1/chat/completions", BODY, "item-1")
    finally:
        await server.stop()


def test_a_server_signed_by_the_ca_in_ssl_cert_file_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "own-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    answer = anyio.run(post_once, ca)
    assert isinstance(answer, Reply), answer
    assert answer.status == 200 and b"chat.completion" in answer.body


def test_a_certificate_no_trusted_ca_signed_is_refused_as_a_connection_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    answer = anyio.run(post_once, trustme.CA())
    assert isinstance(answer, TransportFailure), answer
    assert answer.kind == "connection"
    assert "invalid peer certificate" in answer.message, answer.message


def test_a_body_cut_short_is_a_bad_response_not_an_answer() -> None:
    """A server that closes the connection 8 bytes into a 100-byte body."""

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"id": 1')
        await writer.drain()
        writer.close()

    async def post() -> Reply | TransportFailure:
        server = await asyncio.start_server(cut_short, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, HttpTransport(f"http://127.0.0.1:{port}/v1", None, 10, 2) as transport:
            return await transport.post("/v1/chat/completions", BODY, "item-1")

    answer = asyncio.run(post())
    assert isinstance(answer, TransportFailure), answer
    assert answer.kind == "bad_response" and "end of file" in answer.message


def test_requests_in_flight_are_abandoned_at_once_when_cancelled() -> None:
    """The second Ctrl-C cancels the requests in flight: none may hold the run until it ends."""

    async def cancel_in_flight() -> float:
        server = FakeServer(FakeConfig(latency_ms=4_000))
        base_url = await server.start()
        started = time.monotonic()
        try:
            transport = HttpTransport(base_url, None, 60, 5)
            async with transport, anyio.create_task_group() as group:
                for index in range(5):
                    group.start_soon(transport.post, "/v1/chat/completions", BODY, f"i{index}")
                await anyio.sleep(0.3)
                group.cancel_scope.cancel()
            return time.monotonic() - started
        finally:
            await server.stop()  # waits for its handlers: the 4 s answers it still owes

    assert anyio.run(cancel_in_flight) < 2.0  # the answers would come after 4 s
