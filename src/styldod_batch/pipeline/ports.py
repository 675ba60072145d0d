"""The narrow interfaces the stages take: what each needs of the world, and nothing more.

The real ones are ``OrderAPIClient`` (upload URLs, orders), ``FileUploader`` (the object
store), a ``Ledger`` and ``SYSTEM_CLOCK``; tests pass in-memory fakes and a virtual clock.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection
from typing import Any, Protocol

from styldod_batch.budget import SYSTEM_CLOCK, Clock
from styldod_batch.ledger import (
    Held,
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    Owner,
    PlacedCopy,
)
from styldod_batch.models import ImageItem, UploadTarget

__all__ = [
    "SYSTEM_CLOCK",
    "BatchLedger",
    "ClaimLedger",
    "Clock",
    "ObjectStore",
    "OrderLedger",
    "OrderSink",
    "UploadURLSource",
    "ViewLedger",
]


class UploadURLSource(Protocol):
    """Pre-signed upload URLs, one per item, in order (``POST`` of up to 50 files)."""

    async def upload_urls(self, items: list[ImageItem]) -> list[UploadTarget]: ...


class ObjectStore(Protocol):
    """Where the files go: one ``PUT`` per file to its pre-signed URL; returns the MD5."""

    async def put(self, item: ImageItem, target: UploadTarget) -> str: ...

    async def close(self) -> None: ...


class OrderSink(Protocol):
    """``POST /v2/orders`` (one try: the order stage retries itself, counting tries)."""

    async def create_order(
        self, payload: dict[str, Any] | bytes, idempotency_key: str
    ) -> tuple[dict[str, Any], bool]: ...


class BatchLedger(Protocol):
    async def next_batch(self, listing_id: int | None) -> int: ...


class ContentIndex(Protocol):
    """The account's ordered content, looked up by size (a moved folder's images)."""

    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]: ...


class OrderedContent(ContentIndex, Protocol):
    """The ledger's side: also every size it holds, for a look-up in memory first."""

    async def placed_sizes(self) -> array[int]: ...


class ViewLedger(BatchLedger, OrderedContent, Protocol):
    """What a dry run reads (it claims nothing)."""

    async def view(self, listing: Listing, taken: Collection[str] = ()) -> ListingView: ...


class ClaimLedger(Protocol):
    """Claims, leases, and what the ledger knows of each image."""

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held: ...

    async def renew(self, owner: Owner, lease_s: float) -> None: ...

    async def release(self, owner: Owner, listing_id: int | None = None) -> None: ...

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None: ...

    def record_failure(self, path: str, error: str) -> None: ...


class OrderLedger(BatchLedger, Protocol):
    """Orders: numbered, written ahead of their first send, then settled."""

    async def in_live_orders(self, items: list[OrderItem]) -> list[OrderItem]: ...

    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int: ...

    def settle_order(self, ref: int, outcome: OrderOutcome) -> None: ...
