"""One file -> one PUT to its pre-signed URL, with an explicit Content-Length and an MD5 check.

Small files are read and hashed in one step and sent with ``Content-MD5``, so storage itself
rejects a corrupted body: per-file overhead, not bandwidth, is what costs on small files.
Files up to ``inline_read_bytes`` are read on the event loop itself (a page-cache read and an
MD5 of 256 KiB take well under a millisecond, less than a thread hop's round trip); larger
small files take one thread hop. Larger files stream from disk with
aiofiles in fixed chunks (memory stays at one chunk per upload) and are hashed on the way;
either way the ETag storage returns must equal the MD5 of what was read.

PUTs go through an aiohttp session of their own, set up for storage that may be hostile or
broken: proxies from the environment, bodies kept as sent (no decompression), URLs sent
exactly as signed and refused (never sent) when they hold a control character or user
info, 307/308 followed with the body sent again (at most ``MAX_REDIRECTS`` hops, never from
https to http), ``Expect: 100-continue`` before a streamed body, an idle timeout and a
deadline per attempt (``RetryPolicy.put_deadline_*``).
Every attempt on the wire, aiohttp's silent re-send on a dead keep-alive connection and each
redirect hop included, takes a grant from the budget and is counted, in session middlewares.

The proxy for an origin is what ``trust_env=True`` would find (``HTTP(S)_PROXY``,
``NO_PROXY``, proxy credentials), looked up once per origin and passed to each request:
``trust_env`` itself looks it up, and ``~/.netrc``, in a thread on every request (measured
on 2,000 PUTs of 64 KiB to the nginx sink: 2.4 s of CPU instead of 1.35 s), and a netrc
entry for the storage host would add an ``Authorization`` header, which S3 refuses beside
a pre-signed URL's own signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator

import aiofiles
import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from styldod_batch.api import CountingMiddleware, read_at_most
from styldod_batch.budget import Budget, ByteBucket, sent_trace
from styldod_batch.errors import (
    InputError,
    IntegrityError,
    NetworkError,
    StorageError,
    UnsafeUploadURL,
    storage_error,
)
from styldod_batch.models import ImageItem, RequestCounters, UploadTarget
from styldod_batch.settings import Settings

# S3 answers a PUT to a bucket younger than a day with one 307 to the regional endpoint.
MAX_REDIRECTS = 4
# Storage answers a PUT with a few hundred bytes at most; only the start of more is read.
MAX_STORAGE_ANSWER_BYTES = 64 << 10
CONNECT_TIMEOUT_S = 30.0
Proxy = tuple[URL | None, aiohttp.BasicAuth | None]
# A signed URL is printable ASCII: anything else (CR/LF above all) could forge the request.
_NOT_URL_SAFE = re.compile(r"[^\x21-\x7e]")


def read_small(path: str, expected_size: int, expected_mtime_ns: int) -> tuple[bytes, bytes]:
    """The whole file and its MD5 digest, checked unchanged since the scan (one thread hop:
    what is sent is exactly these bytes, so no check is needed after the PUT)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(expected_size + 1)
            after = os.fstat(handle.fileno())
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) != expected_size:
        raise InputError(
            path,
            f"size changed since it was scanned ({expected_size} -> "
            f"{len(data) if len(data) <= expected_size else 'more'} bytes)",
        )
    if after.st_mtime_ns != expected_mtime_ns or after.st_size != expected_size:
        raise InputError(path, "file changed since it was scanned")
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def checked_upload_url(url: str) -> URL:
    """The pre-signed URL as it will be sent (never re-encoded), or ``UnsafeUploadURL``.

    The message never quotes the URL: its signature is a credential for hours.
    """
    if _NOT_URL_SAFE.search(url):
        raise UnsafeUploadURL("the upload URL holds a control character, space or non-ASCII")
    try:
        parsed = URL(url, encoded=True)
    except ValueError as exc:
        raise UnsafeUploadURL(f"the upload URL does not parse: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise UnsafeUploadURL("the upload URL is not an http(s) URL")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise UnsafeUploadURL("the upload URL holds user info (user:password@)")
    return parsed


class FileStream:
    """A file's bytes from disk in fixed chunks, hashed on the way; exactly ``item.size``
    bytes, or an ``InputError`` (kept in ``error``: aiohttp wraps what a body raises)."""

    __slots__ = ("_bandwidth", "_chunks", "chunk_size", "digest", "error", "item")

    def __init__(
        self, item: ImageItem, chunk_size: int, bandwidth: ByteBucket | None = None
    ) -> None:
        self.item = item
        self._bandwidth = bandwidth  # --bwlimit: each chunk waits for its share of the line
        self.chunk_size = chunk_size
        self.digest = hashlib.md5(usedforsecurity=False)
        self.error: InputError | None = None
        self._chunks = self._read()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        """Closes the file now, whether the body was sent whole or not."""
        await self._chunks.aclose()

    async def _read(self) -> AsyncGenerator[bytes, None]:
        item = self.item
        remaining = item.size
        try:
            async with aiofiles.open(item.path, "rb") as handle:
                while remaining > 0:
                    chunk = await handle.read(min(self.chunk_size, remaining))
                    if not chunk:
                        raise InputError(item.path, "file shrank during its upload")
                    remaining -= len(chunk)
                    self.digest.update(chunk)
                    if self._bandwidth is not None:
                        await self._bandwidth.take(len(chunk))
                    yield chunk
                if await handle.read(1):
                    raise InputError(item.path, "file grew during its upload")
        except OSError as exc:
            self.error = InputError(item.path, f"cannot read: {exc.strerror or exc}")
            raise self.error from exc
        except InputError as exc:
            self.error = exc
            raise


class FileUploader:
    """PUTs files to their pre-signed URLs through one aiohttp session of its own."""

    def __init__(
        self,
        settings: Settings,
        budget: Budget | None,
        counters: RequestCounters,
        *,
        accept_missing_etag: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        bandwidth: ByteBucket | None = None,
    ) -> None:
        self.settings = settings
        self.budget = budget
        # --bwlimit: every body, small ones too, goes out in chunks paced by this bucket.
        self.bandwidth = bandwidth
        self.counters = counters
        # Only for a target that stores bodies but sends no ETag (a WebDAV sink in the
        # benchmarks); S3 always answers a PUT with one.
        self.accept_missing_etag = accept_missing_etag
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        # The budget's grant first, then the count: both run again for every attempt.
        self._middlewares = (
            *((budget.middleware(),) if budget is not None else ()),
            CountingMiddleware(counters, "storage"),
        )
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._proxies: dict[tuple[str, str | None, int | None], Proxy] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running event loop; never again once closed (a run
        still going after its ``Uploader`` closed would leave a session open)."""
        if self._closed:
            raise RuntimeError("the file uploader is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.settings.concurrency, ttl_dns_cache=300, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # proxies: see _proxy_for
                auto_decompress=False,
                # Storage sets no cookies worth keeping; a jar costs work on every request.
                cookie_jar=aiohttp.DummyCookieJar(),
                # An error answer is parsed as sent: never ask for it compressed.
                skip_auto_headers=("Accept-Encoding",),
                middlewares=self._middlewares,
                trace_configs=[sent_trace()],  # a PUT that leaves late re-stamps its grant
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FileUploader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def put(self, item: ImageItem, target: UploadTarget) -> str:
        """One attempt; returns the MD5 hex storage confirmed. Raises a classified error."""
        url = checked_upload_url(target.upload_url)
        headers = {"Content-Type": item.content_type, "Content-Length": str(item.size)}
        small = item.size <= self.settings.small_file_bytes
        body = b""
        md5_hex = ""
        if small:
            if item.size <= self.settings.inline_read_bytes:
                # Cheaper than a thread hop (measured: -24 % loop time on 64 KB files).
                body, raw_md5 = read_small(item.path, item.size, item.mtime_ns)
            else:
                body, raw_md5 = await asyncio.to_thread(
                    read_small, item.path, item.size, item.mtime_ns
                )
            headers["Content-MD5"] = base64.b64encode(raw_md5).decode()
            md5_hex = raw_md5.hex()
        policy = self.settings.retry
        timeout = aiohttp.ClientTimeout(
            total=policy.put_deadline_base_s + item.size / policy.put_min_bytes_per_s,
            sock_connect=CONNECT_TIMEOUT_S,
            sock_read=self.settings.storage_idle_timeout_s,
        )
        for _hop in range(MAX_REDIRECTS + 1):
            proxy, proxy_auth = await self._proxy_for(url)
            stream = (
                None
                if small
                else FileStream(item, self.settings.stream_chunk_bytes, self.bandwidth)
            )
            data: bytes | FileStream | AsyncIterator[bytes] = body if stream is None else stream
            if stream is None and self.bandwidth is not None:
                data = paced(body, self.bandwidth, self.settings.stream_chunk_bytes)
            try:
                async with self.session.put(
                    url,
                    data=data,
                    headers=headers,
                    timeout=timeout,
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                    allow_redirects=False,  # followed below: aiohttp cannot re-send a stream
                    expect100=stream is not None,
                ) as resp:
                    status = resp.status
                    answer = b""
                    if resp.content_length != 0:  # S3's 200 has none: skip the read
                        answer, _ = await read_at_most(resp, MAX_STORAGE_ANSWER_BYTES)
                    etag = resp.headers.get("ETag", "").strip().strip('"').lower()
                    location = resp.headers.get("Location")
                    retry_after = resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError) as exc:
                if stream is not None and stream.error is not None:
                    raise stream.error from None
                # aiohttp may quote the URL: never its signature, a credential for hours.
                reason = str(exc).replace(str(url), str(url.with_query(None)))
                raise NetworkError(f"PUT {item.path}: {type(exc).__name__}: {reason}") from exc
            finally:
                if stream is not None:
                    await stream.aclose()
            if status not in (307, 308):
                break
            url = redirect_target(url, location)
        else:
            raise StorageError(f"more than {MAX_REDIRECTS} redirects", status=status)
        if status >= 300:
            raise storage_error(status, answer, retry_after)
        if stream is not None:
            md5_hex = stream.digest.hexdigest()
        if etag != md5_hex and not (self.accept_missing_etag and not etag):
            raise IntegrityError(
                f"PUT {item.path}: storage ETag {etag or '(none)'} is not the "
                f"MD5 of the file ({md5_hex})"
            )
        if stream is not None:  # a streamed file: was it still the same file at the end?
            await asyncio.to_thread(self._check_unchanged, item)
        return md5_hex

    async def _proxy_for(self, url: URL) -> Proxy:
        """The environment's proxy for ``url``'s origin (and its credentials), or none."""
        origin = (url.scheme, url.raw_host, url.port)
        found = self._proxies.get(origin)
        if found is None:
            try:
                found = await asyncio.to_thread(get_env_proxy_for_url, url)
            except LookupError:
                found = (None, None)
            self._proxies[origin] = found
        return found

    @staticmethod
    def _check_unchanged(item: ImageItem) -> None:
        try:
            info = os.stat(item.path)
        except OSError as exc:
            raise InputError(item.path, f"vanished during its upload: {exc.strerror}") from exc
        if info.st_size != item.size or info.st_mtime_ns != item.mtime_ns:
            raise InputError(item.path, "file changed during its upload")


async def paced(body: bytes, bandwidth: ByteBucket, chunk_size: int) -> AsyncIterator[bytes]:
    """A small file's bytes in chunks, each after its share of ``bandwidth``."""
    view = memoryview(body)
    for start in range(0, len(body), chunk_size):
        chunk = view[start : start + chunk_size]
        await bandwidth.take(len(chunk))
        yield bytes(chunk)


def redirect_target(current: URL, location: str | None) -> URL:
    """Where a 307/308 sends the PUT: checked as the signed URL was, and never from https
    down to http (the body and the URL's signature would travel in clear)."""
    if not location:
        raise StorageError("a redirect without a Location", status=307)
    if _NOT_URL_SAFE.search(location):
        raise UnsafeUploadURL("a redirect to a URL with a control character or space")
    try:
        joined = current.join(URL(location, encoded=True))
    except ValueError as exc:
        raise UnsafeUploadURL(f"a redirect to a URL that does not parse: {exc}") from None
    target = checked_upload_url(str(joined))
    if target.scheme != current.scheme and (current.scheme, target.scheme) != ("http", "https"):
        raise UnsafeUploadURL(f"a redirect from {current.scheme} to {target.scheme}")
    return target
