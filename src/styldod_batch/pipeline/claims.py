"""Listing claims: one run at a time holds a listing (a lease in the ledger, renewed while it
works); another run's listings are deferred and waited for. A listing is let go once its
feed ended and nothing of it is open: ``ListingRun.open`` counts its order parts (and
re-sent orders) not yet done, and this module is its one owner."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from styldod_batch.errors import StyldodError
from styldod_batch.ledger import Held, ImageRecord, Listing, ListingView, OrderRecord, Owner
from styldod_batch.models import ImageItem, ImageResult
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.ports import SYSTEM_CLOCK, ClaimLedger, Clock

# How often a run looks again at a listing another run holds (a claim: one small
# transaction); the wait ends the run's tail when the holder finishes.
CLAIM_POLL_S = 0.05

Spawn = Callable[[Coroutine[Any, Any, None]], object]


@dataclass(slots=True)
class ListingRun:
    """A listing this run holds: what the ledger knew of it, and what is still open."""

    view: ListingView
    ordered_before: bool
    # The batch this run's orders of it take (chosen at its first order).
    batch: int | None = None
    # Its parts (and re-sent orders) not yet done: changed only through ``Claims``.
    open: int = 0
    ended: bool = False
    reported: set[int] = field(default_factory=set)

    @property
    def listing_id(self) -> int:
        assert self.view.listing_id is not None
        return self.view.listing_id

    @property
    def known_id(self) -> int | None:
        """Its id in the ledger; None when the ledger never saw it (a dry run's new one)."""
        return self.view.listing_id


class Claims:
    """The listings this run holds, those another run holds, and their leases."""

    def __init__(
        self,
        ledger: ClaimLedger,
        owner: Owner,
        *,
        lease_s: float,
        stopping: asyncio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ledger = ledger
        self.owner = owner
        self.lease_s = lease_s
        self.stopping = stopping
        self.clock = clock
        self._listings: dict[str, ListingRun] = {}
        # Listings another run held when met: skipped, then waited for at the end.
        self._held: dict[str, str] = {}
        self._deferred: list[str] = []
        self._spawn: Spawn | None = None
        self._on_unsettled: Callable[[ListingRun, OrderRecord], None] | None = None

    def wire(self, spawn: Spawn, on_unsettled: Callable[[ListingRun, OrderRecord], None]) -> None:
        """``spawn`` runs a task in the run's group; ``on_unsettled`` is handed each order of
        a newly held listing whose outcome is unknown (it is counted open until
        ``resend_done``)."""
        self._spawn, self._on_unsettled = spawn, on_unsettled

    # -- holding -----------------------------------------------------------------------------

    def get(self, identity: str) -> ListingRun | None:
        return self._listings.get(identity)

    def deferred(self, identity: str) -> bool:
        """Whether another run held ``identity`` when met (its turn comes at the end)."""
        return identity in self._held

    async def enter(self, item: ImageItem, *, can_relist: bool) -> ListingRun | None:
        """Claim ``item``'s listing; None when another run holds it (it is then deferred,
        or, unless ``can_relist``, waited for here)."""
        listing = Listing(item.listing, item.group)
        claimed = await self.ledger.claim(listing, self.owner, self.lease_s)
        if not isinstance(claimed, Held):
            return self._holding(claimed)
        if can_relist:
            self._held[item.listing] = claimed.holder
            self._deferred.append(item.listing)
            return None
        return await self.wait_for(item.listing, name=item.group)

    def next_deferred(self) -> tuple[str, str] | None:
        """The next deferred listing and who held it; None when none is left."""
        if not self._deferred:
            return None
        listing = self._deferred.pop(0)
        return listing, self._held.pop(listing, "another run")

    async def wait_for(self, identity: str, name: str = "") -> ListingRun | None:
        """Wait until the run holding a listing lets go (or its claim runs out), then claim it.
        None when this run is stopped meanwhile."""
        listing = Listing(identity, name or listing_name(identity))
        while not self.stopping.is_set():
            claimed = await self.ledger.claim(listing, self.owner, self.lease_s)
            if not isinstance(claimed, Held):
                return self._holding(claimed)
            await self._pause(CLAIM_POLL_S)
        return None

    async def _pause(self, seconds: float) -> None:
        """``seconds`` on the clock, or less when the run is stopped meanwhile."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({sleeper, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (sleeper, stopped):
                waiter.cancel()

    def _holding(self, view: ListingView) -> ListingRun:
        state = self._listings[view.listing.identity] = ListingRun(
            view, ordered_before=view.ordered_before
        )
        for order in view.unsettled_orders():
            # Sent before, outcome unknown: asked again with its own key and body.
            state.open += 1
            assert self._on_unsettled is not None
            self._on_unsettled(state, order)
        return state

    # -- what is open --------------------------------------------------------------------------

    def part_opened(self, identity: str) -> None:
        """An order part now holds images of ``identity``."""
        self._listings[identity].open += 1

    async def part_done(self, part: OrderPart) -> None:
        for identity in part.listings:
            state = self._listings.get(identity)
            if state is not None:
                state.open -= 1
                await self.maybe_release(identity)

    async def resend_done(self, state: ListingRun) -> None:
        state.open -= 1
        await self.maybe_release(state.view.listing.identity)

    def mark_ended(self, identity: str) -> bool:
        """The feed has no more of ``identity``; False when this run does not hold it."""
        state = self._listings.get(identity)
        if state is None:
            return False
        state.ended = True
        return True

    def end_all(self) -> None:
        """The feed ended: every listing with nothing open is let go."""
        for state in self._listings.values():
            state.ended = True
        for identity in list(self._listings):
            if self._listings[identity].open == 0:
                assert self._spawn is not None
                self._spawn(self.maybe_release(identity))

    async def maybe_release(self, identity: str) -> None:
        state = self._listings.get(identity)
        if state is None or not state.ended or state.open:
            return
        del self._listings[identity]
        await self.ledger.release(self.owner, state.listing_id)

    # -- the ledger ----------------------------------------------------------------------------

    def remember(
        self,
        state: ListingRun,
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
                absolute(item.path),
                item.size,
                item.mtime_ns,
                md5,
                url,
                kind,
            ),
            attempts=attempts,
            error=error,
        )

    def remember_upload(self, item: ImageItem, result: ImageResult) -> None:
        """An upload's outcome, when this run still holds the item's listing."""
        state = self._listings.get(item.listing)
        if state is not None:
            self.remember(
                state,
                item,
                result.md5,
                result.image_url,
                "uploaded" if result.status == "uploaded" else "failed",
                attempts=result.attempts,
                error=result.error,
            )

    def record_failure(self, path: str, reason: str) -> None:
        self.ledger.record_failure(absolute(path), reason)

    async def keep(self) -> None:
        """Renew this run's leases well before they run out (until cancelled)."""
        while True:
            await self.clock.sleep(self.lease_s / 3)
            with contextlib.suppress(StyldodError):
                await self.ledger.renew(self.owner, self.lease_s)

    async def release_all(self) -> None:
        await self.ledger.release(self.owner)


def absolute(path: str) -> str:
    return os.path.abspath(path)


def listing_name(identity: str) -> str:
    kind, _, rest = identity.partition(":")
    return os.path.basename(rest) if kind == "folder" else rest
