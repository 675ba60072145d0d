"""Planning: inputs + settings + what the ledger knows -> the orders a run would place.

A dry run sends nothing and writes nothing: it reads the ledger (never claims), takes the
run's own route decision for each image (``pipeline/route.py``), groups what would be sent
into orders numbered as a run numbers them (``pipeline/place.BatchNumbers``: a listing's next
batch, and the account's next fixed-size ``batch-N``), and reports what is already done,
changed or late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from styldod_batch.errors import InputError
from styldod_batch.ledger import Listing
from styldod_batch.models import ImageItem, ImageResult, OrderResult
from styldod_batch.orders import Grouper, OrderPart, effective_options
from styldod_batch.pipeline.claims import ListingRun
from styldod_batch.pipeline.place import BatchNumbers, order_namer
from styldod_batch.pipeline.ports import ViewLedger
from styldod_batch.pipeline.route import ContentBefore, Verdict, decide, moved_result
from styldod_batch.report import Report, peak_rss_mb
from styldod_batch.rerun import already_ordered, earlier_order
from styldod_batch.scan import GroupEnd, ScanEvent, Skipped
from styldod_batch.settings import Settings

PlanCallback = Callable[[dict[str, Any]], None]


class _Events(Protocol):
    def events(self) -> Any: ...


async def plan_run(
    feed: _Events,
    settings: Settings,
    ledger: ViewLedger,
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
    await planner.finish()
    return planner.report


class _Planner:
    def __init__(
        self,
        settings: Settings,
        ledger: ViewLedger,
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
        # Each listing as the ledger knows it (read, never claimed), and its batch once known.
        self.views: dict[str, ListingRun] = {}
        self.reused: set[tuple[str, str]] = set()
        self.reported_orders: set[int] = set()
        # The run's own numbering; the ledger only peeks (read-only), and claims nothing.
        self.batches = BatchNumbers(ledger, peek=True)
        self.namer = order_namer(settings)
        self.content = ContentBefore(ledger)
        # The labels this plan gave listings the ledger lacks: a run's claims would take them.
        self.labels: set[str] = set()
        self.started = time.monotonic()

    async def take(self, event: ScanEvent) -> None:
        if isinstance(event, ImageItem):
            await self._image_item(event)
        elif isinstance(event, GroupEnd):
            closed = self.grouper.end_group(event.group)
            if closed is not None:
                await self._emit(closed)
            self.views.pop(event.group, None)
        elif isinstance(event, Skipped):
            self._image(ImageResult(event.path, "skipped", error=event.reason))
        elif isinstance(event, InputError):
            self._image(ImageResult(event.path, "failed", error=event.reason))

    async def _listing(self, item: ImageItem) -> ListingRun:
        state = self.views.get(item.listing)
        if state is None:
            view = await self.ledger.view(Listing(item.listing, item.group), self.labels)
            if view.listing_id is None:
                self.labels.add(view.label)
            state = self.views[item.listing] = ListingRun(view, view.ordered_before)
        return state

    async def _image_item(self, item: ImageItem) -> None:
        state = await self._listing(item)
        try:
            route = await decide(item, state.view, self.settings, content=self.content)
        except InputError as exc:
            self._image(ImageResult(item.path, "failed", item.client_image_id, error=exc.reason))
            return
        verdict, order = route.verdict, route.order
        if verdict is Verdict.ORDERED:
            self._image(already_ordered(item, order))
            if order is not None and order.ref not in self.reported_orders:
                self.reported_orders.add(order.ref)
                self._order(earlier_order(order, item.group))
            return
        if verdict is Verdict.MOVED:
            assert route.copy is not None
            self._image(moved_result(item, route.copy))
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
        _part, closed = self.grouper.add(item)
        if closed is not None:
            await self._emit(closed)

    async def finish(self) -> None:
        for part in self.grouper.end_all():
            await self._emit(part)
        self.report.elapsed_s = time.monotonic() - self.started
        self.report.peak_rss_mb = peak_rss_mb()

    async def _emit(self, part: OrderPart) -> None:
        slot = None
        if part.listing:
            slot = self.views.get(part.listing) or await self._listing(part.items[0])
        batch = await self.batches.of(part, slot)
        name = self.namer.name(part, slot.view.label if slot else "", batch)
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
