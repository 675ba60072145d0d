"""A lean HTTP/1.1 client for the one request the engine makes most: PUT to a pre-signed URL.

Against a fast store, a small file's cost is the client's own per-request work, and a general
client spends most of it on things a pre-signed PUT never needs (cookies, redirects, URL
re-quoting, middleware chains, response objects). This client writes the request head and body
straight to a kept-alive connection and parses only the status, headers and a small body.
Measured on 2,000 PUTs of 64 KB into an nginx sink: see ``benchmarks/``.

It sends the URL's path and query exactly as signed (never re-encoded), one ``Host`` header
equal to the URL's authority, an explicit ``Content-Length`` and never
``Transfer-Encoding: chunked``. A response that ends the connection or arrives before the body
was fully sent closes that connection; a request on a reused connection that the server had
already closed is sent again once on a new connection when its body is in memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

MAX_RESPONSE_BODY = 1 << 20  # storage answers a PUT with a few hundred bytes at most
MAX_HEAD = 64 << 10


class StorageConnectionError(ConnectionError):
    """The connection failed, closed or timed out before a whole response arrived."""


@dataclass(frozen=True, slots=True)
class StorageResponse:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int
    authority: str  # the Host header: exactly as the URL (and its signature) has it


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_drain",
        "_eof",
        "_loop",
        "_response",
        "_timer",
        "closed",
        "idle_timeout_s",
        "origin",
        "transport",
        "used",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: _Origin, idle_s: float) -> None:
        self._loop = loop
        self.origin = origin
        self.idle_timeout_s = idle_s
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._response: asyncio.Future[StorageResponse] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.used = False  # has carried a request before: the server may have dropped it

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are stream ones.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._response is not None and not self._response.done():
            self._restart_timer()
            self._try_complete()

    def eof_received(self) -> bool:
        self._eof = True
        self._try_complete()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._eof = True
        self._try_complete()
        self._fail_waiters(
            StorageConnectionError(
                f"connection to {self.origin.authority} closed: {exc or 'by the server'}"
            )
        )
        self._cancel_timer()

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # requests ------------------------------------------------------------------------------
    async def exchange(
        self, head: bytes, body: bytes | AsyncIterator[bytes]
    ) -> tuple[StorageResponse, bool]:
        """Send one request; its response, and whether the connection can carry another."""
        transport = self.transport
        assert transport is not None
        self.used = True
        self._response = self._loop.create_future()
        self._restart_timer()
        body_sent = True
        try:
            if isinstance(body, bytes):
                transport.writelines((head, body))
            else:
                transport.write(head)
                async for chunk in body:
                    if self._response.done():
                        body_sent = False  # answered early (an error): the rest is unread
                        break
                    transport.write(chunk)
                    if self._drain is not None:
                        await self._drain
                        self._restart_timer()
            response = await self._response
        finally:
            self._cancel_timer()
            self._response = None
        keep = body_sent and response.header("connection").lower() != "close" and self.reusable()
        return response, keep

    def reusable(self) -> bool:
        # Bytes that arrived between requests mean the server is no longer in step.
        transport = self.transport
        return (
            not self.closed
            and not self._eof
            and not self._buffer
            and transport is not None
            and not transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # internals -----------------------------------------------------------------------------
    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.idle_timeout_s, self._on_idle_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle_timeout(self) -> None:
        self._fail_waiters(
            StorageConnectionError(
                f"no answer from {self.origin.authority} for {self.idle_timeout_s:g} s"
            )
        )
        self.close()

    def _fail_waiters(self, error: StorageConnectionError) -> None:
        for waiter in (self._response, self._drain):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)

    def _try_complete(self) -> None:
        waiter = self._response
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self._buffer, eof=self._eof)
        except ValueError as exc:
            waiter.set_exception(
                StorageConnectionError(f"bad answer from {self.origin.authority}: {exc}")
            )
            self.close()
            return
        if parsed is not None:
            response, used = parsed
            del self._buffer[:used]
            waiter.set_result(response)


def parse_response(buffer: bytearray | bytes, *, eof: bool) -> tuple[StorageResponse, int] | None:
    """A whole response at the start of ``buffer`` and the bytes it takes, or None if partial."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise ValueError("response head too large")
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"
    start = end + 4
    if status < 200 and status != 101:  # 1xx interim answers (100 Continue): skip them
        rest = parse_response(buffer[start:], eof=eof)
        return None if rest is None else (rest[0], start + rest[1])
    if status in (204, 304):
        return StorageResponse(status, headers, b""), start
    if "chunked" in headers.get("transfer-encoding", "").lower():
        decoded = _dechunk(buffer, start)
        if decoded is None:
            if eof:
                raise ValueError("connection closed inside a chunked body")
            return None
        body, used = decoded
        return StorageResponse(status, headers, body), used
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise ValueError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > MAX_RESPONSE_BODY:
            raise ValueError(f"response body of {length} bytes")
        if len(buffer) - start < length:
            if eof:
                raise ValueError("connection closed inside the body")
            return None
        return StorageResponse(
            status, headers, bytes(buffer[start : start + length])
        ), start + length
    # Neither length nor chunking: the body runs to the end of the connection.
    if not eof:
        if len(buffer) - start > MAX_RESPONSE_BODY:
            raise ValueError("response body too large")
        return None
    headers["connection"] = "close"
    return StorageResponse(status, headers, bytes(buffer[start:])), len(buffer)


def _dechunk(buffer: bytearray | bytes, start: int) -> tuple[bytes, int] | None:
    body = bytearray()
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {size_text[:20]!r}") from None
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", at - 2)
            if trailer_end < 0:
                return None
            return bytes(body), trailer_end + 4
        if len(buffer) < at + size + 2:
            return None
        body += buffer[at : at + size]
        if len(body) > MAX_RESPONSE_BODY:
            raise ValueError("response body too large")
        at += size + 2


class StorageClient:
    """PUTs to pre-signed URLs over at most ``limit`` kept-alive connections."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout_s: float = 30.0,
        idle_timeout_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._ssl_context = ssl_context
        self._closed = False

    async def put(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes | AsyncIterator[bytes],
        *,
        content_length: int,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> StorageResponse:
        """Raises ``StorageConnectionError`` when no whole response arrived.

        ``before_send`` is awaited before every attempt on the wire, a re-send included (a
        rate budget must count each one).
        """
        scheme_end = url.find("://")
        path_start = url.find("/", scheme_end + 3)
        authority_end = path_start if path_start >= 0 else len(url)
        origin = self._origin(url[:authority_end])
        target = url[path_start:] if path_start >= 0 else "/"
        if "#" in target:
            target = target.split("#", 1)[0]
        lines = [f"PUT {target} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {content_length}\r\n\r\n")
        head = "".join(lines).encode("latin-1")
        async with self._slots:
            connection = self._take_idle(origin)
            while True:
                if connection is None:
                    connection = await self._connect(origin)
                reused = connection.used
                try:
                    if before_send is not None:
                        await before_send()
                    response, keep = await connection.exchange(head, body)
                except StorageConnectionError:
                    connection.close()
                    # A kept-alive connection the server closed meanwhile: one attempt on a
                    # new one (a PUT of the same bytes to the same URL is idempotent). The new
                    # connection is not reused, so a second failure is raised.
                    if reused and isinstance(body, bytes):
                        connection = None
                        continue
                    raise
                except BaseException:
                    connection.close()
                    raise
                break
            if keep and not self._closed:
                self._idle.setdefault(origin, []).append(connection)
            else:
                connection.close()
            return response

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> StorageClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # internals -----------------------------------------------------------------------------
    def _origin(self, prefix: str) -> _Origin:
        origin = self._origins.get(prefix)
        if origin is None:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {prefix!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            origin = _Origin(parts.scheme, parts.hostname, port, parts.netloc)
            self._origins[prefix] = origin
        return origin

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()  # the most recently used: least likely to have timed out
            if connection.reusable():
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop, origin, self._idle_timeout_s),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except (OSError, TimeoutError) as exc:
            raise StorageConnectionError(
                f"cannot connect to {origin.authority}: {type(exc).__name__}: {exc}"
            ) from exc
        return protocol
