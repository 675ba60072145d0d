"""Fetching the edited outputs: streamed to disk, saved exactly as sent, written atomically,
never twice.

Outputs are named by the service (``client_image_id``, ``output_url``), so each one is
checked before it touches the disk or the network: a name the file system cannot hold, two
images claiming one file (or a file and a folder of the same name), a URL that is not
http(s) or whose host the ``OutputHostPolicy`` refuses (checked again before every redirect
is followed), a transfer that breaks: each fails that image alone, with a reason naming it,
and every other output still downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiofiles
import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from styldod_batch.budget import Budget, ByteBucket, sent_trace
from styldod_batch.errors import (
    NetworkError,
    StyldodError,
    error_for_status,
)
from styldod_batch.ledger import Ledger
from styldod_batch.output_names import (
    NAME_MAX_BYTES,
    UnusableOutput,
    check_download_folder,
    http_url,
    output_path,
    shown_url,
    temporary_path,
    without_queries,
)
from styldod_batch.output_policy import OutputHostPolicy, PolicyResolver
from styldod_batch.retry import retrying
from styldod_batch.settings import RetryPolicy

# Naming and checking outputs lives in ``output_names``; its names stay importable from here.
__all__ = [
    "CHUNK",
    "CONNECT_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_REDIRECTS",
    "NAME_MAX_BYTES",
    "REDIRECT_STATUSES",
    "REQUEST_HEADERS",
    "DownloadResult",
    "OutputDownloader",
    "UnusableOutput",
    "check_download_folder",
    "download_timeout",
    "http_url",
    "open_download_session",
    "output_path",
    "shown_url",
    "temporary_path",
]


CHUNK = 256 * 1024
MAX_REDIRECTS: Final = 10
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
CONNECT_TIMEOUT_S: Final = 30.0
# A download may take as long as it keeps progressing; it fails once no byte arrived for this.
IDLE_TIMEOUT_S: Final = 60.0
# Outputs are saved as sent: never ask for (nor undo) a content coding.
REQUEST_HEADERS: Final[Mapping[str, str]] = {"Accept-Encoding": "identity"}


def download_timeout(idle_timeout_s: float = IDLE_TIMEOUT_S) -> aiohttp.ClientTimeout:
    """No cap on the whole transfer (aiohttp's default is 300 s), only on silence."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=CONNECT_TIMEOUT_S,
        sock_connect=CONNECT_TIMEOUT_S,
        sock_read=idle_timeout_s,
    )


def open_download_session(
    *,
    connections: int = 100,
    policy: OutputHostPolicy | None = None,
    resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """The session downloads are meant to run on: bytes kept exactly as sent (no automatic
    decompression), proxies from the environment, no total time cap. ``OutputDownloader``
    also sets these per request, so it stays safe on any session. With ``policy``, the
    addresses a name resolves to when connecting pass it too (``resolver``: the one asked
    underneath, the system's by default)."""
    connector = aiohttp.TCPConnector(
        limit=connections,
        ttl_dns_cache=300,
        resolver=PolicyResolver(policy, resolver) if policy is not None else resolver,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        trust_env=True,
        timeout=download_timeout(),
        trace_configs=[sent_trace()],  # a download that leaves late re-stamps its grant
    )


def _complete_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


@dataclass(slots=True)
class DownloadResult:
    order_key: str
    client_image_id: str
    path: str
    status: str  # downloaded | already | failed
    size: int = 0
    error: str | None = None


@dataclass(slots=True)
class _Planned:
    """One completed image of an order, its destination decided (or why it has none)."""

    client_image_id: str
    url: object
    dest: Path | None
    problem: str | None


class OutputDownloader:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        directory: Path,
        *,
        budget: Budget | None,
        ledger: Ledger | None,
        retry: RetryPolicy,
        concurrency: int,
        policy: OutputHostPolicy,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        bandwidth: ByteBucket | None = None,
    ) -> None:
        self.session = session
        self.policy = policy
        self.directory = directory
        self.ledger = ledger
        self.retry = retry
        self.timeout = download_timeout(idle_timeout_s)
        self._middlewares = (budget.middleware(),) if budget is not None else ()
        self._budget = budget  # a 429/SlowDown pauses it (every download waits)
        self._bandwidth = bandwidth  # --bwlimit: bytes/s across every download
        self._slots = asyncio.Semaphore(concurrency)
        self.retries = 0

    async def fetch_order(
        self, order_key: str, order_id: str, image_list: list[dict[str, Any]]
    ) -> list[DownloadResult]:
        """Every completed image's output; each problem fails its image only (this never
        raises, except when cancelled)."""
        planned = self._plan(order_key, image_list)
        return list(
            await asyncio.gather(*(self._fetch_one(order_key, order_id, p) for p in planned))
        )

    def _plan(self, order_key: str, image_list: list[dict[str, Any]]) -> list[_Planned]:
        """Destinations in list order; an image whose file would be, or be inside, an earlier
        image's file (``x`` and ``x/y``, or two IDs for one name) fails instead."""
        planned: list[_Planned] = []
        files: dict[Path, str] = {}
        folders: dict[Path, str] = {}
        for index, image in enumerate(image_list):
            if not isinstance(image, dict):
                continue
            if image.get("image_status") != "completed" or not image.get("output_url"):
                continue
            raw_id = image.get("client_image_id")
            if isinstance(raw_id, int) and not isinstance(raw_id, bool):
                raw_id = str(raw_id)
            if not isinstance(raw_id, str):
                planned.append(
                    _Planned(f"#{index + 1}", None, None, "the image has no client_image_id")
                )
                continue
            try:
                dest = output_path(self.directory, order_key, raw_id)
            except UnusableOutput as exc:
                planned.append(_Planned(raw_id, None, None, str(exc)))
                continue
            problem = self._clash(dest, files, folders)
            if problem is not None:
                planned.append(_Planned(raw_id, None, dest, problem))
                continue
            files[dest] = raw_id
            for parent in dest.parents:
                if parent == self.directory:
                    break
                folders.setdefault(parent, raw_id)
            planned.append(_Planned(raw_id, image["output_url"], dest, None))
        return planned

    @staticmethod
    def _clash(dest: Path, files: dict[Path, str], folders: dict[Path, str]) -> str | None:
        if dest in files:
            return f"image {files[dest]!r} of the order has the same file, {dest}"
        if dest in folders:
            return f"its file {dest} is the folder of image {folders[dest]!r}"
        for parent in dest.parents:
            if parent in files:
                return f"its folder {parent} is the file of image {files[parent]!r}"
        return None

    async def _fetch_one(self, order_key: str, order_id: str, image: _Planned) -> DownloadResult:
        shown_path = str(image.dest or self.directory / order_key)
        try:
            if image.problem is not None:
                raise UnusableOutput(image.problem)
            assert image.dest is not None
            return await self._fetch(
                order_key, order_id, image.client_image_id, image.url, image.dest
            )
        except Exception as exc:  # one output's failure, whatever it is, is that image's own
            if isinstance(exc, StyldodError):
                reason = str(exc)
            elif isinstance(exc, OSError):
                reason = f"cannot save it as {shown_path}: {exc.strerror or exc}"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            error = f"image {image.client_image_id!r} of order {order_key}: {reason}"
            return DownloadResult(
                order_key,
                image.client_image_id,
                shown_path,
                "failed",
                error=without_queries(error),
            )

    async def _fetch(
        self, order_key: str, order_id: str, client_image_id: str, raw_url: object, dest: Path
    ) -> DownloadResult:
        if self.ledger is not None:
            done = await self.ledger.output(order_id, client_image_id)
            if done is not None and _complete_size(dest) == done[1]:
                return DownloadResult(order_key, client_image_id, str(dest), "already", done[1])
        url = http_url(raw_url)

        def count(_exc: BaseException) -> None:
            self.retries += 1

        async with self._slots:
            size, md5, fetched = await retrying(
                lambda: self._get(url, dest), self.retry, budget=self._budget, on_retry=count
            )
        if self.ledger is not None and fetched:
            self.ledger.record_output(order_id, client_image_id, str(dest), size, md5)
        return DownloadResult(
            order_key, client_image_id, str(dest), "downloaded" if fetched else "already", size
        )

    async def _get(self, url: URL, dest: Path) -> tuple[int, str, bool]:
        """One attempt, redirects followed by hand (each target must be http(s) too, and pass
        the host policy before it is asked). Skips a file already complete (same size as the
        answer announces)."""
        for _hop in range(MAX_REDIRECTS + 1):
            await self.policy.check(url)
            try:
                async with self.session.get(
                    url,
                    headers=REQUEST_HEADERS,
                    allow_redirects=False,
                    auto_decompress=False,
                    timeout=self.timeout,
                    middlewares=self._middlewares,
                ) as resp:
                    if resp.status in REDIRECT_STATUSES:
                        url = self._redirect_target(url, resp)
                        continue
                    if resp.status >= 400:
                        cls = error_for_status(resp.status)
                        raise cls(f"GET {shown_url(url)}", status=resp.status)
                    if resp.status != 200:
                        raise UnusableOutput(f"GET {shown_url(url)}: unexpected HTTP {resp.status}")
                    return await self._save(url, resp, dest)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                detail = str(exc) or "timed out"
                raise NetworkError(f"GET {shown_url(url)}: {type(exc).__name__}: {detail}") from exc
            except aiohttp.ClientError as exc:
                raise UnusableOutput(f"GET {shown_url(url)}: {type(exc).__name__}: {exc}") from exc
        raise UnusableOutput(f"GET {shown_url(url)}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _redirect_target(url: URL, resp: aiohttp.ClientResponse) -> URL:
        location = resp.headers.get("Location")
        if not location:
            raise UnusableOutput(f"GET {shown_url(url)}: HTTP {resp.status} without a Location")
        try:
            target = url.join(URL(location))
        except (ValueError, TypeError) as exc:
            raise UnusableOutput(
                f"GET {shown_url(url)}: redirected to {shown_url(location)!r}, not a URL"
            ) from exc
        try:
            return http_url(str(target))
        except UnusableOutput as exc:
            raise UnusableOutput(f"GET {shown_url(url)}: redirected: {exc}") from exc

    async def _save(
        self, url: URL, resp: aiohttp.ClientResponse, dest: Path
    ) -> tuple[int, str, bool]:
        expected = resp.content_length
        # Without a ledger, a file of the announced size is taken as complete.
        if expected is not None and self.ledger is None and _complete_size(dest) == expected:
            return expected, "", False
        dest.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(dest)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            async with aiofiles.open(temporary, "wb") as handle:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if self._bandwidth is not None:
                        await self._bandwidth.take(len(chunk))
                    digest.update(chunk)
                    size += len(chunk)
                    await handle.write(chunk)
            if expected is not None and size != expected:
                raise NetworkError(f"GET {shown_url(url)}: {size} of {expected} bytes arrived")
            os.replace(temporary, dest)
        finally:
            temporary.unlink(missing_ok=True)
        return size, digest.hexdigest(), True
