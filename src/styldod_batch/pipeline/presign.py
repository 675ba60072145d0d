"""Pre-signing just in time: a worker gathers up to the contract's files per call (50) from
what intake planned, asks for their upload URLs in one call, and hands each file with its URL
to the upload workers. A 400/422 on a batch is bisected down to the file the API refuses (a
bad file in 50 costs about a dozen calls, not 50). Expired URLs are refreshed in batches too
(``refresh``): the files whose URLs expired within a gathering window share one call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    NetworkError,
    PermissionDenied,
    ServiceUnreachable,
    StyldodError,
    UnprocessableEntity,
)
from styldod_batch.models import ImageItem, UploadTarget
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.ports import SYSTEM_CLOCK, Clock, UploadURLSource

PRESIGN_WORKERS = 2
# How long a part-filled upload-URL batch waits for more files: every call costs a grant of
# the rate budget, and a listing's files are planned a few milliseconds apart.
PRESIGN_GATHER_S = 0.02
# The end of a queue (each of a stage's workers takes one).
DONE = object()

Planned = tuple[ImageItem, OrderPart]
Ready = tuple[ImageItem, OrderPart, UploadTarget]
# A file whose URL expired, and the upload waiting for its new one.
Expired = tuple[ImageItem, "asyncio.Future[UploadTarget]"]
T = TypeVar("T")
# What the API says of a file it will not give a URL for: bisected down to that file.
REFUSALS = (BadRequest, UnprocessableEntity)


class Failures(Protocol):
    async def failed(self, part: OrderPart, item: ImageItem, error: str) -> None: ...


class Presigner:
    def __init__(
        self,
        urls: UploadURLSource,
        planned: asyncio.Queue[Planned | object],
        ready: asyncio.Queue[Ready | object],
        failures: Failures,
        *,
        max_files: int,
        base_url: str,
        stopping: asyncio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.urls = urls
        self.planned = planned
        self.ready = ready
        self.failures = failures
        self.max_files = max_files
        self.base_url = base_url
        self.stopping = stopping
        self.clock = clock
        # One worker gathers a batch at a time, so two never split a listing's files.
        self._gathering = asyncio.Lock()
        # Whether the API answered anything in this run (an error status counts).
        self.answered = False
        # Files whose URL expired, waiting for the next refresh call, and that call's task.
        self._expired: list[Expired] = []
        self._refresher: asyncio.Task[None] | None = None

    async def worker(self) -> None:
        limit = self.max_files
        while True:
            async with self._gathering:
                first = await self.planned.get()
                if first is DONE:
                    return
                batch: list[Any] = [first]
                if not self._gather(batch, limit) and len(batch) < limit:
                    await self.clock.sleep(PRESIGN_GATHER_S)
                    self._gather(batch, limit)
            if not self.stopping.is_set():
                await self.presign(batch)

    def _gather(self, batch: list[Any], limit: int) -> bool:
        """Add what is planned now to ``batch``, up to ``limit``; True once planning ended."""
        while len(batch) < limit:
            try:
                nxt = self.planned.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if nxt is DONE:
                self.planned.put_nowait(DONE)  # leave it for the stage's other worker
                return True
            batch.append(nxt)
        return False

    async def presign(self, batch: list[Planned]) -> None:
        await bisect_refusals(batch, self._presign_once, self._refused)

    async def _refused(self, planned: Planned, refusal: StyldodError) -> None:
        item, part = planned
        await self.failures.failed(part, item, str(refusal))

    async def _presign_once(self, batch: list[Planned]) -> None:
        try:
            targets = await self.urls.upload_urls([item for item, _ in batch])
            self.answered = True
        except NetworkError as exc:
            if not self.answered:
                # Not one answer this run (a closed port, an unknown host): one line, exit 4,
                # rather than every file failing with the same reason.
                host = urlsplit(self.base_url).netloc
                raise ServiceUnreachable(host, str(exc)) from None
            for item, part in batch:
                await self.failures.failed(part, item, f"no upload URL: {exc}")
            return
        except REFUSALS:
            self.answered = True
            raise
        except (AuthenticationError, PermissionDenied):
            raise
        except StyldodError as exc:
            self.answered = self.answered or isinstance(exc, APIError)
            for item, part in batch:
                await self.failures.failed(part, item, f"no upload URL: {exc}")
            return
        for (item, part), target in zip(batch, targets, strict=True):
            await self.ready.put((item, part, target))

    async def refresh(self, item: ImageItem) -> UploadTarget:
        """A new upload URL for ``item``, whose URL expired before its PUT: asked together
        with the other files whose URLs expired meanwhile (URLs of one batch expire at once)."""
        waiting: asyncio.Future[UploadTarget] = asyncio.get_running_loop().create_future()
        self._expired.append((item, waiting))
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_expired(), name="refresh URLs")
        return await waiting

    async def close(self) -> None:
        """End a refresh call still going (the run is over: nobody waits for it)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _refresh_expired(self) -> None:
        await self.clock.sleep(PRESIGN_GATHER_S)
        while self._expired:
            batch = self._expired[: self.max_files]
            del self._expired[: self.max_files]
            await self._refresh_batch(batch)

    async def _refresh_batch(self, batch: list[Expired]) -> None:
        await bisect_refusals(batch, self._refresh_once, _refused_refresh)

    async def _refresh_once(self, batch: list[Expired]) -> None:
        try:
            targets = await self.urls.upload_urls([item for item, _ in batch])
        except REFUSALS:
            raise
        except asyncio.CancelledError as exc:
            _settle(batch, exc)
            raise
        except Exception as exc:  # each waiting upload takes the error as its own
            _settle(batch, exc)
            return
        for (_, waiting), target in zip(batch, targets, strict=True):
            if not waiting.done():
                waiting.set_result(target)


async def bisect_refusals(
    batch: list[T],
    ask: Callable[[list[T]], Awaitable[None]],
    refused: Callable[[T, StyldodError], Awaitable[None]],
) -> None:
    """``ask`` for the batch's URLs in one call; on a 400/422 for several files, ask for each
    half again, so the file the API refuses ends alone (``refused``) and the rest go on: one
    bad file in 50 costs about a dozen calls, not 50."""
    try:
        await ask(batch)
    except REFUSALS as exc:
        if len(batch) == 1:
            await refused(batch[0], exc)
            return
        middle = len(batch) // 2
        await bisect_refusals(batch[:middle], ask, refused)
        await bisect_refusals(batch[middle:], ask, refused)


async def _refused_refresh(expired: Expired, refusal: StyldodError) -> None:
    _settle([expired], refusal)


def _settle(batch: list[Expired], exc: BaseException) -> None:
    for _, waiting in batch:
        if not waiting.done():
            if isinstance(exc, asyncio.CancelledError):
                waiting.cancel()
            else:
                waiting.set_exception(exc)
