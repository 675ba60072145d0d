"""Fetching the edited outputs: streamed to disk, written atomically, never twice."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiofiles
import aiohttp

from styldod_batch.budget import RateBudget
from styldod_batch.errors import NetworkError, ServerError, StyldodError, error_for_status
from styldod_batch.journal import Journal
from styldod_batch.retry import retrying
from styldod_batch.settings import RetryPolicy

CHUNK = 256 * 1024


def _complete_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def output_path(directory: Path, order_key: str, client_image_id: str) -> Path:
    """``DIR/<order>/<client_image_id>``, with no way out of ``DIR``."""
    parts = [
        p
        for p in PurePosixPath(order_key.replace("\\", "/")).parts
        + PurePosixPath(client_image_id.replace("\\", "/")).parts
        if p not in ("", ".", "..", "/")
    ]
    return directory.joinpath(*parts) if parts else directory / "output"


@dataclass(slots=True)
class DownloadResult:
    order_key: str
    client_image_id: str
    path: str
    status: str  # downloaded | already | failed
    size: int = 0
    error: str | None = None


class OutputDownloader:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        directory: Path,
        *,
        budget: RateBudget | None,
        journal: Journal | None,
        retry: RetryPolicy,
        concurrency: int,
    ) -> None:
        self.session = session
        self.directory = directory
        self.journal = journal
        self.retry = retry
        self._middlewares = (budget.middleware(),) if budget is not None else ()
        self._slots = asyncio.Semaphore(concurrency)
        self.retries = 0

    async def fetch_order(
        self, order_key: str, order_id: str, image_list: list[dict[str, Any]]
    ) -> list[DownloadResult]:
        jobs = [
            self._fetch_one(
                order_key, order_id, str(image["client_image_id"]), str(image["output_url"])
            )
            for image in image_list
            if image.get("image_status") == "completed" and image.get("output_url")
        ]
        return list(await asyncio.gather(*jobs))

    async def _fetch_one(
        self, order_key: str, order_id: str, client_image_id: str, url: str
    ) -> DownloadResult:
        dest = output_path(self.directory, order_key, client_image_id)
        if self.journal is not None:
            done = self.journal.output(order_id, client_image_id)
            if done is not None and dest.is_file() and dest.stat().st_size == done[1]:
                return DownloadResult(order_key, client_image_id, str(dest), "already", done[1])

        def count(_exc: BaseException) -> None:
            self.retries += 1

        async with self._slots:
            try:
                size, md5, fetched = await retrying(
                    lambda: self._get(url, dest), self.retry, on_retry=count
                )
            except StyldodError as exc:
                return DownloadResult(
                    order_key, client_image_id, str(dest), "failed", error=str(exc)
                )
        if self.journal is not None:
            self.journal.record_output(order_id, client_image_id, str(dest), size, md5)
        return DownloadResult(
            order_key, client_image_id, str(dest), "downloaded" if fetched else "already", size
        )

    async def _get(self, url: str, dest: Path) -> tuple[int, str, bool]:
        """One attempt. Skips a file already complete (same size as the answer announces)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        temporary = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
        digest = hashlib.md5(usedforsecurity=False)
        try:
            async with self.session.get(
                url, middlewares=self._middlewares, allow_redirects=True
            ) as resp:
                if resp.status >= 400:
                    cls = error_for_status(resp.status)
                    raise cls(f"GET {url}: HTTP {resp.status}", status=resp.status)
                expected = resp.content_length
                # Without a journal, a file of the announced size is taken as complete.
                if (
                    expected is not None
                    and self.journal is None
                    and _complete_size(dest) == expected
                ):
                    return expected, "", False
                size = 0
                async with aiofiles.open(temporary, "wb") as handle:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        await handle.write(chunk)
            if expected is not None and size != expected:
                raise ServerError(f"GET {url}: {size} of {expected} bytes arrived")
            os.replace(temporary, dest)
            return size, digest.hexdigest(), True
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise NetworkError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        finally:
            if temporary.exists():
                temporary.unlink()
