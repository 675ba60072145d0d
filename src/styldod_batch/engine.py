"""The public engine: ``Uploader`` (``async with Uploader(settings) as up: await up.run(...)``)
and ``upload()``. The run itself is ``pipeline/``, one module per stage:

scan (``feed``) -> claim and route (``intake``, ``claims``, ``route``) -> pre-sign (<=50 per
call, just in time: ``presign``) -> upload (``put``) -> settle into order parts (``settle``)
-> orders (``place``); ``events`` tells every result, ``run`` wires them.

Stages are joined by bounded queues, so a folder of a million files is never a million
tasks or a million-entry list: the scanner blocks when the uploaders lag. Every request,
API or storage, passes a rate budget; an order is created as soon as its own images are
settled, with no global barrier.

Exactly-once rests on the account's ledger: a run claims each listing before it touches it
(another run's listings wait until that run lets go, or its claim runs out), each image is
routed by what the ledger knows of it (``pipeline/route.py``), and each order's key and body
are written ahead of its first send and reused by every later attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from styldod_batch.api import OrderAPIClient, RequestCounters
from styldod_batch.budget import (
    Budget,
    ByteBucket,
    StoragePause,
    local_budget,
    open_budget,
    sent_trace,
)
from styldod_batch.errors import StyldodError
from styldod_batch.follow import OrderFollower
from styldod_batch.ledger import Ledger, open_ledger
from styldod_batch.models import ImageResult, OrderResult
from styldod_batch.pipeline.claims import CLAIM_POLL_S
from styldod_batch.pipeline.events import ImageCallback, OrderCallback
from styldod_batch.pipeline.feed import Feed, ManifestSource, Source, feed_for
from styldod_batch.pipeline.place import ORDER_BACKLOG, ORDER_WORKERS
from styldod_batch.pipeline.ports import ObjectStore
from styldod_batch.pipeline.presign import PRESIGN_GATHER_S, PRESIGN_WORKERS
from styldod_batch.pipeline.run import PipelineRun, Services
from styldod_batch.report import Report
from styldod_batch.settings import Settings

if TYPE_CHECKING:  # the receiver (and aiohttp.web) only when a run listens
    from styldod_batch.webhooks import WebhookReceiver

__all__ = [
    "CLAIM_POLL_S",
    "ORDER_BACKLOG",
    "ORDER_WORKERS",
    "PRESIGN_GATHER_S",
    "PRESIGN_WORKERS",
    "STREAM_QUEUE",
    "Feed",
    "ImageCallback",
    "ManifestSource",
    "OrderCallback",
    "PlanCallback",
    "Source",
    "Uploader",
    "upload",
]

# A dry run's plan, one order at a time: {"order", "images": [{..., "options"}]}.
PlanCallback = Callable[[dict[str, Any]], None]
# Results a ``stream()`` reader may lag behind before the run waits for it.
STREAM_QUEUE = 1024


class Uploader:
    """``async with Uploader(settings) as up: report = await up.run(paths)``.

    ``on_image`` and ``on_order`` receive each result as it happens; ``stream`` yields them.
    Every run keeps the account's ledger (``Settings.state``) unless ``Settings.ledger`` is
    False, which gives up exactly-once across runs.
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
        # This process's budgets until ``async with``, which may share them (``Settings.budget``).
        self.api_budget: Budget = local_budget(
            settings.rps, margin_s=settings.window_margin_s, name="api"
        )
        # PUTs and downloads: no cap by default (the API does not count them), only storage's
        # own 429/SlowDown pauses them; a cap of their own, or the API's (share_api_budget).
        self.storage_budget: Budget = self._traffic_budget(settings.upload_rps, "storage")
        self.download_budget: Budget = self._traffic_budget(settings.download_rps, "download")
        self.bandwidth = ByteBucket(settings.bwlimit) if settings.bwlimit else None
        self._session: aiohttp.ClientSession | None = None
        self.api: OrderAPIClient | None = None
        self._file_uploader: ObjectStore | None = None
        self.last_report: Report | None = None
        self.ledger: Ledger | None = None
        self.stopping = asyncio.Event()
        self._current: PipelineRun | None = None
        self._follower: OrderFollower | None = None
        # The most order tasks that waited at once in a run (at most about ORDER_BACKLOG plus
        # the upload workers): what keeps memory flat, for tests and benchmarks.
        self.order_backlog_peak = 0

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The run's one HTTP session (None in a dry run, or outside ``async with``)."""
        return self._session

    @property
    def current_report(self) -> Report | None:
        """The report of the run in progress (or the last one), as it stands."""
        if self._current is None:
            return self.last_report
        return self._current.snapshot()

    def request_stop(self) -> None:
        """Stop taking new work; what is in flight gets ``stop_grace_s`` to finish, then the
        run ends with its report (``interrupted``). The Uploader can run again afterwards."""
        self.stopping.set()

    async def __aenter__(self) -> Uploader:
        self.ledger = await open_ledger(self.settings, read_only=self.settings.dry_run)
        if self.settings.dry_run:
            return self
        try:
            await self._share_budgets()
        except BaseException:
            await self.ledger.close()
            raise
        try:
            self._open_clients()
        except BaseException:
            await self.__aexit__(None, None, None)  # the session, the budgets, the ledger
            raise
        return self

    def _open_clients(self) -> None:
        from styldod_batch.storage import FileUploader

        connector = aiohttp.TCPConnector(
            # API calls and downloads (PUTs have a pool of their own in FileUploader).
            limit=self.settings.concurrency + PRESIGN_WORKERS + ORDER_WORKERS + 4,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=True,
            trace_configs=[sent_trace()],  # an API call that leaves late re-stamps its grant
        )
        self.api = OrderAPIClient(self._session, self.settings, self.api_budget, self.counters)
        self._file_uploader = FileUploader(
            self.settings, self.storage_budget, self.counters, bandwidth=self.bandwidth
        )

    async def _share_budgets(self) -> None:
        """Open the budgets ``Settings.budget`` chooses; by default every process of this
        machine that uses the key shares them (a file in ``default_budget_folder()``)."""
        settings = self.settings

        async def opened(rate: float, name: str) -> Budget:
            return await open_budget(
                settings.budget,
                rate,
                name=name,
                api_key=settings.api_key,
                margin_s=settings.window_margin_s,
                max_pause_s=settings.retry.max_server_wait_s,
            )

        self.api_budget = await opened(settings.rps, "api")
        if settings.upload_rps:
            self.storage_budget = await opened(settings.upload_rps, "storage")
        elif settings.share_api_budget:
            self.storage_budget = self.api_budget
        if settings.download_rps:
            self.download_budget = await opened(settings.download_rps, "download")
        elif settings.share_api_budget:
            self.download_budget = self.api_budget

    def _traffic_budget(self, cap: float | None, name: str) -> Budget:
        """This process's budget for PUTs (``storage``) or downloads: a cap of ``cap``
        requests/s, else the API's with ``share_api_budget``, else one that caps nothing and
        only pauses when storage says SlowDown."""
        settings = self.settings
        if cap:
            return local_budget(cap, margin_s=settings.window_margin_s, name=name)
        if settings.share_api_budget:
            return self.api_budget
        return StoragePause(name=name, max_pause_s=settings.retry.max_server_wait_s)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Each closes even when one before it fails (or is cancelled): after an error inside
        # ``async with``, no session is left open. (Callbacks run last pushed first.)
        async with contextlib.AsyncExitStack() as closing:
            if self.ledger is not None:
                closing.push_async_callback(self.ledger.close)
                self.ledger = None
            budgets = (self.api_budget, self.storage_budget, self.download_budget)
            for budget in {id(b): b for b in budgets}.values():
                close = getattr(budget, "close", None)
                if close is not None:
                    closing.push_async_callback(close)
            if self._session is not None:
                closing.push_async_callback(self._session.close)
                self._session = None
            if self._file_uploader is not None:
                closing.push_async_callback(self._file_uploader.close)
                self._file_uploader = None

    async def run(self, source: Source) -> Report:
        """Upload every image of ``source`` and place its orders; returns the final report.

        Raises ``RunAborted`` (carrying the report so far) when the API refuses the key.
        """
        return await self._run(source, None)

    async def stream(self, source: Source) -> AsyncIterator[ImageResult | OrderResult]:
        """Each image and order result as it happens; the report is ``self.last_report``.

        Results pass through a bounded queue: a reader that falls behind slows the run down
        rather than piling results up. Concurrent streams each get their own.
        """
        results: asyncio.Queue[ImageResult | OrderResult] = asyncio.Queue(maxsize=STREAM_QUEUE)
        task = asyncio.create_task(self._run(source, results))
        try:
            while True:
                if results.empty() and task.done():
                    break
                getter = asyncio.ensure_future(results.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def listen(self, receiver: WebhookReceiver, *, poll: bool = False) -> None:
        """Follow orders by the events of ``receiver`` (which the caller runs, and whose URL
        ``settings.webhook_url`` names) instead of polling (``poll``: as well as). Call it
        before ``run``, so that no event is missed: each is recorded in the ledger before the
        receiver answers 200."""
        self._follower = OrderFollower(
            self.api, self.ledger, poll=poll, poll_interval_s=self.settings.poll_interval_s
        )
        receiver.on_event = self._follower.on_event

    async def follow(self, report: Report, *, timeout_s: float = 3600.0) -> bool:
        """Wait until every order of ``report`` is ``completed`` or ``error``; False when
        ``timeout_s`` ran out first. By polling (low priority in the rate budget), unless
        ``listen`` gave a receiver. Each order's final status and image list land in the
        report; an image the service marked as an error is one of its failures."""
        from styldod_batch.outcomes import follow_report

        if self._follower is None:
            self._follower = OrderFollower(
                self.api, self.ledger, poll=True, poll_interval_s=self.settings.poll_interval_s
            )
        return await follow_report(self.ledger, self._follower, report, timeout_s=timeout_s)

    async def download(self, report: Report, directory: str | os.PathLike[str]) -> None:
        """Fetch the outputs of the report's finished orders (after ``follow``) into
        ``directory/<listing>/<client_image_id>``: streamed, written atomically, never twice.
        The counts land in ``report.outputs``."""
        from styldod_batch.outcomes import download_report

        await download_report(
            self.settings, self.ledger, self.download_budget, report, Path(directory)
        )

    async def _run(
        self, source: Source, sink: asyncio.Queue[ImageResult | OrderResult] | None
    ) -> Report:
        if self.ledger is None:
            raise StyldodError("use the Uploader inside 'async with Uploader(settings) as up'")
        self.stopping.clear()  # a stopped Uploader can run again
        feed = feed_for(source, self.settings)
        try:
            if self.settings.dry_run:
                from styldod_batch.plan import plan_run

                report = await plan_run(
                    feed,
                    self.settings,
                    self.ledger,
                    global_options=self.global_options,
                    on_plan=self.on_plan,
                    on_image=self.on_image,
                    on_order=self.on_order,
                )
            else:
                run = self._current = PipelineRun(self._services(), self.ledger, sink)
                report = await run.execute(feed)
        finally:
            await asyncio.to_thread(feed.close)
        self.last_report = report
        return report

    def _services(self) -> Services:
        """What a run takes of this Uploader: its clients, budgets, counters and callbacks."""
        api = self.api
        assert api is not None and self._file_uploader is not None
        # ``POST /v2/orders`` with one try per call: the order stage retries itself, counting
        # tries (a refusal after a try that may have reached the service is no refusal).
        once = dataclasses.replace(api.settings.retry, max_attempts=1)
        one_try = OrderAPIClient(
            api.session, dataclasses.replace(api.settings, retry=once), api.budget, api.counters
        )
        return Services(
            settings=self.settings,
            urls=api,
            store=self._file_uploader,
            orders=one_try,
            api_budget=api.budget,
            storage_budget=self.storage_budget,
            counters=self.counters,
            stopping=self.stopping,
            on_image=self.on_image,
            on_order=self.on_order,
            on_backlog=self._note_backlog,
        )

    def _note_backlog(self, waiting: int) -> None:
        self.order_backlog_peak = max(self.order_backlog_peak, waiting)


def upload(
    paths: Sequence[str | os.PathLike[str]], settings: Settings | None = None, **changes: Any
) -> Report:
    """Synchronous entry point for callers without an event loop.

    Keeps the account's ledger like every run (``ledger=False`` opts out).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop: this call runs one
    else:
        raise StyldodError(
            "styldod_batch.upload() runs an event loop of its own, and one is running here: "
            "use 'async with Uploader(settings) as up: report = await up.run(paths)'"
        )
    from styldod_batch.runtime import run_async
    from styldod_batch.settings import from_environment

    effective = settings.with_changes(**changes) if settings else from_environment(**changes)

    async def main() -> Report:
        async with Uploader(effective) as uploader:
            return await uploader.run(paths)

    return run_async(main())
