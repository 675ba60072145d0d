"""The storage gateway: what S3 enforces and SeaweedFS does not, in front of SeaweedFS.

A PUT with ``Transfer-Encoding: chunked`` gets 501 NotImplemented and a PUT without
``Content-Length`` gets 411, as on S3. Everything else is forwarded untouched (the ``Host``
header included), so SeaweedFS still verifies the SigV4 signature, expiry and Content-MD5.
Fault injection and the "expire every outstanding URL now" switch live here too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
import random
from collections.abc import AsyncIterator
from typing import Protocol
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from styldod_batch.identity import key_label
from styldod_batch.sandbox.config import Faults
from styldod_batch.sandbox.requestlog import LogEntry, RequestLog


def _chosen(name: str, share: float) -> bool:
    """Whether ``name`` is among ``share`` of all names: the same answer every time."""
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return value < share * 2**32


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
STREAM_CHUNK = 256 * 1024
LOGGED_HEADERS = ("Content-Type", "Content-Length", "Content-MD5", "Transfer-Encoding")


def s3_error(
    status: int, code: str, message: str, resource: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml", headers=headers)


class URLRevocations:
    """Makes every upload URL signed before a moment count as expired."""

    def __init__(self) -> None:
        # X-Amz-Date has whole-second resolution: URLs signed before this second are expired,
        # and those signed within it but before the switch are listed by signature.
        self.before_second: str | None = None
        self.signatures: set[str] = set()
        self._recent: list[tuple[str, str]] = []

    def issued(self, amz_date: str, signature: str) -> None:
        if self._recent and self._recent[0][0] != amz_date:
            self._recent = [item for item in self._recent if item[0] == amz_date]
        self._recent.append((amz_date, signature))

    def expire_all_now(self) -> None:
        # The signer's clock (``sigv4.presign``): ``time.gmtime()`` reads the kernel's coarse
        # clock, a tick behind, so just after a second began a URL signed in it escaped.
        now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.before_second = now
        self.signatures = {sig for date, sig in self._recent if date >= now}

    def is_revoked(self, amz_date: str, signature: str) -> bool:
        if self.before_second is None:
            return False
        return amz_date < self.before_second or signature in self.signatures


class KeyAccounting(Protocol):
    """What the gateway asks the Order API: which key an object's URL was issued to, and
    room in that key's rate window."""

    keys_by_object: dict[str, str]

    def window_wait(self, key: str, now: float) -> float | None: ...


class StorageGateway:
    def __init__(
        self,
        *,
        upstream: str,
        faults: Faults,
        log: RequestLog,
        revocations: URLRevocations,
        keys: KeyAccounting | None = None,
        limit_per_key: bool = False,
        stored: dict[str, int] | None = None,
    ) -> None:
        self.upstream = URL(upstream)
        # What S3 stored through this gateway (its 200 to a PUT): object path -> size. The
        # Order API checks an order's images here before asking S3 (``OrderAPI.stored``).
        self.stored: dict[str, int] = stored if stored is not None else {}
        self.faults = faults
        self.log = log
        self.revocations = revocations
        self.keys = keys
        self.limit_per_key = limit_per_key
        # The gateway's own address, and a second one that redirected PUTs are sent to.
        self.host = ""
        self.alias_host = ""
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=512, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry = self.log.start("storage", request.method, request.path)
        entry.headers = {h: request.headers[h] for h in LOGGED_HEADERS if h in request.headers}
        try:
            response = await self._handle(request, entry)
            entry.status = response.status
            return response
        except BaseException:
            entry.status = entry.status or 499
            raise
        finally:
            self.log.finish(entry)

    async def _handle(self, request: web.Request, entry: LogEntry) -> web.StreamResponse:
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        resource = request.path
        if request.method == "PUT":
            if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
                entry.error_code = "NotImplemented"
                refusal = s3_error(
                    501,
                    "NotImplemented",
                    "A header you provided implies functionality that is not implemented "
                    "(Transfer-Encoding: chunked).",
                    resource,
                )
                refusal.force_close()  # the body is never read
                return refusal
            if request.content_length is None:
                entry.error_code = "MissingContentLength"
                return s3_error(
                    411,
                    "MissingContentLength",
                    "You must provide the Content-Length HTTP header.",
                    resource,
                )
        key = self._key_of(request, entry)
        if request.method == "PUT" and key is not None:
            refused = await self._per_key(request, entry, key)
            if refused is not None:
                return refused
        query = request.rel_url.query
        amz_date, signature = query.get("X-Amz-Date"), query.get("X-Amz-Signature")
        if amz_date and signature and self.revocations.is_revoked(amz_date, signature):
            entry.error_code = "AccessDenied"
            await _drain(request)
            return s3_error(403, "AccessDenied", "Request has expired", resource)
        roll = random.random()
        if roll < faults.storage_429:
            entry.fault = entry.error_code = "SlowDown"
            await _drain(request)
            return s3_error(
                429,
                "SlowDown",
                "Please reduce your request rate.",
                resource,
                headers={"Retry-After": faults.next_retry_after()},
            )
        roll -= faults.storage_429
        if faults.take_next("storage_5xx_next") or roll < faults.storage_5xx:
            entry.fault = entry.error_code = "ServiceUnavailable"
            await _drain(request)
            return s3_error(503, "ServiceUnavailable", "Injected storage fault.", resource)
        roll -= faults.storage_5xx
        if roll < faults.storage_reset and request.can_read_body:
            entry.fault = "reset"
            await _reset_midway(request, entry)
        return await self._forward(request, entry)

    def _key_of(self, request: web.Request, entry: LogEntry) -> str | None:
        """The key the object's URL was issued to (``/BUCKET/KEY``, path style)."""
        if self.keys is None:
            return None
        parts = request.path.split("/", 2)
        key = self.keys.keys_by_object.get(parts[2]) if len(parts) == 3 else None
        if key is not None:
            entry.key_fingerprint = key_label(key)
        return key

    async def _per_key(
        self, request: web.Request, entry: LogEntry, key: str
    ) -> web.StreamResponse | None:
        """Faults and limits tied to an upload URL: a refused URL, a redirect, the key's
        rate window."""
        faults = self.faults
        parts = request.path.split("/", 2)
        # uploads/<batch>/<index>/<the file's name>
        file_name = parts[2].split("/", 3)[-1]
        if faults.storage_403 and _chosen(file_name, faults.storage_403):
            entry.fault = entry.error_code = "AccessDenied"
            await _drain(request)
            return s3_error(403, "AccessDenied", "Access Denied", request.path)
        if request.host != self.alias_host and faults.take_next("storage_redirects"):
            entry.fault = "redirect"
            await _drain(request)
            location = f"http://{self.alias_host}{request.raw_path}"
            return s3_error(
                307,
                "TemporaryRedirect",
                "Please re-send this request to the specified temporary endpoint.",
                request.path,
                headers={"Location": location},
            )
        if self.limit_per_key:
            wait = self.keys.window_wait(key, entry.mono) if self.keys is not None else None
            if wait is not None:
                entry.error_code = "SlowDown"
                await _drain(request)
                return s3_error(
                    429,
                    "SlowDown",
                    "Please reduce your request rate.",
                    request.path,
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return None

    async def _forward(self, request: web.Request, entry: LogEntry) -> web.StreamResponse:
        assert self._session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        if request.host == self.alias_host:
            headers["Host"] = self.host  # signed for the gateway's own address
        target = self.upstream.join(URL(request.raw_path, encoded=True))
        body: AsyncIterator[bytes] | None = None
        if request.can_read_body:
            body = _counting(request, entry)
        async with self._session.request(
            request.method,
            target,
            headers=headers,
            data=body,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            allow_redirects=False,
        ) as upstream:
            out_headers = CIMultiDict(
                (k, v)
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
            )
            if upstream.status >= 400:
                entry.error_code = _s3_code(await upstream.read())
                return web.Response(
                    status=upstream.status, headers=out_headers, body=await upstream.read()
                )
            if request.method == "PUT" and upstream.status == 200:
                self.stored[request.rel_url.raw_path] = entry.bytes_in
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(STREAM_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response


def _s3_code(body: bytes) -> str | None:
    start = body.find(b"<Code>")
    end = body.find(b"</Code>")
    if start < 0 or end < 0:
        return None
    return body[start + 6 : end].decode(errors="replace")


async def _counting(request: web.Request, entry: LogEntry) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(STREAM_CHUNK):
        entry.bytes_in += len(chunk)
        yield chunk


async def _drain(request: web.Request) -> None:
    if request.can_read_body:
        async for _ in request.content.iter_chunked(STREAM_CHUNK):
            pass


async def _reset_midway(request: web.Request, entry: LogEntry) -> None:
    """Read about half of the body, then drop the connection without answering."""
    wanted = max(1, (request.content_length or 2) // 2)
    while entry.bytes_in < wanted:
        chunk = await request.content.read(min(STREAM_CHUNK, wanted - entry.bytes_in))
        if not chunk:
            break
        entry.bytes_in += len(chunk)
    entry.error_code = "ConnectionReset"
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("injected connection reset")
