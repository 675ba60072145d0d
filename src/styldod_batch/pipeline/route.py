"""The route decision: (an image, what the ledger knows of its listing, the settings) ->
what to do with it. As pure as it can be: it reads the file only when its content must be
compared (``rerun.classify``), and writes nothing. The run (``intake.py``) and the dry run
(``plan.py``) both take it, so a plan says what a run would do.

| decision | the image                                                   | a run                 |
|----------|-------------------------------------------------------------|-----------------------|
| UPLOAD   | new, or its earlier upload is not usable                    | pre-signs and PUTs it |
| REUSE    | uploaded by an earlier run, same size and mtime, not ordered | orders that upload   |
| ORDERED  | in a placed order, same content                             | reports it done       |
| CHANGED  | in a placed order, content changed (no ``reorder_changed``)  | reports it changed    |
| LATE     | new in a listing ordered before (no ``follow_ups``)          | reports it late       |
| MOVED    | new here, its content in a live order elsewhere in the account | reports it moved    |
|          | (no ``reorder_moved``): a moved folder is never billed twice |                       |
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
from dataclasses import dataclass

from styldod_batch.ledger import ImageRecord, ListingView, OrderRecord, PlacedCopy
from styldod_batch.models import ImageItem, ImageResult
from styldod_batch.pipeline.ports import ContentIndex, OrderedContent
from styldod_batch.rerun import Verdict, classify, file_md5
from styldod_batch.settings import Settings

__all__ = [
    "ContentBefore",
    "Route",
    "Verdict",
    "changed_result",
    "decide",
    "late_result",
    "moved_result",
    "reused_result",
]


class ContentBefore:
    """The account's ordered content as the run found it: every size in memory (8 bytes
    each, read once), so that an image whose size nothing ordered has costs no ledger read;
    the copies of a size are read only when a file has it."""

    def __init__(self, ledger: OrderedContent) -> None:
        self._ledger = ledger
        self._sizes: array[int] | None = None
        self._loading = asyncio.Lock()

    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]:
        if self._sizes is None:
            async with self._loading:
                if self._sizes is None:
                    self._sizes = await self._ledger.placed_sizes()
        at = bisect.bisect_left(self._sizes, size)
        if at == len(self._sizes) or self._sizes[at] != size:
            return {}
        return await self._ledger.placed_copies(size)


@dataclass(frozen=True, slots=True)
class Route:
    verdict: Verdict
    # The content's MD5 when it had to be read to decide (or the ledger's, for a reuse).
    md5: str | None
    # What the ledger knew of the image, and the order that holds it (if any).
    record: ImageRecord | None
    order: OrderRecord | None
    # (MOVED) where its very content was ordered.
    copy: PlacedCopy | None = None

    def stale(self, item: ImageItem) -> bool:
        """Whether ``item``'s size or mtime differs from what the ledger knew of it."""
        record = self.record
        return record is not None and (record.size, record.mtime_ns) != (item.size, item.mtime_ns)


async def decide(
    item: ImageItem,
    view: ListingView,
    settings: Settings,
    *,
    ordered_before: bool | None = None,
    content: ContentIndex | None = None,
) -> Route:
    """What to do with ``item``. Raises ``InputError`` when its content must be read and
    cannot be. ``ordered_before``: whether the listing was ordered before this run (by
    default, as ``view`` says). ``content``: the account's ordered content, where an image
    new to its listing is looked for (by size, then MD5) before it is uploaded."""
    record = view.images.get(item.client_image_id)
    verdict, md5 = await classify(
        item,
        record,
        listing_ordered_before=view.ordered_before if ordered_before is None else ordered_before,
        follow_ups=settings.follow_ups,
        reorder_changed=settings.reorder_changed,
    )
    if verdict is Verdict.UPLOAD and record is None and content and not settings.reorder_moved:
        copies = await content.placed_copies(item.size)
        if copies:  # the same size as something ordered: compare the content itself
            md5 = await asyncio.to_thread(file_md5, item.path)
            if md5 in copies:
                return Route(Verdict.MOVED, md5, None, None, copies[md5])
    order = None
    if record is not None and record.order_ref is not None:
        order = view.orders.get(record.order_ref)
    return Route(verdict, md5, record, order)


def changed_result(item: ImageItem, order: OrderRecord | None) -> ImageResult:
    """The result of an image whose content changed after it was ordered."""
    return ImageResult(
        item.path,
        "changed",
        item.client_image_id,
        group=item.group,
        order=order.name if order else None,
        error="its content changed after it was ordered"
        f"{f' in {order.name}' if order else ''}: not ordered again "
        "(--reorder-changed orders it again)",
    )


def late_result(item: ImageItem) -> ImageResult:
    """The result of an image new in a listing ordered before, with follow-ups off."""
    return ImageResult(
        item.path,
        "late",
        item.client_image_id,
        group=item.group,
        error=f"new in {item.group}, which was ordered before: not ordered "
        "(follow-up orders are turned off)",
    )


def moved_result(item: ImageItem, copy: PlacedCopy) -> ImageResult:
    """The result of an image whose very content is ordered under another path."""
    return ImageResult(
        item.path,
        "moved",
        item.client_image_id,
        group=item.group,
        order=copy.order,
        same_as=copy.where,
        same_as_listing=copy.label,
        error=f"the same content as {copy.where}, ordered in {copy.order} (from {copy.path}): "
        "not ordered again (--reorder-moved orders it again)",
    )


def reused_result(item: ImageItem, record: ImageRecord) -> ImageResult:
    """The result of an image an earlier run uploaded: that upload goes into the order."""
    return ImageResult(
        item.path,
        "uploaded",
        item.client_image_id,
        group=item.group,
        image_url=record.image_url,
        md5=record.md5,
        size=item.size,
        resumed=True,
    )
