"""The HTTP transport against real servers on 127.0.0.1: which certificate authorities it trusts
over TLS, and how each failure is reported: nothing reached the server (unreachable: refused,
a certificate refused, a handshake never finished), sent and not answered in time (a timeout),
a body cut short (a bad response)."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import anyio
import pytest
import trustme

from batchrunner.backends.base import Reply, TransportFailure
from batchrunner.backends.http import HttpBackend
from batchrunner.errors import UsageError
from batchrunner.fake import FakeConfig, FakeServer

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


async def post_once(ca: trustme.CA) -> Reply | TransportFailure:
    """One chat request to a fake server on 127.0.0.1 whose certificate `ca` signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeServer(FakeConfig())
    base_url = await server.start(ssl_context=context)
    assert base_url.startswith("https://127.0.0.1:")
    try:
        async with HttpBackend(base_url, "sk-test", timeout=10, max_connections=2) as transport:
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


def test_a_certificate_no_trusted_ca_signed_is_refused_as_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLS handshake failed: nothing was sent, so the request is no attempt."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    answer = anyio.run(post_once, trustme.CA())
    assert isinstance(answer, TransportFailure), answer
    assert answer.kind == "unreachable" and answer.message.startswith("cannot reach https://")
    assert "invalid peer certificate" in answer.message, answer.message


def post_to_raw_server(answer: bytes) -> Reply | TransportFailure:
    """One request to a server on 127.0.0.1 that sends `answer` (raw bytes) and closes."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def post() -> Reply | TransportFailure:
        server = await asyncio.start_server(reply, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, HttpBackend(f"http://127.0.0.1:{port}/v1", None, 10, 2) as transport:
            return await transport.post("/v1/chat/completions", BODY, "item-1")

    return asyncio.run(post())


def test_a_body_cut_short_is_a_bad_response_not_an_answer() -> None:
    answer = post_to_raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"id": 1')
    assert isinstance(answer, TransportFailure), answer
    assert answer.kind == "bad_response" and "end of file" in answer.message


def test_header_values_that_are_not_text_count_as_not_sent() -> None:
    """A 429 whose retry-after and rate-limit values are not UTF-8: still an answer."""
    body = b'{"error": {"message": "slow down", "type": "requests", "code": null}}'
    answer = post_to_raw_server(
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\xe9\r\n"
        b"x-ratelimit-limit-requests: 5\xff\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert isinstance(answer, Reply), answer
    assert (answer.status, answer.retry_after, answer.limits) == (429, None, None)


@pytest.mark.parametrize("base_url", ["not a url", "http://127.0.0.1:99999/v1", "ftp://x/v1"])
def test_a_base_url_that_cannot_be_used_is_a_usage_error_at_once(base_url: str) -> None:
    async def enter() -> None:
        async with HttpBackend(base_url, None, 10, 2):
            pass

    with pytest.raises(UsageError, match="is not usable"):
        anyio.run(enter)


def test_a_ca_in_ssl_cert_dir_is_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    folder = tmp_path / "certs"
    folder.mkdir()
    ca.cert_pem.write_to_path(str(folder / "own-ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    answer = anyio.run(post_once, ca)
    assert isinstance(answer, Reply) and answer.status == 200, answer


def test_a_broken_certificate_file_is_a_usage_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(broken))
    with pytest.raises(UsageError, match=r"broken\.pem"):
        anyio.run(post_once, trustme.CA())


def test_requests_in_flight_are_abandoned_at_once_when_cancelled() -> None:
    """The second Ctrl-C cancels the requests in flight: none may hold the run until it ends."""

    async def cancel_in_flight() -> float:
        server = FakeServer(FakeConfig(latency_ms=4_000))
        base_url = await server.start()
        started = time.monotonic()
        try:
            transport = HttpBackend(base_url, None, 60, 5)
            async with transport, anyio.create_task_group() as group:
                for index in range(5):
                    group.start_soon(transport.post, "/v1/chat/completions", BODY, f"i{index}")
                await anyio.sleep(0.3)
                group.cancel_scope.cancel()
            return time.monotonic() - started
        finally:
            await server.stop()  # waits for its handlers: the 4 s answers it still owes

    assert anyio.run(cancel_in_flight) < 2.0  # the answers would come after 4 s


def post_to_silent_server(
    scheme: str, answer_after_s: float | None, timeout: float
) -> Reply | TransportFailure:
    """One request to a server on 127.0.0.1 that takes the connection and then says nothing
    (answer_after_s None: never; else it reads the request, waits, and closes)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer_after_s is not None:
            await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(answer_after_s if answer_after_s is not None else 30)
        writer.close()

    async def post() -> Reply | TransportFailure:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = f"{scheme}://127.0.0.1:{port}/v1"
        async with HttpBackend(base, None, timeout, 2) as transport:
            answer = await transport.post("/v1/chat/completions", BODY, "item-1")
        server.close()
        return answer

    return asyncio.run(post())


def test_nothing_listening_is_unreachable_and_names_the_server() -> None:
    async def post() -> Reply | TransportFailure:
        async with HttpBackend("http://127.0.0.1:9/v1", None, 10, 2) as transport:
            return await transport.post("/v1/chat/completions", BODY, "item-1")

    answer = asyncio.run(post())
    assert isinstance(answer, TransportFailure) and answer.kind == "unreachable"
    assert answer.message.startswith("cannot reach http://127.0.0.1:9/v1: client error (Connect)")


def test_a_server_that_never_finishes_the_handshake_is_unreachable_in_the_connect_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("batchrunner.backends.http.CONNECT_TIMEOUT_S", 0.3)
    started = time.perf_counter()
    answer = post_to_silent_server("https", None, timeout=20)
    assert isinstance(answer, TransportFailure) and answer.kind == "unreachable", answer
    assert time.perf_counter() - started < 10  # the connect timeout, not the request's


def test_a_slow_answer_is_a_timeout_possibly_billed_not_unreachable() -> None:
    """pyreqwest reports a request sent and not answered in time as a connect timeout too;
    it was sent, so it is a timeout (an attempt, perhaps billed)."""
    answer = post_to_silent_server("http", 5, timeout=0.5)
    assert isinstance(answer, TransportFailure) and answer.kind == "timeout", answer
    assert "possibly billed" in answer.message


def test_a_connection_dropped_after_the_request_went_out_is_an_attempt_not_unreachable() -> None:
    """pyreqwest calls this a ConnectError too; the request was sent (and may be billed), so
    it counts against the item, and no circuit breaker may take it for a dead endpoint."""
    answer = post_to_silent_server("http", 0, timeout=5)
    assert isinstance(answer, TransportFailure) and answer.kind == "connection", answer
    assert "connection closed before message completed" in answer.message


def test_a_host_that_does_not_resolve_is_unreachable_and_names_the_server() -> None:
    """.invalid never resolves (RFC 6761): a typo in the host, a name only a VPN knows."""

    async def post() -> Reply | TransportFailure:
        async with HttpBackend("http://no-such-host.invalid/v1", None, 10, 2) as transport:
            return await transport.post("/v1/chat/completions", BODY, "item-1")

    answer = asyncio.run(post())
    assert isinstance(answer, TransportFailure) and answer.kind == "unreachable", answer
    assert answer.message.startswith("cannot reach http://no-such-host.invalid/v1: ")
    assert "dns error" in answer.message
