"""The pipeline: scan -> pre-sign (<=50 per call, just in time) -> upload -> orders.

Stages are joined by bounded queues, so a folder of a million files is never a million
tasks or a million-entry list: the scanner blocks when the uploaders lag. Every request,
API or storage, passes a rate budget; an order is created as soon as its own images are
settled, with no global barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from styldod_batch.api import OrderAPIClient, RequestCounters
from styldod_batch.budget import RateBudget
from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    InputError,
    NetworkError,
    PermissionDenied,
    StyldodError,
    UnprocessableEntity,
    UploadURLExpired,
)
from styldod_batch.journal import Journal
from styldod_batch.manifest import manifest_items
from styldod_batch.models import ImageItem, ImageResult, OrderResult, UploadTarget
from styldod_batch.orders import Grouper, OrderPart, effective_options, order_payload
from styldod_batch.report import Report, peak_rss_mb
from styldod_batch.retry import retrying
from styldod_batch.scan import GroupEnd, ScanEvent, Skipped, check_inputs, scan
from styldod_batch.settings import Settings

ImageCallback = Callable[[ImageResult], None]
OrderCallback = Callable[[OrderResult], None]
# A dry run's plan, one order at a time: {"order", "images": [{..., "options"}]}.
PlanCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ManifestSource:
    """Run on a manifest (CSV or JSON Lines) instead of folders."""

    path: Path


Source = Sequence[str | os.PathLike[str]] | AsyncIterable[ImageItem] | ManifestSource

_DONE = object()
_EMPTY = object()
SCAN_BATCH = 256
ORDER_WORKERS = 4
PRESIGN_WORKERS = 2


class RunAborted(StyldodError):
    """A failure that stops the whole run (e.g. 401): carries the report so far."""

    def __init__(self, cause: APIError, report: Report) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.report = report


class Uploader:
    """``async with Uploader(settings) as up: report = await up.run(paths)``.

    ``on_image`` and ``on_order`` receive each result as it happens; ``stream`` yields them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_image: ImageCallback | None = None,
        on_order: OrderCallback | None = None,
        on_plan: PlanCallback | None = None,
        global_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.on_image = on_image
        self.on_order = on_order
        self.on_plan = on_plan
        # The key's server-side defaults, as far as the caller knows them (dry-run plans).
        self.global_options = dict(global_options or {})
        self.counters = RequestCounters()
        self.api_budget = RateBudget(settings.rps, margin_s=settings.window_margin_s, name="api")
        if settings.upload_rps is None:
            self.storage_budget: RateBudget | None = self.api_budget
        elif settings.upload_rps == 0:
            self.storage_budget = None
        else:
            self.storage_budget = RateBudget(
                settings.upload_rps, margin_s=settings.window_margin_s, name="storage"
            )
        self._session: aiohttp.ClientSession | None = None
        self.api: OrderAPIClient | None = None
        self._file_uploader: Any = None
        self.last_report: Report | None = None
        self.journal: Journal | None = None
        self.stopping = asyncio.Event()
        self._current: _Run | None = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The run's one HTTP session (None in a dry run, or outside ``async with``)."""
        return self._session

    @property
    def current_report(self) -> Report | None:
        """The report of the run in progress (or the last one), as it stands."""
        return self._current.report if self._current is not None else self.last_report

    def request_stop(self) -> None:
        """Stop taking new work; what is in flight finishes within ``stop_grace_s``."""
        self.stopping.set()

    async def __aenter__(self) -> Uploader:
        if self.settings.dry_run:
            return self
        if self.settings.journal_path is not None:
            self.journal = Journal.open(
                self.settings.journal_path,
                identity=self.settings.journal_identity(),
                force=self.settings.force_journal,
            )
        from styldod_batch.upload import FileUploader

        connector = aiohttp.TCPConnector(
            # API calls and downloads (PUTs have a pool of their own in FileUploader).
            limit=self.settings.concurrency + PRESIGN_WORKERS + ORDER_WORKERS + 4,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.api = OrderAPIClient(self._session, self.settings, self.api_budget, self.counters)
        self._file_uploader = FileUploader(self.settings, self.storage_budget, self.counters)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file_uploader is not None:
            await self._file_uploader.close()
            self._file_uploader = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
            self.journal = None

    async def run(self, source: Source) -> Report:
        """Upload every image of ``source`` and place its orders; returns the final report.

        Raises ``RunAborted`` (carrying the report so far) when the API refuses the key.
        """
        if not isinstance(source, AsyncIterable | ManifestSource):
            check_inputs(source)
        run = self._current = _Run(self)
        report = await run.execute(source)
        self.last_report = report
        return report

    async def stream(self, source: Source) -> AsyncIterator[ImageResult | OrderResult]:
        """Each image and order result as it happens; the report is ``self.last_report``."""
        events: asyncio.Queue[ImageResult | OrderResult | object] = asyncio.Queue()
        outer_image, outer_order = self.on_image, self.on_order

        def push(result: ImageResult | OrderResult) -> None:
            events.put_nowait(result)

        self.on_image = self.on_order = push
        task = asyncio.create_task(self.run(source))
        task.add_done_callback(lambda _t: events.put_nowait(_DONE))
        try:
            while (event := await events.get()) is not _DONE:
                yield event  # type: ignore[misc]
            task.result()
        finally:
            self.on_image, self.on_order = outer_image, outer_order
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class _Run:
    """The state of one run: queues, groups in progress, the report."""

    def __init__(self, uploader: Uploader) -> None:
        self.up = uploader
        self.journal = uploader.journal
        self.settings = uploader.settings
        self.report = Report(requests=uploader.counters, dry_run=self.settings.dry_run)
        self.grouper = Grouper(
            order_size=self.settings.order_size, by_folder=self.settings.order_by == "folder"
        )
        lookahead = max(
            self.settings.presign_lookahead, self.settings.contract.max_files_per_upload_call
        )
        self.planned: asyncio.Queue[tuple[ImageItem, OrderPart] | object] = asyncio.Queue(
            maxsize=lookahead
        )
        self.ready: asyncio.Queue[tuple[ImageItem, OrderPart, UploadTarget] | object] = (
            asyncio.Queue(maxsize=max(self.settings.concurrency, lookahead))
        )
        self.order_slots = asyncio.Semaphore(ORDER_WORKERS)
        self.group: asyncio.TaskGroup | None = None
        self.started = time.monotonic()

    async def execute(self, source: Source) -> Report:
        try:
            async with asyncio.TaskGroup() as group:
                self.group = group
                group.create_task(self._feed(source))
                if not self.settings.dry_run:
                    presigners = [
                        group.create_task(self._presign_worker()) for _ in range(PRESIGN_WORKERS)
                    ]
                    workers = [
                        group.create_task(self._upload_worker())
                        for _ in range(self.settings.concurrency)
                    ]
                    group.create_task(self._finish_stages(presigners, workers))
                # Order tasks join the group as their images settle; it ends with the last.
        except* (AuthenticationError, PermissionDenied) as fatal:
            self._finish_report()
            cause = fatal.exceptions[0]
            assert isinstance(cause, APIError)
            raise RunAborted(cause, self.report) from None
        finally:
            self.report.interrupted = self.up.stopping.is_set()
        return self._finish_report()

    def _finish_report(self) -> Report:
        self.report.elapsed_s = time.monotonic() - self.started
        self.report.peak_rss_mb = peak_rss_mb()
        return self.report

    # -- stage 1: scan and group ------------------------------------------------------------

    async def _feed(self, source: Source) -> None:
        stopping = self.up.stopping
        async for event in _events(source, self.settings.order_size):
            if stopping.is_set():
                break
            if isinstance(event, ImageItem):
                part, closed = self.grouper.add(event)
                if closed is not None:
                    self._closed(closed)
                done = self._already_uploaded(event, part)
                if done is not None:
                    self._settle(part, done)
                elif self.settings.dry_run:
                    self._image(
                        ImageResult(
                            event.path,
                            "planned",
                            event.client_image_id,
                            size=event.size,
                            group=part.group,
                        )
                    )
                    part.results[event.path] = ImageResult(event.path, "planned")
                else:
                    await self.planned.put((event, part))
            elif isinstance(event, GroupEnd):
                closed = self.grouper.end_group(event.group)
                if closed is not None:
                    self._closed(closed)
            elif isinstance(event, Skipped):
                self._image(ImageResult(event.path, "skipped", error=event.reason))
            elif isinstance(event, InputError):
                self._image(ImageResult(event.path, "failed", error=event.reason))
                if self.journal is not None:
                    self.journal.record_input(event.path, 0, 0, state="failed", error=event.reason)
        if not stopping.is_set():
            for part in self.grouper.end_all():
                self._closed(part)
        for _ in range(PRESIGN_WORKERS):
            await self.planned.put(_DONE)

    def _already_uploaded(self, item: ImageItem, part: OrderPart) -> ImageResult | None:
        """The journal's record of ``item``, when an earlier run uploaded it unchanged."""
        if self.journal is None:
            return None
        row = self.journal.input(item.path)
        if (
            row is None
            or row.state != "uploaded"
            or row.image_url is None
            or (row.size, row.mtime_ns) != (item.size, item.mtime_ns)
        ):
            return None
        return ImageResult(
            item.path,
            "uploaded",
            item.client_image_id,
            group=part.group,
            image_url=row.image_url,
            md5=row.md5,
            size=item.size,
            resumed=True,
        )

    # -- stage 2: pre-sign just in time ------------------------------------------------------

    async def _presign_worker(self) -> None:
        limit = self.settings.contract.max_files_per_upload_call
        while True:
            first = await self.planned.get()
            if first is _DONE:
                return
            batch = [first]
            while len(batch) < limit:
                try:
                    nxt = self.planned.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is _DONE:
                    self.planned.put_nowait(_DONE)  # leave it for the stage's other worker
                    break
                batch.append(nxt)
            if not self.up.stopping.is_set():
                await self._presign(batch)  # type: ignore[arg-type]

    async def _presign(self, batch: list[tuple[ImageItem, OrderPart]]) -> None:
        api = self.up.api
        assert api is not None
        try:
            targets = await api.upload_urls([item for item, _ in batch])
        except (BadRequest, UnprocessableEntity) as exc:
            if len(batch) > 1:
                for one in batch:  # isolate the file the API refuses; the rest go on
                    await self._presign([one])
                return
            item, part = batch[0]
            self._settle(
                part,
                ImageResult(
                    item.path, "failed", item.client_image_id, group=part.group, error=str(exc)
                ),
            )
            return
        except (AuthenticationError, PermissionDenied):
            raise
        except StyldodError as exc:
            for item, part in batch:
                self._settle(
                    part,
                    ImageResult(
                        item.path,
                        "failed",
                        item.client_image_id,
                        group=part.group,
                        error=f"no upload URL: {exc}",
                    ),
                )
            return
        for (item, part), target in zip(batch, targets, strict=True):
            await self.ready.put((item, part, target))

    # -- stage 3: upload -----------------------------------------------------------------------

    async def _upload_worker(self) -> None:
        while (job := await self.ready.get()) is not _DONE:
            if self.up.stopping.is_set():
                continue
            item, part, target = job  # type: ignore[misc]
            result = await self._upload(item, part, target)
            if self.journal is not None:
                self.journal.record_input(
                    item.path,
                    item.size,
                    item.mtime_ns,
                    state=result.status,
                    md5=result.md5,
                    client_image_id=item.client_image_id,
                    group_key=part.group,
                    image_url=result.image_url,
                    attempts=result.attempts,
                    error=result.error,
                )
            self._settle(part, result)

    async def _upload(self, item: ImageItem, part: OrderPart, target: UploadTarget) -> ImageResult:
        api = self.up.api
        assert api is not None
        uploader = self.up._file_uploader
        attempts = 0
        current = target

        async def attempt() -> str:
            nonlocal attempts, current
            attempts += 1
            try:
                md5: str = await uploader.put(item, current)
            except UploadURLExpired:
                current = (await api.upload_urls([item]))[0]
                raise
            return md5

        def count_retry(_exc: BaseException) -> None:
            self.report.requests.retries += 1

        try:
            md5 = await retrying(
                attempt, self.settings.retry, budget=self.up.storage_budget, on_retry=count_retry
            )
        except (AuthenticationError, PermissionDenied):
            raise
        except StyldodError as exc:
            reason = exc.reason if isinstance(exc, InputError) else str(exc)
            return ImageResult(
                item.path,
                "failed",
                item.client_image_id,
                group=part.group,
                attempts=attempts,
                error=reason,
            )
        return ImageResult(
            item.path,
            "uploaded",
            item.client_image_id,
            group=part.group,
            image_url=current.image_url,
            md5=md5,
            size=item.size,
            attempts=attempts,
        )

    async def _finish_stages(
        self, presigners: list[asyncio.Task[None]], workers: list[asyncio.Task[None]]
    ) -> None:
        await asyncio.gather(*presigners)
        for _ in workers:
            await self.ready.put(_DONE)
        await asyncio.gather(*workers)

    # -- stage 4: orders -----------------------------------------------------------------------

    def _image(self, result: ImageResult) -> None:
        self.report.add_image(result)
        if self.up.on_image is not None:
            self.up.on_image(result)

    def _settle(self, part: OrderPart, result: ImageResult) -> None:
        part.results[result.path] = result
        self._image(result)
        if part.settled:
            self._place(part)

    def _closed(self, part: OrderPart) -> None:
        if part.settled:
            self._place(part)

    def _place(self, part: OrderPart) -> None:
        if self.up.stopping.is_set():
            return  # a re-run places it
        assert self.group is not None
        self.group.create_task(self._create_order(part), name=f"order {part.name}")

    async def _create_order(self, part: OrderPart) -> None:
        assert part.name is not None
        name = part.name
        if self.settings.dry_run:
            if self.up.on_plan is not None:
                self.up.on_plan(self._plan(part))
            self._order(OrderResult(name, "planned", len(part.items)))
            return
        journal = self.journal
        earlier = journal.order(name) if journal is not None else None
        if earlier is not None and earlier.state == "created":
            self._order(
                OrderResult(
                    name,
                    "created",
                    earlier.images,
                    order_id=earlier.order_id,
                    order_status=earlier.status,
                    idempotency_key=earlier.idempotency_key,
                    resumed=True,
                )
            )
            return
        if earlier is not None and earlier.state == "sent":
            # The outcome of the earlier request is unknown: the same key and the same body.
            body, key, count = earlier.body, earlier.idempotency_key, earlier.images
        else:
            payload = order_payload(
                part, options=self.settings.options, webhook_url=self.settings.webhook_url
            )
            count = len(payload["image_list"])
            if count == 0:
                self._order(
                    OrderResult(name, "failed", 0, error="no image of this order was uploaded")
                )
                return
            body, key = orjson.dumps(payload), str(uuid.uuid4())
        api = self.up.api
        assert api is not None
        async with self.order_slots:
            if journal is not None and (earlier is None or earlier.state == "failed"):
                await journal.write_order_ahead(name, body, key, count)
            try:
                answer, replayed = await api.create_order(body, key)
            except (AuthenticationError, PermissionDenied):
                raise
            except NetworkError as exc:
                # Unknown outcome: the journal keeps it as sent, so a re-run asks again.
                self._order(
                    OrderResult(
                        name,
                        "failed",
                        count,
                        idempotency_key=key,
                        error=f"outcome unknown, re-run to settle: {exc}",
                    )
                )
                return
            except StyldodError as exc:
                if journal is not None:
                    journal.record_order(name, state="failed", error=str(exc))
                self._order(OrderResult(name, "failed", count, idempotency_key=key, error=str(exc)))
                return
        order_id, status = str(answer["orderID"]), answer.get("order_status")
        if journal is not None:
            journal.record_order(name, state="created", order_id=order_id, status=status)
        self._order(
            OrderResult(
                name,
                "created",
                count,
                order_id=order_id,
                order_status=status,
                idempotency_key=key,
                replayed=replayed,
            )
        )

    def _plan(self, part: OrderPart) -> dict[str, Any]:
        apply_to_all = self.settings.options
        return {
            "order": part.name,
            "images": [
                {
                    "client_image_id": item.client_image_id,
                    "path": item.path,
                    "sequence": item.sequence,
                    "options": effective_options(
                        self.up.global_options, apply_to_all, item.options
                    ),
                }
                for item in sorted(part.items, key=lambda i: i.sequence)
            ],
        }

    def _order(self, result: OrderResult) -> None:
        self.report.add_order(result)
        if self.up.on_order is not None:
            self.up.on_order(result)


async def _events(source: Source, max_images: int) -> AsyncIterator[ScanEvent]:
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
        return
    if isinstance(source, ManifestSource):
        path = source.path
        async for event in _threaded(lambda: manifest_items(path, max_images_per_order=max_images)):
            yield event
        return
    async for event in _threaded(lambda: scan(source)):
        yield event


async def _threaded(make: Callable[[], Iterable[ScanEvent]]) -> AsyncIterator[ScanEvent]:
    """Run a blocking generator in a thread, in batches, behind a bounded queue."""
    batches: queue.Queue[list[ScanEvent] | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(value: list[ScanEvent] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                batches.put(value, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        batch: list[ScanEvent] = []
        try:
            for event in make():
                batch.append(event)
                if len(batch) >= SCAN_BATCH:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(None)
        except BaseException as exc:  # handed to the event loop, which re-raises it
            put(exc)

    def take() -> list[ScanEvent] | BaseException | object | None:
        # A bounded wait, so no executor thread outlives a cancelled run.
        try:
            return batches.get(timeout=0.5)
        except queue.Empty:
            return _DONE if not thread.is_alive() and batches.empty() else _EMPTY

    thread = threading.Thread(target=produce, name="styldod-scan", daemon=True)
    thread.start()
    try:
        while True:
            got = await asyncio.to_thread(take)
            if got is _EMPTY:
                continue
            if got is None or got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            assert isinstance(got, list)
            for event in got:
                yield event
    finally:
        stop.set()


def upload(
    paths: Sequence[str | os.PathLike[str]], settings: Settings | None = None, **changes: Any
) -> Report:
    """Synchronous entry point for callers without an event loop."""
    from styldod_batch.runtime import run_async
    from styldod_batch.settings import from_environment

    effective = settings.with_changes(**changes) if settings else from_environment(**changes)

    async def main() -> Report:
        async with Uploader(effective) as uploader:
            return await uploader.run(paths)

    return run_async(main())
