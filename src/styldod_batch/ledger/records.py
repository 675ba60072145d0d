"""What the ledger holds: listings, their images, their orders (plain records, no storage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from styldod_batch.errors import LedgerError as LedgerError  # its old address
from styldod_batch.errors import StyldodError
from styldod_batch.status import is_final_status

# sent: the request may have reached the service (outcome unknown until a reply)
# created: the service returned its orderID
# refused: a definite refusal (a 4xx other than 409 and 429 to the first try of its key; after
#   a try that may have reached the service, a 4xx leaves it sent), or released by hand
#   (``styldod-batch release``): its images are free again
# conflict: 409, the key was seen with another body; never re-created under a new key
OrderState = Literal["sent", "created", "refused", "conflict"]
LIVE_ORDER_STATES: frozenset[str] = frozenset({"sent", "created", "conflict"})

# uploaded: stored, in no live order | ordered: in a live order | failed: could not upload
# late: first seen after its listing was ordered, with follow-up orders turned off
# changed: its content differs from what its order holds
ImageState = Literal["uploaded", "ordered", "failed", "late", "changed"]


class ClaimLost(StyldodError):
    """Another process took a listing over (this run's lease ran out): nothing is sent."""


@dataclass(frozen=True, slots=True)
class Listing:
    """What an order is for: a folder (by its real path) or a manifest's ``order`` value.

    ``name`` is what the API sees as the order's name: the folder's own name, or the order
    value; it never depends on the working folder or on the other inputs of a run.
    """

    identity: str
    name: str


@dataclass(slots=True)
class ImageRecord:
    client_image_id: str
    path: str
    size: int
    mtime_ns: int
    md5: str | None
    image_url: str | None
    state: str
    # The content its latest live order holds, and that order.
    ordered_md5: str | None = None
    order_ref: int | None = None

    def row(self, listing_id: int, attempts: int, error: str | None, now: float) -> tuple[Any, ...]:
        """Its columns as both ledgers write them: listing_id, client_image_id, path, size,
        mtime_ns, md5, image_url, state, attempts, error, updated_at."""
        return (
            listing_id,
            self.client_image_id,
            self.path,
            self.size,
            self.mtime_ns,
            self.md5,
            self.image_url,
            self.state,
            attempts,
            error,
            now,
        )


@dataclass(slots=True)
class OrderRecord:
    ref: int
    listing_id: int | None
    batch: int
    part: int
    name: str
    body: bytes
    idempotency_key: str
    state: str
    order_id: str | None
    status: str | None
    images: int
    error: str | None
    result: bytes | None = None
    # The listing's download folder name (unique in the ledger).
    label: str = ""

    @property
    def image_list(self) -> list[dict[str, Any]]:
        return list(orjson.loads(self.result)) if self.result else []

    @property
    def final(self) -> bool:
        return is_final_status(self.status)

    @property
    def live(self) -> bool:
        return self.state in LIVE_ORDER_STATES


@dataclass(frozen=True, slots=True)
class PlacedCopy:
    """An image of the account whose content a live order holds: where it was ordered."""

    label: str  # its listing's label
    client_image_id: str
    order: str  # the order's name
    path: str  # the file it was ordered from

    @property
    def where(self) -> str:
        return f"{self.label}/{self.client_image_id}"


@dataclass(slots=True)
class ListingView:
    """What the ledger knows of one listing: its images and the orders that hold them."""

    listing: Listing
    listing_id: int | None = None
    label: str = ""
    images: dict[str, ImageRecord] = field(default_factory=dict)
    orders: dict[int, OrderRecord] = field(default_factory=dict)

    @property
    def ordered_before(self) -> bool:
        return any(o.live and o.listing_id == self.listing_id for o in self.orders.values()) or any(
            image.order_ref is not None for image in self.images.values()
        )

    def unsettled_orders(self) -> list[OrderRecord]:
        """Its orders whose outcome is unknown: re-sent with their own key and body."""
        return [
            o
            for o in self.orders.values()
            if o.state == "sent" and (o.listing_id == self.listing_id or o.listing_id is None)
        ]


@dataclass(frozen=True, slots=True)
class Held:
    """The listing is claimed by another live run."""

    holder: str


@dataclass(frozen=True, slots=True)
class OrderItem:
    listing_id: int
    client_image_id: str
    md5: str
    path: str


@dataclass(slots=True)
class OrderDraft:
    """An order as written ahead of its first send: key and body are final from here on."""

    listing_id: int | None
    batch: int
    part: int
    name: str
    body: bytes
    idempotency_key: str
    items: list[OrderItem]


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    """How an order's send ended. ``bad_image`` names an image whose upload the service
    refused (its upload is dropped, so a later run uploads it again)."""

    state: OrderState
    order_id: str | None = None
    status: str | None = None
    error: str | None = None
    bad_image: tuple[int, str] | None = None
