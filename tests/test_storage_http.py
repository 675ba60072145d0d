"""The lean PUT client against real sockets: a small HTTP/1.1 server on 127.0.0.1 whose every
misbehaviour (dropped keep-alive, chunked answers, silence, garbage) is scripted per test."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from styldod_batch.runtime import loop_factory, run_async
from styldod_batch.storage_http import (
    StorageClient,
    StorageConnectionError,
    parse_response,
)


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """Reads whole requests (Content-Length bodies); ``answer`` decides what goes back."""

    answer: Callable[[Received, int], bytes | None]
    close_after_each: bool = False
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    tls: ssl.SSLContext | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(method, target, headers, body)
                self.received.append(request)
                reply = self.answer(request, len(self.received))
                if reply is None:  # silence
                    await asyncio.sleep(3600)
                    return
                if not reply:  # drop the connection unanswered
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after_each:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def ok_with_etag(request: Received, _count: int) -> bytes:
    etag = hashlib.md5(request.body, usedforsecurity=False).hexdigest()
    return f'HTTP/1.1 200 OK\r\nETag: "{etag}"\r\nContent-Length: 0\r\n\r\n'.encode()


async def test_requests_share_one_kept_alive_connection_and_urls_go_out_as_signed() -> None:
    async with ScriptedServer(ok_with_etag) as server, StorageClient(limit=4) as client:
        url = f"http://127.0.0.1:{server.port}/bucket/a%2Fb.jpg?X-Amz-Signature=ab%2Bcd&x=1"
        for index in range(30):
            body = bytes([index]) * 1000
            response = await client.put(
                url, {"Content-Type": "image/jpeg"}, body, content_length=len(body)
            )
            assert response.status == 200
            assert (
                response.header("ETag").strip('"')
                == hashlib.md5(body, usedforsecurity=False).hexdigest()
            )
    assert server.connections == 1
    first = server.received[0]
    assert first.method == "PUT"
    assert first.target == "/bucket/a%2Fb.jpg?X-Amz-Signature=ab%2Bcd&x=1"  # not re-encoded
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert first.headers["content-type"] == "image/jpeg"
    assert "transfer-encoding" not in first.headers
    assert [r.body[0] for r in server.received] == list(range(30))


async def test_a_keep_alive_connection_the_server_closed_is_not_reused() -> None:
    async with (
        ScriptedServer(ok_with_etag, close_after_each=True) as server,
        StorageClient(limit=1) as client,
    ):
        url = f"http://127.0.0.1:{server.port}/b/k"
        for index in range(5):
            body = b"x" * (index + 1)
            response = await client.put(url, {}, body, content_length=len(body))
            assert response.status == 200
            await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
    assert [len(r.body) for r in server.received] == [1, 2, 3, 4, 5]
    assert server.connections == 5


async def test_a_request_the_server_dropped_on_a_reused_connection_is_sent_again() -> None:
    # The second request on the first connection is read and then dropped unanswered (a
    # keep-alive timeout racing the request): the client sends it again on a new connection.
    def answer(request: Received, count: int) -> bytes:
        return b"" if count == 2 else ok_with_etag(request, count)

    async with ScriptedServer(answer) as server, StorageClient(limit=1) as client:
        url = f"http://127.0.0.1:{server.port}/b/k"
        for body in (b"first", b"second", b"third"):
            response = await client.put(url, {}, body, content_length=len(body))
            assert response.status == 200
            assert (
                response.header("etag").strip('"')
                == hashlib.md5(body, usedforsecurity=False).hexdigest()
            )
    assert [r.body for r in server.received] == [b"first", b"second", b"second", b"third"]
    assert server.connections == 2


async def test_a_first_request_dropped_unanswered_is_an_error() -> None:
    async with (
        ScriptedServer(lambda _r, _c: b"") as server,
        StorageClient(limit=1) as client,
    ):
        with pytest.raises(StorageConnectionError, match="closed"):
            await client.put(f"http://127.0.0.1:{server.port}/b/k", {}, b"a", content_length=1)
    assert len(server.received) == 1  # a new connection's failure is the caller's to retry


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, made with Debian's openssl."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_with_certificate_verification(self_signed: tuple[Path, Path]) -> None:
    """Real pre-signed URLs are https: the same PUT over TLS, and a certificate the client
    does not trust is refused."""
    key, cert = self_signed
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with ScriptedServer(ok_with_etag, tls=server_tls) as server:
        url = f"https://127.0.0.1:{server.port}/b/k?X-Amz-Signature=1"
        async with StorageClient(limit=2, ssl_context=trusting) as client:
            for body in (b"one", b"two"):
                response = await client.put(url, {}, body, content_length=len(body))
                assert response.status == 200
                assert (
                    response.header("etag").strip('"')
                    == hashlib.md5(body, usedforsecurity=False).hexdigest()
                )
        async with StorageClient(limit=1) as default_trust:
            with pytest.raises(StorageConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await default_trust.put(url, {}, b"x", content_length=1)
    assert [r.body for r in server.received] == [b"one", b"two"]
    assert server.connections == 1  # both PUTs on one kept-alive TLS connection


async def test_streamed_body_chunked_answer_and_connection_close() -> None:
    def answer(request: Received, count: int) -> bytes:
        text = b"<Error><Code>SlowDown</Code></Error>"
        chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(text), text)
        close = "Connection: close\r\n" if count == 1 else ""
        return (
            f"HTTP/1.1 503 Slow Down\r\n{close}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks
        )

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"z" * 65536

    async with ScriptedServer(answer) as server, StorageClient(limit=2) as client:
        url = f"http://127.0.0.1:{server.port}/b/big"
        for _ in range(2):
            response = await client.put(url, {}, stream(), content_length=64 * 65536)
            assert response.status == 503
            assert response.body == b"<Error><Code>SlowDown</Code></Error>"
    assert all(len(r.body) == 64 * 65536 for r in server.received)
    assert server.connections == 2  # the first answer said Connection: close


async def test_silence_times_out_and_garbage_is_an_error() -> None:
    async with (
        ScriptedServer(lambda _r, _c: None) as silent,
        StorageClient(limit=1, idle_timeout_s=0.3) as client,
    ):
        with pytest.raises(StorageConnectionError, match="no answer"):
            await client.put(f"http://127.0.0.1:{silent.port}/b/k", {}, b"a", content_length=1)
    async with (
        ScriptedServer(lambda _r, _c: b"SSH-2.0-OpenSSH\r\n\r\n") as garbage,
        StorageClient(limit=1) as client,
    ):
        with pytest.raises(StorageConnectionError, match="bad answer"):
            await client.put(f"http://127.0.0.1:{garbage.port}/b/k", {}, b"a", content_length=1)


async def test_nothing_listening_is_a_connection_error() -> None:
    async with ScriptedServer(ok_with_etag) as server:
        port = server.port
    async with StorageClient(limit=1) as client:
        with pytest.raises(StorageConnectionError, match="cannot connect"):
            await client.put(f"http://127.0.0.1:{port}/b/k", {}, b"a", content_length=1)


def test_parse_response_partial_interim_and_close_delimited() -> None:
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: x\r\n\r\nhello"
    for cut in range(len(whole)):
        assert parse_response(whole[:cut], eof=False) is None
    parsed = parse_response(whole + b"HTTP/1.1", eof=False)
    assert parsed is not None
    response, used = parsed
    assert (response.status, response.body, response.header("etag"), used) == (
        200,
        b"hello",
        "x",
        len(whole),
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + whole
    parsed = parse_response(interim, eof=False)
    assert parsed is not None
    assert parsed[0].status == 200
    assert parsed[1] == len(interim)
    by_close = b"HTTP/1.0 400 Bad Request\r\n\r\nno"
    assert parse_response(by_close, eof=False) is None
    parsed = parse_response(by_close, eof=True)
    assert parsed is not None
    assert parsed[0].body == b"no"
    assert parsed[0].header("connection") == "close"
    with pytest.raises(ValueError, match="inside the body"):
        parse_response(whole[:-1], eof=True)


@pytest.mark.parametrize(
    "scenario",
    [
        test_requests_share_one_kept_alive_connection_and_urls_go_out_as_signed,
        test_a_request_the_server_dropped_on_a_reused_connection_is_sent_again,
        test_streamed_body_chunked_answer_and_connection_close,
        test_silence_times_out_and_garbage_is_an_error,
    ],
)
def test_the_same_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The runner uses uvloop, whose transports are not asyncio's classes."""
    assert loop_factory() is not None
    run_async(scenario())
