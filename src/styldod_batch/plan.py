"""Planning: inputs + settings + what the ledger knows -> the orders a run would place.

A dry run sends nothing and writes nothing: it reads the ledger (never claims), classifies
each image as a run would (``rerun.py``), groups what would be sent into the orders a run
would name, and reports what is already done, changed or late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from styldod_batch.errors import InputError
from styldod_batch.ledger import Ledger, Listing, ListingView
from styldod_batch.models import ImageItem, ImageResult, OrderResult
from styldod_batch.orders import Grouper, OrderPart, effective_options, order_name
from styldod_batch.report import Report, peak_rss_mb
from styldod_batch.rerun import Verdict, already_ordered, classify, earlier_order
from styldod_batch.scan import GroupEnd, ScanEvent, Skipped
from styldod_batch.settings import Settings

PlanCallback = Callable[[dict[str, Any]], None]


class _Events(Protocol):
    def events(self) -> Any: ...


async def plan_run(
    feed: _Events,
    settings: Settings,
    ledger: Ledger,
    *,
    global_options: Mapping[str, Any] | None = None,
    on_plan: PlanCallback | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    on_order: Callable[[OrderResult], None] | None = None,
) -> Report:
    """The plan of a run on ``feed``, order by order as it forms (``on_plan``), and its report."""
    planner = _Planner(settings, ledger, dict(global_options or {}), on_plan, on_image, on_order)
    async for event in feed.events():
        await planner.take(event)
    planner.finish()
    return planner.report


class _Planner:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        global_options: dict[str, Any],
        on_plan: PlanCallback | None,
        on_image: Callable[[ImageResult], None] | None,
        on_order: Callable[[OrderResult], None] | None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.global_options = global_options
        self.on_plan = on_plan
        self.on_image = on_image
        self.on_order = on_order
        self.report = Report(dry_run=True)
        self.grouper = Grouper(
            order_size=settings.order_size, by_folder=settings.order_by == "folder"
        )
        self.views: dict[str, ListingView] = {}
        self.reused: set[tuple[str, str]] = set()
        self.reported_orders: set[int] = set()
        self.batches: dict[str, int] = {}
        self.started = time.monotonic()
        self._next_batch = 0

    async def take(self, event: ScanEvent) -> None:
        if isinstance(event, ImageItem):
            await self._image_item(event)
        elif isinstance(event, GroupEnd):
            closed = self.grouper.end_group(event.group)
            if closed is not None:
                self._emit(closed)
            self.views.pop(event.group, None)
        elif isinstance(event, Skipped):
            self._image(ImageResult(event.path, "skipped", error=event.reason))
        elif isinstance(event, InputError):
            self._image(ImageResult(event.path, "failed", error=event.reason))

    async def _image_item(self, item: ImageItem) -> None:
        view = self.views.get(item.listing)
        if view is None:
            view = self.views[item.listing] = await self.ledger.view(
                Listing(item.listing, item.group)
            )
        record = view.images.get(item.client_image_id)
        try:
            verdict, _md5 = await classify(
                item,
                record,
                listing_ordered_before=view.ordered_before,
                follow_ups=self.settings.follow_ups,
                reorder_changed=self.settings.reorder_changed,
            )
        except InputError as exc:
            self._image(ImageResult(item.path, "failed", item.client_image_id, error=exc.reason))
            return
        order = view.orders.get(record.order_ref) if record and record.order_ref else None
        if verdict is Verdict.ORDERED:
            self._image(already_ordered(item, order))
            if order is not None and order.ref not in self.reported_orders:
                self.reported_orders.add(order.ref)
                self._order(earlier_order(order, item.group))
            return
        if verdict in (Verdict.CHANGED, Verdict.LATE):
            self._image(
                ImageResult(
                    item.path,
                    "changed" if verdict is Verdict.CHANGED else "late",
                    item.client_image_id,
                    group=item.group,
                    order=order.name if order else None,
                )
            )
            return
        if verdict is Verdict.REUSE:
            self.reused.add((item.listing, item.client_image_id))
        self._image(
            ImageResult(
                item.path, "planned", item.client_image_id, group=item.group, size=item.size
            )
        )
        part, closed = self.grouper.add(item)
        if part.listing and part.listing not in self.batches:
            known = [o.batch for o in view.orders.values() if o.listing_id == view.listing_id]
            self.batches[part.listing] = max(known, default=0) + 1
        if closed is not None:
            self._emit(closed)

    def finish(self) -> None:
        for part in self.grouper.end_all():
            self._emit(part)
        self.report.elapsed_s = time.monotonic() - self.started
        self.report.peak_rss_mb = peak_rss_mb()

    def _emit(self, part: OrderPart) -> None:
        if part.listing:
            batch = self.batches.get(part.listing, 1)
        else:
            self._next_batch += 1
            batch = self._next_batch
        name = order_name(part.base_name, batch, part.number, split=part.split)
        if self.on_plan is not None:
            apply_to_all = self.settings.options
            self.on_plan(
                {
                    "order": name,
                    "follow_up": bool(part.listing) and batch > 1,
                    "images": [
                        {
                            "client_image_id": part.api_image_id(item),
                            "path": item.path,
                            "sequence": item.sequence,
                            "upload": "reuse"
                            if (item.listing, item.client_image_id) in self.reused
                            else "new",
                            "options": effective_options(
                                self.global_options, apply_to_all, item.options
                            ),
                        }
                        for item in sorted(part.items, key=lambda i: i.sequence)
                    ],
                }
            )
        self._order(
            OrderResult(
                name,
                "planned",
                len(part.items),
                listing=part.base_name,
                follow_up=bool(part.listing) and batch > 1,
            )
        )

    def _image(self, result: ImageResult) -> None:
        self.report.add_image(result)
        if self.on_image is not None:
            self.on_image(result)

    def _order(self, result: OrderResult) -> None:
        self.report.add_order(result)
        if self.on_order is not None:
            self.on_order(result)
