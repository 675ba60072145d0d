"""What a run does with an image the ledger may already know: the re-run semantics.

| the image                                   | what happens                                  |
|---------------------------------------------|-----------------------------------------------|
| in a placed order, same content             | nothing: reported as already done             |
| in a placed order, content changed          | reported as changed; ordered again only with  |
|                                             | ``reorder_changed``                           |
| uploaded by an earlier run, not yet ordered | its upload is reused, it goes into an order   |
| new, its listing not ordered before         | uploaded and ordered                          |
| new, its listing ordered before             | a follow-up order ``<listing> (2)``; with     |
|                                             | ``follow_ups`` off: reported as late          |

"Same content" is the MD5 of the bytes: size and modification time stand in for it while both
are unchanged, and a file whose time changed is read again before it is called changed.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib

from styldod_batch.errors import InputError
from styldod_batch.ledger import ImageRecord, OrderRecord
from styldod_batch.models import ImageItem, ImageResult, OrderResult

_CHUNK = 1024 * 1024


class Verdict(enum.Enum):
    UPLOAD = "upload"
    REUSE = "reuse"  # an earlier run's upload of this very content
    ORDERED = "ordered"
    CHANGED = "changed"
    LATE = "late"
    MOVED = "moved"  # new here, its very content ordered in another place of the account


def file_md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    return digest.hexdigest()


async def classify(
    item: ImageItem,
    record: ImageRecord | None,
    *,
    listing_ordered_before: bool,
    follow_ups: bool,
    reorder_changed: bool,
) -> tuple[Verdict, str | None]:
    """(what to do with ``item``, its content's MD5 when it had to be read to decide)."""
    same_file = record is not None and (record.size, record.mtime_ns) == (item.size, item.mtime_ns)
    if record is not None and record.ordered_md5 is not None:
        current = (
            record.md5 if same_file and record.md5 else await asyncio.to_thread(file_md5, item.path)
        )
        if current == record.ordered_md5:
            return Verdict.ORDERED, current
        if not reorder_changed:
            return Verdict.CHANGED, current
        if same_file and record.image_url and record.state == "uploaded":
            return Verdict.REUSE, current
        return Verdict.UPLOAD, current
    if record is not None and same_file and record.image_url and record.state == "uploaded":
        return Verdict.REUSE, record.md5
    first_seen_after_ordering = record is None or record.state == "late"
    if listing_ordered_before and first_seen_after_ordering and not follow_ups:
        return Verdict.LATE, None
    return Verdict.UPLOAD, None


def already_ordered(item: ImageItem, order: OrderRecord | None) -> ImageResult:
    """The result of an image that a placed order holds already: nothing to send."""
    return ImageResult(
        item.path,
        "ordered",
        item.client_image_id,
        group=item.group,
        resumed=True,
        order=order.name if order else None,
    )


def earlier_order(order: OrderRecord, listing: str) -> OrderResult:
    """How an order placed by an earlier run is reported (nothing is sent for it)."""
    created = order.state == "created"
    return OrderResult(
        order.name,
        "created" if created else "failed",
        order.images,
        order_id=order.order_id,
        order_status=order.status,
        idempotency_key=order.idempotency_key,
        error=None if created else order.error,
        resumed=True,
        listing=listing,
        label=order.label,
        follow_up=order.batch > 1,
    )
