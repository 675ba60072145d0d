"""A ledger that keeps nothing: for runs that explicitly give up exactly-once (``--no-journal``).

Every listing is new and free, every order is written ahead into thin air. Within one run the
scanner still yields each file once; across runs nothing is remembered, so a re-run uploads
and orders everything again.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Collection
from typing import Any

from styldod_batch.ledger.labels import candidate_labels
from styldod_batch.ledger.lifecycle import new_webhook_secret
from styldod_batch.ledger.owner import Owner
from styldod_batch.ledger.records import (
    Held,
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderOutcome,
    OrderRecord,
    PlacedCopy,
)
from styldod_batch.ledger.store import Ledger


class NullLedger(Ledger):
    location = "(none: --no-journal)"
    durable = False

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._batches = itertools.count(1)  # fixed-size batches, within the run
        self._labels: set[str] = set()
        self._secret: str | None = None

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        return ListingView(listing, next(self._ids), self._label(listing, self._labels))

    async def renew(self, owner: Owner, lease_s: float) -> None:
        return None

    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        return None

    async def view(self, listing: Listing, taken: Collection[str] = ()) -> ListingView:
        return ListingView(listing, label=self._label(listing, set(taken)))

    async def webhook_secret(self, earlier: str | None = None) -> str:
        # Nothing is kept: this run's own (no later run knows its orders anyway).
        if self._secret is None:
            self._secret = earlier or new_webhook_secret()
        return self._secret

    async def placed_sizes(self) -> array[int]:
        return array("q")

    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]:
        return {}  # it remembers no order

    @staticmethod
    def _label(listing: Listing, taken: set[str]) -> str:
        """Same-named listings of one run are told apart as the ledger tells them apart."""
        label = next(x for x in candidate_labels(listing.name, listing.identity) if x not in taken)
        taken.add(label)
        return label

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None:
        return None

    def record_failure(self, path: str, error: str) -> None:
        return None

    async def next_batch(self, listing_id: int | None) -> int:
        return 1 if listing_id is not None else next(self._batches)

    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int:
        return next(self._ids)

    def settle_order(self, ref: int, outcome: OrderOutcome) -> None:
        return None

    async def record_event(self, payload: dict[str, Any]) -> bool:
        return True

    def record_progress(self, order_id: str, status: str, image_list: list[dict[str, Any]]) -> None:
        return None

    def record_output(
        self, order_id: str, client_image_id: str, path: str, size: int, md5: str
    ) -> None:
        return None

    async def output(self, order_id: str, client_image_id: str) -> tuple[str, int, str] | None:
        return None

    async def orders(self) -> list[OrderRecord]:
        return []

    async def order_by_id(self, order_id: str) -> OrderRecord | None:
        return None

    async def listings(self) -> list[ListingView]:
        return []

    async def events(self, order_id: str) -> list[str]:
        return []

    async def failures(self, limit: int = 1000) -> list[tuple[str, str]]:
        return []

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
