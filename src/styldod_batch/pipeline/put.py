"""The upload workers: each PUTs one file at a time to its pre-signed URL, retried within
the policy (an expired URL is refreshed first), records the outcome in the ledger, and
settles the file into its order part."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from styldod_batch.budget import Budget
from styldod_batch.errors import (
    AuthenticationError,
    InputError,
    PermissionDenied,
    StyldodError,
    UploadURLExpired,
)
from styldod_batch.models import ImageItem, ImageResult, RequestCounters, UploadTarget
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.ports import SYSTEM_CLOCK, Clock, ObjectStore
from styldod_batch.pipeline.presign import DONE, Ready
from styldod_batch.retry import retrying
from styldod_batch.settings import RetryPolicy


class UploadRecord(Protocol):
    def remember_upload(self, item: ImageItem, result: ImageResult) -> None: ...


class Settle(Protocol):
    async def settle(self, part: OrderPart, item: ImageItem, result: ImageResult) -> None: ...


class Putter:
    def __init__(
        self,
        store: ObjectStore,
        ready: asyncio.Queue[Ready | object],
        *,
        refresh: Callable[[ImageItem], Awaitable[UploadTarget]],
        record: UploadRecord,
        settler: Settle,
        retry: RetryPolicy,
        budget: Budget | None,
        counters: RequestCounters,
        stopping: asyncio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.ready = ready
        self.refresh = refresh
        self.record = record
        self.settler = settler
        self.retry = retry
        self.budget = budget
        self.counters = counters
        self.stopping = stopping
        self.clock = clock

    async def worker(self) -> None:
        while (job := await self.ready.get()) is not DONE:
            if self.stopping.is_set():
                continue
            item, part, target = job  # type: ignore[misc]
            result = await self.upload(item, target)
            self.record.remember_upload(item, result)
            await self.settler.settle(part, item, result)

    async def upload(self, item: ImageItem, target: UploadTarget) -> ImageResult:
        attempts = 0
        current = target

        async def attempt() -> str:
            nonlocal attempts, current
            attempts += 1
            try:
                md5: str = await self.store.put(item, current)
            except UploadURLExpired:
                current = await self.refresh(item)
                raise
            return md5

        def count_retry(_exc: BaseException) -> None:
            self.counters.retries += 1

        try:
            md5 = await retrying(
                attempt, self.retry, budget=self.budget, on_retry=count_retry, clock=self.clock
            )
        except (AuthenticationError, PermissionDenied):
            raise
        except StyldodError as exc:
            reason = exc.reason if isinstance(exc, InputError) else str(exc)
            return ImageResult(
                item.path,
                "failed",
                item.client_image_id,
                group=item.group,
                attempts=attempts,
                error=reason,
            )
        return ImageResult(
            item.path,
            "uploaded",
            item.client_image_id,
            group=item.group,
            image_url=current.image_url,
            md5=md5,
            size=item.size,
            attempts=attempts,
        )
