"""The ledger's storage interface: what the engine asks of a backend, and nothing more.

SQLite (``sqlite.py``) is the embedded default, PostgreSQL (``postgres.py``) the shared one:
both are ``core.SQLLedger``, one set of statements over a dialect. ``NullLedger`` (``null.py``)
keeps nothing, for runs that opt out. The contract a
backend keeps:

* ``claim`` is atomic: one run at a time holds a listing, until it releases it, its lease
  (renewed by ``renew``) runs out, or its process is known to be gone.
* ``write_order_ahead`` is durable before it returns, and refuses (``ClaimLost``) unless every
  listing of the order is still claimed by the caller; one image content is in at most one
  live order (``in_live_orders`` says which are, before an order is drafted).
* ``next_batch(None)`` claims a number atomically: two runs never get the same ``batch-N``.
* A write that fails fails alone, and is named by ``flush`` and ``close``; a ledger that can
  record nothing more (full, away too long, its writer dead) raises ``LedgerFailure`` at the
  next call.
* Methods without ``async`` queue their write; it is durable within a fraction of a second, and
  before any later ``async`` method returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections.abc import Collection
from typing import Any

from styldod_batch.errors import LedgerError
from styldod_batch.ledger.owner import Owner
from styldod_batch.ledger.records import (
    Held,
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    OrderRecord,
    PlacedCopy,
)


class Ledger(ABC):
    """One API account's record of listings, images, orders and their lifecycle."""

    #: Where it is, for messages (never a password).
    location: str = ""
    #: False when nothing outlives the run.
    durable: bool = True

    # -- claims ------------------------------------------------------------------------------

    @abstractmethod
    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        """Take ``listing`` for ``owner`` (creating it when new) and return what is known of
        it; ``Held`` when another live run holds it."""

    @abstractmethod
    async def renew(self, owner: Owner, lease_s: float) -> None:
        """Extend every lease ``owner`` holds."""

    @abstractmethod
    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        """Let go of one listing, or (``None``) of every claim ``owner`` holds."""

    @abstractmethod
    async def view(self, listing: Listing, taken: Collection[str] = ()) -> ListingView:
        """What is known of ``listing``, without claiming it (dry runs); a listing the
        ledger lacks gets the label a claim would give it, none of ``taken``."""

    @abstractmethod
    async def webhook_secret(self, earlier: str | None = None) -> str:
        """The account's webhook path token, drawn once (or ``earlier``) and kept."""

    @abstractmethod
    async def placed_sizes(self) -> array[int]:
        """The sizes of the contents a live order of the account holds, sorted, distinct."""

    @abstractmethod
    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]:
        """The contents of ``size`` bytes a live order of the account holds, by MD5."""

    # -- images and orders -------------------------------------------------------------------

    @abstractmethod
    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None: ...

    @abstractmethod
    def record_failure(self, path: str, error: str) -> None:
        """An input that failed before it had a listing (unreadable, not a regular file...)."""

    @abstractmethod
    async def next_batch(self, listing_id: int | None) -> int:
        """The batch number of a listing's next orders (``None``: fixed-size batches)."""

    async def in_live_orders(self, items: list[OrderItem]) -> list[OrderItem]:
        """Those of ``items`` whose very content is already in a live order (an image that
        went A -> B -> A): a new order leaves them out, and reports them."""
        return []

    @abstractmethod
    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int:
        """Record the order, its key, its exact body and its images before the first send;
        returns its reference."""

    @abstractmethod
    def settle_order(self, ref: int, outcome: OrderOutcome) -> None: ...

    async def release_order(self, which: str) -> OrderRecord:
        """Give up an order of unknown outcome (by Idempotency-Key or name): its images are
        free again (``styldod-batch release``)."""
        raise LedgerError(f"{self.location}: this ledger keeps no orders")

    # -- lifecycle ---------------------------------------------------------------------------

    @abstractmethod
    async def record_event(self, payload: dict[str, Any]) -> bool:
        """Durable before it returns; False when this event was recorded already."""

    @abstractmethod
    def record_progress(self, order_id: str, status: str, image_list: list[dict[str, Any]]) -> None:
        """What a poll saw; like an event, it never moves an order's status backwards."""

    @abstractmethod
    def record_output(
        self, order_id: str, client_image_id: str, path: str, size: int, md5: str
    ) -> None: ...

    @abstractmethod
    async def output(self, order_id: str, client_image_id: str) -> tuple[str, int, str] | None:
        """Where an output was saved (path, size, MD5), if it was."""

    # -- reading it all (status, download) ---------------------------------------------------

    @abstractmethod
    async def orders(self) -> list[OrderRecord]: ...

    @abstractmethod
    async def order_by_id(self, order_id: str) -> OrderRecord | None: ...

    @abstractmethod
    async def listings(self) -> list[ListingView]: ...

    @abstractmethod
    async def events(self, order_id: str) -> list[str]: ...

    @abstractmethod
    async def failures(self, limit: int = 1000) -> list[tuple[str, str]]: ...

    # -- lifetime ----------------------------------------------------------------------------

    @abstractmethod
    async def flush(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Write what is queued and let go (safe to call twice)."""
