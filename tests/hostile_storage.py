"""A storage server on 127.0.0.1 that misbehaves on purpose: each test scripts, per request,
what goes back (a redirect, silence, a trickle, thousands of interim answers, a dropped
connection...). Plain asyncio streams, so any byte sequence can be sent."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    target: str
    # Lower-case names; a repeated header keeps its last value.
    headers: dict[str, str]
    # Which connection carried it, and its place among all requests (both from 1).
    connection: int
    number: int
    body: bytes = b""


class Exchange:
    """One request on one connection, as the script sees it."""

    def __init__(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stopping: asyncio.Event,
    ) -> None:
        self.request = request
        self.reader = reader
        self.writer = writer
        self.stopping = stopping
        self.body_read = False
        self.continue_sent = False
        # Set by the script: close the connection after this exchange.
        self.close_connection = False

    @property
    def content_length(self) -> int:
        return int(self.request.headers.get("content-length", "0"))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_body(self) -> bytes:
        """The whole body (read once); first the ``100 Continue`` the client waits for, if
        it asked."""
        if self.body_read:
            return self.request.body
        expects = "100-continue" in self.request.headers.get("expect", "").lower()
        if expects and not self.continue_sent:
            self.continue_sent = True
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.request.body = await self.reader.readexactly(self.content_length)
        self.body_read = True
        return self.request.body

    async def reply(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        lines = [f"HTTP/1.1 {status} Scripted\r\n"]
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            lines.append(f"{name}: {value}\r\n")
        await self.send("".join(lines).encode("latin-1") + b"\r\n" + body)

    async def store(self) -> None:
        """What S3 does: read the body, answer 200 with its MD5 as the ETag."""
        body = await self.read_body()
        await self.reply(200, {"ETag": f'"{md5_hex(body)}"'})

    async def refuse(self, status: int, code: str, message: str, **headers: str) -> None:
        """An S3 XML error, sent without reading the body (the connection then closes)."""
        xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        await self.reply(status, {"Content-Type": "application/xml", **headers}, xml)

    async def hold(self) -> None:
        """Never answer (until the server stops)."""
        await self.stopping.wait()


Script = Callable[[Exchange], Awaitable[None]]


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def store(exchange: Exchange) -> None:
    await exchange.store()


@dataclass
class HostileStorage:
    """``async with HostileStorage(script) as storage: storage.url("/b/k")``."""

    script: Script = store
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path_and_query: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path_and_query}"

    async def __aenter__(self) -> HostileStorage:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._stopping.set()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        self._writers.add(writer)
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
                request = Request(method, target, headers, connection, len(self.requests) + 1)
                self.requests.append(request)
                exchange = Exchange(request, reader, writer, self._stopping)
                await self.script(exchange)
                unread = exchange.content_length and not exchange.body_read
                if exchange.close_connection or unread or self._stopping.is_set():
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
