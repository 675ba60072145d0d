"""The pipeline: scan -> claim and classify -> pre-sign (<=50 per call, just in time) ->
upload -> orders.

Stages are joined by bounded queues, so a folder of a million files is never a million
tasks or a million-entry list: the scanner blocks when the uploaders lag. Every request,
API or storage, passes a rate budget; an order is created as soon as its own images are
settled, with no global barrier.

Exactly-once rests on the account's ledger: a run claims each listing before it touches it
(another run's listings wait until that run lets go, or its claim runs out), each image is
classified by what the ledger knows of it (``rerun.py``), and each order's key and body are
written ahead of its first send and reused by every later attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from styldod_batch.api import OrderAPIClient, RequestCounters
from styldod_batch.budget import (
    Budget,
    ByteBucket,
    StoragePause,
    local_budget,
    open_budget,
    sent_trace,
)
from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    InputError,
    NetworkError,
    PermissionDenied,
    RateLimited,
    RunAborted,
    ServiceUnreachable,
    StyldodError,
    UnprocessableEntity,
    UploadURLExpired,
)
from styldod_batch.follow import OrderFollower
from styldod_batch.ledger import (
    ClaimLost,
    Held,
    ImageRecord,
    Ledger,
    LedgerError,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    OrderRecord,
    Owner,
    open_ledger,
)
from styldod_batch.logs import event as log_event
from styldod_batch.manifest import StagedManifest
from styldod_batch.models import ImageItem, ImageResult, OrderResult, UploadTarget
from styldod_batch.orders import Grouper, OrderPart, item_key, order_name, order_payload
from styldod_batch.report import Report, peak_rss_mb
from styldod_batch.rerun import Verdict, already_ordered, classify, earlier_order
from styldod_batch.retry import retrying
from styldod_batch.scan import FolderScan, GroupEnd, ScanEvent, Skipped
from styldod_batch.scan_thread import threaded
from styldod_batch.settings import Settings

if TYPE_CHECKING:  # the receiver (and aiohttp.web) only when a run listens
    from styldod_batch.webhooks import WebhookReceiver

ImageCallback = Callable[[ImageResult], None]
OrderCallback = Callable[[OrderResult], None]
# A dry run's plan, one order at a time: {"order", "images": [{..., "options"}]}.
PlanCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ManifestSource:
    """Run on a manifest (CSV or JSON Lines) instead of folders. ``staged``: the manifest as
    ``stage_manifest`` read it already (the caller closes it); else the run reads it."""

    path: Path
    staged: StagedManifest | None = field(default=None, compare=False)


Source = Sequence[str | os.PathLike[str]] | AsyncIterable[ImageItem] | ManifestSource

_DONE = object()
_EMPTY = object()
# Results a ``stream()`` reader may lag behind before the run waits for it.
STREAM_QUEUE = 1024
ORDER_WORKERS = 4
# Orders placed and not yet done: at this many, settling uploads wait for one to end, so that
# placing orders pushes back on uploads (many small orders keep memory flat, not a task each).
ORDER_BACKLOG = 32
PRESIGN_WORKERS = 2
# How long a part-filled upload-URL batch waits for more files: every call costs a grant of
# the rate budget, and a listing's files are planned a few milliseconds apart.
PRESIGN_GATHER_S = 0.02
# How often a run looks again at a listing another run holds (a claim: one small
# transaction); the wait ends the run's tail when the holder finishes.
CLAIM_POLL_S = 0.05
_IMAGE_PARAM = re.compile(r"image_list\[(\d+)\]")


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
        self._file_uploader: Any = None
        self.last_report: Report | None = None
        self.ledger: Ledger | None = None
        self.stopping = asyncio.Event()
        self._current: _Run | None = None
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
        feed = _feed_for(source, self.settings)
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
                run = self._current = _Run(self, self.ledger, sink)
                report = await run.execute(feed)
        finally:
            await asyncio.to_thread(feed.close)
        self.last_report = report
        return report


# -- sources ---------------------------------------------------------------------------------


class Feed(Protocol):
    """A run's input: its scan events, and (when ``can_relist``) one listing's events again."""

    can_relist: bool

    def events(self) -> AsyncIterator[ScanEvent]: ...

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]: ...

    def count(self, stop: threading.Event) -> int | None:
        """How many events (other than ``GroupEnd``) ``events()`` yields, worked out apart
        from them (blocking; None when it cannot be known ahead)."""

    def close(self) -> None: ...


class _FolderFeed:
    can_relist = True

    def __init__(self, scan: FolderScan) -> None:
        self.scan = scan

    def events(self) -> AsyncIterator[ScanEvent]:
        return threaded(self.scan.events)

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        return threaded(lambda: self.scan.relist(listing))

    def count(self, stop: threading.Event) -> int | None:
        # A walk of its own, so the total is known long before the uploads reach the end.
        found = 0
        for event in self.scan.events(check_content=False):  # names suffice to count
            if stop.is_set():
                return None
            found += not isinstance(event, GroupEnd)
        return found

    def close(self) -> None:
        return None


class _ItemFeed:
    """Items from the caller: they cannot be listed again, so a listing another run holds is
    waited for where it is met."""

    can_relist = False

    def __init__(self, items: AsyncIterable[ImageItem]) -> None:
        self.items = items

    async def events(self) -> AsyncIterator[ScanEvent]:
        async for item in self.items:
            yield item

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        raise NotImplementedError("items from the caller cannot be listed again")

    def count(self, stop: threading.Event) -> int | None:
        return None

    def close(self) -> None:
        return None


def _feed_for(source: Source, settings: Settings) -> Feed:
    if isinstance(source, ManifestSource):
        from styldod_batch.manifest import ManifestFeed

        return ManifestFeed(source.path, staged=source.staged, check_content=settings.check_content)
    if isinstance(source, AsyncIterable):
        return _ItemFeed(source)
    return _FolderFeed(
        FolderScan(
            source,
            follow_symlinks=settings.follow_symlinks,
            check_content=settings.check_content,
        )
    )


# -- one run ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _ListingRun:
    """A listing this run holds: what the ledger knew of it, and what is still open."""

    view: ListingView
    ordered_before: bool
    # The batch this run's orders of it take (chosen at its first order).
    batch: int | None = None
    # Its parts (and re-sent orders) not yet done.
    open: int = 0
    ended: bool = False
    reported: set[int] = field(default_factory=set)

    @property
    def listing_id(self) -> int:
        assert self.view.listing_id is not None
        return self.view.listing_id


class _Run:
    """The state of one run: queues, listings held, groups in progress, the report."""

    def __init__(
        self,
        uploader: Uploader,
        ledger: Ledger,
        sink: asyncio.Queue[ImageResult | OrderResult] | None = None,
    ) -> None:
        self.up = uploader
        self.ledger = ledger
        self.sink = sink
        self.settings = uploader.settings
        self.owner = Owner.for_this_run()
        self.report = Report(requests=RequestCounters())
        self._counted_from = uploader.counters.as_dict()
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
        # One pre-sign worker gathers a batch at a time, so two never split a listing's files.
        self.gathering = asyncio.Lock()
        self.order_slots = asyncio.Semaphore(ORDER_WORKERS)
        # Order tasks not yet done; ``order_room`` is set while there are fewer than
        # ORDER_BACKLOG of them (settling uploads wait for it).
        self.orders_pending = 0
        self.order_room = asyncio.Event()
        self.order_room.set()
        self.group: asyncio.TaskGroup | None = None
        self.started = time.monotonic()
        self.listings: dict[str, _ListingRun] = {}
        # Listings another run held when met: skipped, then waited for at the end.
        self.held: dict[str, str] = {}
        self.deferred: list[str] = []
        self._batch_lock = asyncio.Lock()
        self._one_try: OrderAPIClient | None = None
        self._grace_over = False
        # Whether the API answered anything in this run (an error status counts).
        self._answered = False

    async def execute(self, feed: Feed) -> Report:
        keeper = asyncio.create_task(self._keep_claims())
        counting = self._count_ahead(feed)
        me = asyncio.current_task()
        assert me is not None
        grace = asyncio.create_task(self._end_after_grace(me))
        try:
            await self._stages(feed)
            self.report.phase = "done"
        except asyncio.CancelledError:
            if not self._grace_over:
                raise
            me.uncancel()  # the library's own deadline: the run ends with its report
        finally:
            counting.set()
            for helper in (keeper, grace):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            self.report.interrupted = self.up.stopping.is_set()
            if self.report.interrupted:
                self.report.phase = "stopped"
            with contextlib.suppress(StyldodError):
                await self.ledger.release(self.owner)
                await self.ledger.flush()
        return self._finish_report()

    async def _stages(self, feed: Feed) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self.group = group
                group.create_task(self._feed(feed))
                presigners = [
                    group.create_task(self._presign_worker()) for _ in range(PRESIGN_WORKERS)
                ]
                workers = [
                    group.create_task(self._upload_worker())
                    for _ in range(self.settings.concurrency)
                ]
                group.create_task(self._finish_stages(presigners, workers))
                # Order tasks join the group as their images settle; it ends with the last.
        except* (AuthenticationError, PermissionDenied, ServiceUnreachable) as fatal:
            self._finish_report()
            cause = fatal.exceptions[0]
            assert isinstance(cause, StyldodError)
            raise RunAborted(cause, self.report) from None
        except* LedgerError as broken:
            raise broken.exceptions[0] from None

    def snapshot(self) -> Report:
        """The report as it stands (counts and time brought up to date)."""
        return self._finish_report()

    def _finish_report(self) -> Report:
        now = self.up.counters.as_dict()
        counted = self.report.requests
        counted.api, counted.storage, counted.retries, counted.rate_limited = (
            now[name] - self._counted_from[name]
            for name in ("api", "storage", "retries", "rate_limited")
        )
        self.report.elapsed_s = time.monotonic() - self.started
        self.report.peak_rss_mb = peak_rss_mb()
        return self.report

    def _count_ahead(self, feed: Feed) -> threading.Event:
        """Count the inputs in a thread of their own (the report's ``expected``); returns the
        event that stops it. A daemon thread: a run never waits for it to end."""
        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def settle(found: int | None) -> None:
            if found is not None and not stop.is_set():
                self.report.expected = found

        def count() -> None:
            with contextlib.suppress(Exception):  # a count is a nicety: the run does not need it
                found = feed.count(stop)
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(settle, found)

        threading.Thread(target=count, name="styldod-count", daemon=True).start()
        return stop

    async def _end_after_grace(self, run: asyncio.Task[Any]) -> None:
        """After a stop is asked for, what is in flight gets ``stop_grace_s``; then the run
        is cut short (its report says so, and a re-run finishes the job)."""
        await self.up.stopping.wait()
        await asyncio.sleep(self.settings.stop_grace_s)
        self._grace_over = True
        run.cancel()

    async def _keep_claims(self) -> None:
        """Renew this run's leases well before they run out."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            with contextlib.suppress(StyldodError):
                await self.ledger.renew(self.owner, self.settings.lease_s)

    # -- stage 1: scan, claim, classify, group -----------------------------------------------

    async def _feed(self, feed: Feed) -> None:
        stopping = self.up.stopping
        async for event in feed.events():
            if stopping.is_set():
                break
            if not isinstance(event, GroupEnd):
                self.report.found += 1
            await self._take(event, feed)
        if not stopping.is_set():
            self.report.scan_complete = True
            self._end_all()
            # Listings another run held: wait for each to be let go, then take what is left.
            while self.deferred and not stopping.is_set():
                listing = self.deferred.pop(0)
                holder = self.held.pop(listing, "another run")
                log_event(
                    logging.INFO,
                    "listing_waiting",
                    f"{_listing_name(listing)}: waiting for {holder} to finish it",
                    listing=listing,
                    holder=holder,
                )
                if await self._wait_for(listing) is None:
                    break
                async for event in feed.relist(listing):
                    if stopping.is_set():
                        break
                    # Its files that failed or were skipped were reported when first met.
                    if isinstance(event, ImageItem | GroupEnd):
                        await self._take(event, feed)
            self._end_all()
        for _ in range(PRESIGN_WORKERS):
            await self.planned.put(_DONE)

    async def _take(self, event: ScanEvent, feed: Feed) -> None:
        if isinstance(event, ImageItem):
            self.report.phase = "uploading"
            state = self.listings.get(event.listing)
            if state is None:
                if event.listing in self.held:
                    return  # another run holds it: its turn comes at the end
                state = await self._enter(event, feed)
                if state is None:
                    return
            await self._route(event, state)
        elif isinstance(event, GroupEnd):
            ending = self.listings.get(event.group)
            if ending is not None:
                ending.ended = True
                closed = self.grouper.end_group(event.group)
                if closed is not None:
                    self._closed(closed)
                await self._maybe_release(event.group)
        elif isinstance(event, Skipped):
            log_event(
                logging.DEBUG,
                "file_skipped",
                f"{event.path}: skipped: {event.reason}",
                path=event.path,
                reason=event.reason,
            )
            await self._image(ImageResult(event.path, "skipped", error=event.reason))
        elif isinstance(event, InputError):
            await self._image(ImageResult(event.path, "failed", error=event.reason))
            self.ledger.record_failure(_absolute(event.path), event.reason)

    async def _enter(self, item: ImageItem, feed: Feed) -> _ListingRun | None:
        """Claim ``item``'s listing; None when another run holds it (it is then deferred)."""
        listing = Listing(item.listing, item.group)
        claimed = await self.ledger.claim(listing, self.owner, self.settings.lease_s)
        if not isinstance(claimed, Held):
            return self._holding(claimed)
        if feed.can_relist:
            self.held[item.listing] = claimed.holder
            self.deferred.append(item.listing)
            return None
        return await self._wait_for(item.listing, name=item.group)

    async def _wait_for(self, identity: str, name: str = "") -> _ListingRun | None:
        """Wait until the run holding a listing lets go (or its claim runs out), then claim it.
        None when this run is stopped meanwhile."""
        listing = Listing(identity, name or _listing_name(identity))
        while not self.up.stopping.is_set():
            claimed = await self.ledger.claim(listing, self.owner, self.settings.lease_s)
            if not isinstance(claimed, Held):
                return self._holding(claimed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.up.stopping.wait(), CLAIM_POLL_S)
        return None

    def _holding(self, view: ListingView) -> _ListingRun:
        state = self.listings[view.listing.identity] = _ListingRun(
            view, ordered_before=view.ordered_before
        )
        for order in view.unsettled_orders():
            # Sent before, outcome unknown: asked again with its own key and body.
            state.open += 1
            assert self.group is not None
            self.group.create_task(self._resend(state, order))
        return state

    async def _route(self, item: ImageItem, state: _ListingRun) -> None:
        view = state.view
        record = view.images.get(item.client_image_id)
        try:
            verdict, md5 = await classify(
                item,
                record,
                listing_ordered_before=state.ordered_before,
                follow_ups=self.settings.follow_ups,
                reorder_changed=self.settings.reorder_changed,
            )
        except InputError as exc:
            await self._image(
                ImageResult(item.path, "failed", item.client_image_id, error=exc.reason)
            )
            return
        if verdict is Verdict.ORDERED:
            assert record is not None and record.order_ref is not None
            order = view.orders.get(record.order_ref)
            if (record.size, record.mtime_ns) != (item.size, item.mtime_ns):
                self._remember(state, item, md5, record.image_url, "ordered")
            await self._already_ordered(state, item, order)
        elif verdict is Verdict.CHANGED:
            assert record is not None and record.order_ref is not None
            order = view.orders.get(record.order_ref)
            self._remember(state, item, md5, None, "changed")
            await self._image(
                ImageResult(
                    item.path,
                    "changed",
                    item.client_image_id,
                    group=item.group,
                    order=order.name if order else None,
                    error="its content changed after it was ordered"
                    f"{f' in {order.name}' if order else ''}: not ordered again "
                    "(--reorder-changed orders it again)",
                )
            )
        elif verdict is Verdict.LATE:
            self._remember(state, item, None, None, "late")
            await self._image(
                ImageResult(
                    item.path,
                    "late",
                    item.client_image_id,
                    group=item.group,
                    error=f"new in {item.group}, which was ordered before: not ordered "
                    "(follow-up orders are turned off)",
                )
            )
        elif verdict is Verdict.REUSE:
            assert record is not None
            part = self._group(item)
            await self._settle(
                part,
                item,
                ImageResult(
                    item.path,
                    "uploaded",
                    item.client_image_id,
                    group=item.group,
                    image_url=record.image_url,
                    md5=record.md5,
                    size=item.size,
                    resumed=True,
                ),
            )
        else:
            await self.planned.put((item, self._group(item)))

    def _remember(
        self,
        state: _ListingRun,
        item: ImageItem,
        md5: str | None,
        url: str | None,
        kind: str,
        *,
        attempts: int = 0,
        error: str | None = None,
    ) -> None:
        """What the ledger knows of ``item`` from now on (its content, upload and state)."""
        self.ledger.record_image(
            state.listing_id,
            ImageRecord(
                item.client_image_id,
                _absolute(item.path),
                item.size,
                item.mtime_ns,
                md5,
                url,
                kind,
            ),
            attempts=attempts,
            error=error,
        )

    async def _already_ordered(
        self, state: _ListingRun, item: ImageItem, order: OrderRecord | None
    ) -> None:
        await self._image(already_ordered(item, order))
        if order is None or order.ref in state.reported or order.state == "sent":
            return  # an order being asked about again is reported when the answer comes
        state.reported.add(order.ref)
        await self._order(earlier_order(order, state.view.listing.name))

    def _group(self, item: ImageItem) -> OrderPart:
        part, closed = self.grouper.add(item)
        if len(part.items) == 1 or all(i.listing != item.listing for i in part.items[:-1]):
            self.listings[item.listing].open += 1  # this part is now one of its listing's
        if closed is not None:
            self._closed(closed)
        return part

    def _end_all(self) -> None:
        for part in self.grouper.end_all():
            self._closed(part)
        for state in self.listings.values():
            state.ended = True
        for identity in list(self.listings):
            if self.listings[identity].open == 0:
                assert self.group is not None
                self.group.create_task(self._maybe_release(identity))

    async def _maybe_release(self, identity: str) -> None:
        state = self.listings.get(identity)
        if state is None or not state.ended or state.open:
            return
        del self.listings[identity]
        await self.ledger.release(self.owner, state.listing_id)

    async def _part_done(self, part: OrderPart) -> None:
        for identity in part.listings:
            state = self.listings.get(identity)
            if state is not None:
                state.open -= 1
                await self._maybe_release(identity)

    # -- stage 2: pre-sign just in time ------------------------------------------------------

    async def _presign_worker(self) -> None:
        limit = self.settings.contract.max_files_per_upload_call
        while True:
            async with self.gathering:
                first = await self.planned.get()
                if first is _DONE:
                    return
                batch = [first]
                if not self._gather(batch, limit) and len(batch) < limit:
                    await asyncio.sleep(PRESIGN_GATHER_S)
                    self._gather(batch, limit)
            if not self.up.stopping.is_set():
                await self._presign(batch)  # type: ignore[arg-type]

    def _gather(self, batch: list[Any], limit: int) -> bool:
        """Add what is planned now to ``batch``, up to ``limit``; True once planning ended."""
        while len(batch) < limit:
            try:
                nxt = self.planned.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if nxt is _DONE:
                self.planned.put_nowait(_DONE)  # leave it for the stage's other worker
                return True
            batch.append(nxt)
        return False

    async def _presign(self, batch: list[tuple[ImageItem, OrderPart]]) -> None:
        api = self.up.api
        assert api is not None
        try:
            targets = await api.upload_urls([item for item, _ in batch])
            self._answered = True
        except NetworkError as exc:
            if not self._answered:
                # Not one answer this run (a closed port, an unknown host): one line, exit 4,
                # rather than every file failing with the same reason.
                host = urlsplit(self.settings.base_url).netloc
                raise ServiceUnreachable(host, str(exc)) from None
            for item, part in batch:
                await self._failed(part, item, f"no upload URL: {exc}")
            return
        except (BadRequest, UnprocessableEntity) as exc:
            self._answered = True
            if len(batch) > 1:
                for one in batch:  # isolate the file the API refuses; the rest go on
                    await self._presign([one])
                return
            item, part = batch[0]
            await self._failed(part, item, str(exc))
            return
        except (AuthenticationError, PermissionDenied):
            raise
        except StyldodError as exc:
            self._answered = self._answered or isinstance(exc, APIError)
            for item, part in batch:
                await self._failed(part, item, f"no upload URL: {exc}")
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
            state = self.listings.get(item.listing)
            if state is not None:
                self._remember(
                    state,
                    item,
                    result.md5,
                    result.image_url,
                    "uploaded" if result.status == "uploaded" else "failed",
                    attempts=result.attempts,
                    error=result.error,
                )
            await self._settle(part, item, result)

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
            self.up.counters.retries += 1

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

    async def _finish_stages(
        self, presigners: list[asyncio.Task[None]], workers: list[asyncio.Task[None]]
    ) -> None:
        await asyncio.gather(*presigners)
        for _ in workers:
            await self.ready.put(_DONE)
        await asyncio.gather(*workers)
        self.report.phase = "placing orders"

    # -- stage 4: orders -----------------------------------------------------------------------

    async def _image(self, result: ImageResult) -> None:
        self.report.add_image(result)
        if result.status == "failed":
            log_event(
                logging.WARNING,
                "file_failed",
                f"{result.path}: {result.error}",
                path=result.path,
                reason=result.error,
            )
        elif result.status in ("changed", "late"):
            log_event(
                logging.INFO,
                f"file_{result.status}",
                f"{result.path}: {result.error}",
                path=result.path,
                order=result.order,
            )
        elif result.status != "skipped":  # (a skipped file is logged where it is met)
            outcome = "already_done" if result.resumed else result.status
            log_event(
                logging.DEBUG,
                "file",
                f"{result.path}: {outcome.replace('_', ' ')}",
                path=result.path,
                outcome=outcome,
                listing=result.group,
                order=result.order,
            )
        if self.up.on_image is not None:
            self.up.on_image(result)
        if self.sink is not None:
            await self.sink.put(result)  # a slow reader of ``stream()`` slows the run

    async def _failed(self, part: OrderPart, item: ImageItem, error: str) -> None:
        await self._settle(
            part,
            item,
            ImageResult(item.path, "failed", item.client_image_id, item.group, error=error),
        )

    async def _settle(self, part: OrderPart, item: ImageItem, result: ImageResult) -> None:
        part.results[item_key(item)] = result
        await self._image(result)
        if part.settled:
            self._place(part)
        await self.order_room.wait()  # placing orders pushes back on the uploads

    def _closed(self, part: OrderPart) -> None:
        if part.settled:
            self._place(part)

    def _place(self, part: OrderPart) -> None:
        # Several of a part's last uploads can find it settled: each waited on a slow reader
        # of ``stream()`` after recording its result. Only the first places it.
        if part.placed or self.up.stopping.is_set():
            return  # (when stopping, a re-run places it: its uploads are in the ledger)
        part.placed = True
        assert self.group is not None
        self.orders_pending += 1
        self.up.order_backlog_peak = max(self.up.order_backlog_peak, self.orders_pending)
        if self.orders_pending >= ORDER_BACKLOG:
            self.order_room.clear()
        self.group.create_task(self._create_order(part), name=f"order {part.base_name}")

    async def _create_order(self, part: OrderPart) -> None:
        try:
            await self._place_order(part)
        finally:
            self.orders_pending -= 1
            if self.orders_pending < ORDER_BACKLOG:
                self.order_room.set()
            await self._part_done(part)

    async def _place_order(self, part: OrderPart) -> None:
        states = {identity: self.listings[identity] for identity in part.listings}
        batch = await self._batch_of(part, states)
        name = order_name(part.base_name, batch, part.number, split=part.split)
        await self._leave_out_live(part, states)
        payload = order_payload(
            part, name, options=self.settings.options, webhook_url=self.settings.webhook_url
        )
        images = payload["image_list"]
        state = states.get(part.listing)
        result = OrderResult(
            name,
            "failed",
            len(images),
            listing=part.base_name,
            label=state.view.label if state else name,
            follow_up=batch > 1 and bool(part.listing),
        )
        if not images:
            result.error = "no image of this order was uploaded"
            await self._order(result)
            return
        items = [
            OrderItem(
                states[item.listing].listing_id,
                item.client_image_id,
                str(part.results[item_key(item)].md5),
                _absolute(item.path),
            )
            for item in sorted(part.items, key=lambda i: i.sequence)
            if part.results[item_key(item)].status == "uploaded"
        ]
        body, key = orjson.dumps(payload), str(uuid.uuid4())
        draft = OrderDraft(
            state.listing_id if state else None, batch, part.number, name, body, key, items
        )
        async with self.order_slots:
            try:
                ref = await self.ledger.write_order_ahead(self.owner, draft)
            except ClaimLost as exc:
                result.error = str(exc)
                await self._order(result)
                return
            await self._send(result, ref, body, key, items)

    async def _leave_out_live(self, part: OrderPart, states: dict[str, _ListingRun]) -> None:
        """An image whose very content is in a live order already (it went A -> B -> A) is
        left out of this order, and said so; the rest of the order goes on."""
        uploaded = [
            (item, result, OrderItem(states[item.listing].listing_id, item.client_image_id,
                                     str(result.md5), _absolute(item.path)))
            for item in part.items
            if (result := part.results.get(item_key(item))) is not None
            and result.status == "uploaded" and result.md5 and item.listing in states
        ]  # fmt: skip
        taken = await self.ledger.in_live_orders([entry[2] for entry in uploaded])
        for item, result, entry in uploaded:
            if entry in taken:
                result.status, result.resumed = "ordered", True
                result.error = "this content is already in a live order: left out of this one"
                log_event(
                    logging.WARNING,
                    "left_out",
                    f"{item.path}: {result.error}",
                    path=item.path,
                    client_image_id=item.client_image_id,
                )

    async def _batch_of(self, part: OrderPart, states: dict[str, _ListingRun]) -> int:
        """Every part of a listing this run places takes one batch number; the lock keeps two
        parts placed at once from reading the ledger on either side of the other's write."""
        async with self._batch_lock:
            if not part.listing:  # fixed-size batches are numbered across the account
                # Each number is claimed in the ledger: another run may number batches too.
                return await self.ledger.next_batch(None)
            state = states[part.listing]
            if state.batch is None:
                state.batch = await self.ledger.next_batch(state.listing_id)
            return state.batch

    async def _resend(self, state: _ListingRun, order: OrderRecord) -> None:
        """An order sent before whose outcome is unknown: the same key, the same body."""
        result = OrderResult(
            order.name,
            "failed",
            order.images,
            listing=state.view.listing.name,
            label=order.label,
            follow_up=order.batch > 1,
        )
        state.reported.add(order.ref)
        try:
            async with self.order_slots:
                await self._send(
                    result, order.ref, order.body, order.idempotency_key, [], resent=True
                )
        finally:
            state.open -= 1
            await self._maybe_release(state.view.listing.identity)

    async def _send(
        self,
        result: OrderResult,
        ref: int,
        body: bytes,
        key: str,
        items: list[OrderItem],
        *,
        resent: bool = False,
    ) -> None:
        api = self.up.api
        assert api is not None
        result.idempotency_key = key
        # Once an attempt with this key may have reached the service (an earlier run's, or
        # an earlier try of this one), a 4xx is no definite refusal: the images stay bound
        # to this key and body until ``release``.
        tries = 1 if resent else 0

        async def attempt() -> tuple[dict[str, Any], bool]:
            nonlocal tries
            tries += 1
            return await self._single_try_api(api).create_order(body, key)

        def retried(_exc: BaseException) -> None:
            api.counters.retries += 1

        try:
            answer, replayed = await retrying(
                attempt, self.settings.retry, budget=api.budget, on_retry=retried
            )
        except (AuthenticationError, PermissionDenied) as exc:
            if tries > 1:
                self.ledger.settle_order(ref, OrderOutcome("sent", error=_unknown(exc, tries)))
            else:
                self.ledger.settle_order(ref, OrderOutcome("refused", error=str(exc)))
            raise
        except Conflict as exc:
            self.ledger.settle_order(ref, OrderOutcome("conflict", error=str(exc)))
            result.error = f"{exc}: kept as it is, never created again under a new key"
            await self._order(result)
            return
        except StyldodError as exc:
            if isinstance(exc, APIError) and _definite_refusal(exc) and tries <= 1:
                bad = _bad_image(exc, items)
                self.ledger.settle_order(
                    ref, OrderOutcome("refused", error=str(exc), bad_image=bad)
                )
                result.error = f"refused: {exc}"
            else:
                # Unknown outcome: the ledger keeps it as sent, so a re-run asks again with
                # the same key and body.
                self.ledger.settle_order(ref, OrderOutcome("sent", error=_unknown(exc, tries)))
                result.error = f"{_unknown(exc, tries)}; a re-run asks again with the same key"
            await self._order(result)
            return
        order_id, status = str(answer["orderID"]), answer.get("order_status")
        self.ledger.settle_order(ref, OrderOutcome("created", order_id=order_id, status=status))
        result.status, result.order_id, result.order_status = "created", order_id, status
        result.replayed = replayed
        await self._order(result)

    def _single_try_api(self, api: OrderAPIClient) -> OrderAPIClient:
        """The API client with one try per call: ``_send`` retries itself, counting tries."""
        if self._one_try is None:
            once = dataclasses.replace(api.settings.retry, max_attempts=1)
            settings = dataclasses.replace(api.settings, retry=once)
            self._one_try = OrderAPIClient(api.session, settings, api.budget, api.counters)
        return self._one_try

    async def _order(self, result: OrderResult) -> None:
        self.report.add_order(result)
        if not result.resumed:
            ok = result.status == "created"
            log_event(
                logging.INFO if ok else logging.WARNING,
                "order",
                f"order {result.key}: {result.order_id if ok else result.error}"
                f" ({result.images} image{'' if result.images == 1 else 's'})",
                order=result.key,
                state=result.status,
                order_id=result.order_id,
                images=result.images,
                follow_up=result.follow_up,
                replayed=result.replayed,
                error=result.error,
            )
        if self.up.on_order is not None:
            self.up.on_order(result)
        if self.sink is not None:
            await self.sink.put(result)


def _unknown(exc: BaseException, tries: int) -> str:
    if isinstance(exc, APIError) and _definite_refusal(exc) and tries > 1:
        return f"outcome unknown: a retry was refused ({exc})"
    return f"outcome unknown: {exc}"


def _definite_refusal(exc: APIError) -> bool:
    """A 4xx other than 409 and 429: the service did not create the order, and says so."""
    return 400 <= exc.status < 500 and not isinstance(exc, Conflict | RateLimited)


def _bad_image(exc: APIError, items: list[OrderItem]) -> tuple[int, str] | None:
    """The image a 422 names (``image_list[3].image_urls[0]``): its upload is not usable."""
    if not isinstance(exc, UnprocessableEntity) or not exc.param:
        return None
    match = _IMAGE_PARAM.match(exc.param)
    if match is None or int(match.group(1)) >= len(items):
        return None
    item = items[int(match.group(1))]
    return item.listing_id, item.client_image_id


def _absolute(path: str) -> str:
    return os.path.abspath(path)


def _listing_name(identity: str) -> str:
    kind, _, rest = identity.partition(":")
    return os.path.basename(rest) if kind == "folder" else rest


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
