"""Intake: the feed's events, each image's listing claimed (``claims``), its route decided
(``route``), and what must be uploaded grouped into order parts and planned for pre-signing.
Listings another run holds are taken at the end, once let go."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from styldod_batch.errors import InputError
from styldod_batch.logs import event as log_event
from styldod_batch.models import ImageItem, ImageResult, OrderResult
from styldod_batch.orders import Grouper, OrderPart
from styldod_batch.pipeline.claims import Claims, ListingRun, listing_name
from styldod_batch.pipeline.feed import Feed
from styldod_batch.pipeline.ports import ContentIndex
from styldod_batch.pipeline.presign import DONE, PRESIGN_WORKERS, Planned
from styldod_batch.pipeline.route import (
    Verdict,
    changed_result,
    decide,
    late_result,
    moved_result,
    reused_result,
)
from styldod_batch.rerun import already_ordered, earlier_order
from styldod_batch.scan import GroupEnd, ScanEvent, Skipped
from styldod_batch.settings import Settings


class RunEvents(Protocol):
    async def image(self, result: ImageResult) -> None: ...

    async def order(self, result: OrderResult) -> None: ...

    def phase(self, phase: str) -> None: ...

    def found(self) -> None: ...

    def scan_complete(self) -> None: ...


class Parts(Protocol):
    async def settle(self, part: OrderPart, item: ImageItem, result: ImageResult) -> None: ...

    def closed(self, part: OrderPart) -> None: ...


class Intake:
    def __init__(
        self,
        settings: Settings,
        claims: Claims,
        events: RunEvents,
        parts: Parts,
        planned: asyncio.Queue[Planned | object],
        *,
        stopping: asyncio.Event,
        content: ContentIndex | None = None,
    ) -> None:
        self.settings = settings
        self.content = content
        self.claims = claims
        self.events = events
        self.parts = parts
        self.planned = planned
        self.stopping = stopping
        self.grouper = Grouper(
            order_size=settings.order_size, by_folder=settings.order_by == "folder"
        )

    async def run(self, feed: Feed) -> None:
        stopping = self.stopping
        async for event in feed.events():
            if stopping.is_set():
                break
            if not isinstance(event, GroupEnd):
                self.events.found()
            await self.take(event, feed)
        if not stopping.is_set():
            self.events.scan_complete()
            self._end_all()
            # Listings another run held: wait for each to be let go, then take what is left.
            while not stopping.is_set() and (deferred := self.claims.next_deferred()):
                listing, holder = deferred
                log_event(
                    logging.INFO,
                    "listing_waiting",
                    f"{listing_name(listing)}: waiting for {holder} to finish it",
                    listing=listing,
                    holder=holder,
                )
                if await self.claims.wait_for(listing) is None:
                    break
                async for event in feed.relist(listing):
                    if stopping.is_set():
                        break
                    # Its files that failed or were skipped were reported when first met.
                    if isinstance(event, ImageItem | GroupEnd):
                        await self.take(event, feed)
            self._end_all()
        for _ in range(PRESIGN_WORKERS):
            await self.planned.put(DONE)

    async def take(self, event: ScanEvent, feed: Feed) -> None:
        if isinstance(event, ImageItem):
            self.events.phase("uploading")
            state = self.claims.get(event.listing)
            if state is None:
                if self.claims.deferred(event.listing):
                    return  # another run holds it: its turn comes at the end
                state = await self.claims.enter(event, can_relist=feed.can_relist)
                if state is None:
                    return
            await self._route(event, state)
        elif isinstance(event, GroupEnd):
            if self.claims.mark_ended(event.group):
                closed = self.grouper.end_group(event.group)
                if closed is not None:
                    self.parts.closed(closed)
                await self.claims.maybe_release(event.group)
        elif isinstance(event, Skipped):
            log_event(
                logging.DEBUG,
                "file_skipped",
                f"{event.path}: skipped: {event.reason}",
                path=event.path,
                reason=event.reason,
            )
            await self.events.image(ImageResult(event.path, "skipped", error=event.reason))
        elif isinstance(event, InputError):
            await self.events.image(ImageResult(event.path, "failed", error=event.reason))
            self.claims.record_failure(event.path, event.reason)

    async def _route(self, item: ImageItem, state: ListingRun) -> None:
        try:
            route = await decide(
                item,
                state.view,
                self.settings,
                ordered_before=state.ordered_before,
                content=self.content,
            )
        except InputError as exc:
            await self.events.image(
                ImageResult(item.path, "failed", item.client_image_id, error=exc.reason)
            )
            return
        verdict, record, order = route.verdict, route.record, route.order
        if verdict is Verdict.ORDERED:
            assert record is not None and record.order_ref is not None
            if route.stale(item):
                self.claims.remember(state, item, route.md5, record.image_url, "ordered")
            await self.events.image(already_ordered(item, order))
            if order is None or order.ref in state.reported or order.state == "sent":
                return  # an order being asked about again is reported when the answer comes
            state.reported.add(order.ref)
            await self.events.order(earlier_order(order, state.view.listing.name))
        elif verdict is Verdict.CHANGED:
            assert record is not None and record.order_ref is not None
            self.claims.remember(state, item, route.md5, None, "changed")
            await self.events.image(changed_result(item, order))
        elif verdict is Verdict.MOVED:
            assert route.copy is not None
            await self.events.image(moved_result(item, route.copy))
        elif verdict is Verdict.LATE:
            self.claims.remember(state, item, None, None, "late")
            await self.events.image(late_result(item))
        elif verdict is Verdict.REUSE:
            assert record is not None
            await self.parts.settle(self._group(item), item, reused_result(item, record))
        else:
            await self.planned.put((item, self._group(item)))

    def _group(self, item: ImageItem) -> OrderPart:
        part, closed = self.grouper.add(item)
        if len(part.items) == 1 or all(i.listing != item.listing for i in part.items[:-1]):
            self.claims.part_opened(item.listing)  # this part is now one of its listing's
        if closed is not None:
            self.parts.closed(closed)
        return part

    def _end_all(self) -> None:
        for part in self.grouper.end_all():
            self.parts.closed(part)
        self.claims.end_all()
