"""The claims stage on an in-memory ledger and a virtual clock: a listing another run holds
is deferred (or waited for), a held listing's unknown orders are handed over to be re-sent,
its open count decides when it is let go, and leases are renewed."""

from __future__ import annotations

import asyncio
from typing import Any

from styldod_batch.ledger import Held, ImageRecord, Listing, ListingView, OrderRecord, Owner
from styldod_batch.models import ImageItem, ImageResult
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.claims import CLAIM_POLL_S, Claims, ListingRun, listing_name
from tests.virtual_clock import VirtualClock


def item(listing: str, n: int = 0) -> ImageItem:
    return ImageItem(f"/in/{n}.jpg", f"{n}.jpg", 10, 1, "image/jpeg", listing, listing=listing)


class Ledger:
    """Claims by identity: ``held`` ones answer ``Held`` that many times first."""

    def __init__(self, held: dict[str, int] | None = None) -> None:
        self.held = dict(held or {})
        self.orders: dict[str, list[OrderRecord]] = {}
        self.ids: dict[str, int] = {}
        self.released: list[int | None] = []
        self.renewed = 0
        self.images: list[tuple[int, ImageRecord, int, str | None]] = []
        self.failures: list[tuple[str, str]] = []

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        if self.held.get(listing.identity, 0) > 0:
            self.held[listing.identity] -= 1
            return Held("run 42 on another host")
        listing_id = self.ids.setdefault(listing.identity, len(self.ids) + 1)
        orders = {o.ref: o for o in self.orders.get(listing.identity, [])}
        return ListingView(listing, listing_id=listing_id, orders=orders)

    async def renew(self, owner: Owner, lease_s: float) -> None:
        self.renewed += 1

    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        self.released.append(listing_id)

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None:
        self.images.append((listing_id, image, attempts, error))

    def record_failure(self, path: str, error: str) -> None:
        self.failures.append((path, error))


def claims_on(ledger: Ledger) -> tuple[Claims, VirtualClock, list[Any]]:
    clock = VirtualClock()
    claims = Claims(
        ledger, Owner.for_this_run(), lease_s=30.0, stopping=asyncio.Event(), clock=clock
    )
    spawned: list[Any] = []
    claims.wire(spawned.append, lambda state, order: spawned.append((state, order)))
    return claims, clock, spawned


async def test_a_listing_held_elsewhere_is_deferred_then_waited_for() -> None:
    ledger = Ledger(held={"folder:/in/a": 3})
    claims, clock, _spawned = claims_on(ledger)
    assert await claims.enter(item("folder:/in/a"), can_relist=True) is None
    assert claims.deferred("folder:/in/a") and claims.get("folder:/in/a") is None
    assert claims.next_deferred() == ("folder:/in/a", "run 42 on another host")
    assert claims.next_deferred() is None
    state = await claims.wait_for("folder:/in/a")
    assert state is not None and state.view.listing.name == "a"
    assert clock.sleeps == [CLAIM_POLL_S, CLAIM_POLL_S]  # polled on the (virtual) clock


async def test_items_that_cannot_be_listed_again_wait_where_they_are_met() -> None:
    claims, clock, _spawned = claims_on(Ledger(held={"order:b": 2}))
    state = await claims.enter(item("order:b"), can_relist=False)
    assert state is not None and not claims.deferred("order:b")
    assert clock.sleeps == [CLAIM_POLL_S]


async def test_a_stopped_run_stops_waiting() -> None:
    claims, _clock, _spawned = claims_on(Ledger(held={"order:b": 10**6}))
    claims.stopping.set()
    assert await claims.wait_for("order:b") is None


async def test_unknown_orders_are_handed_over_and_keep_the_listing_open() -> None:
    ledger = Ledger()
    sent = OrderRecord(9, 1, 1, 1, "c", b"{}", "key", "sent", None, None, 2, "timeout")
    done = OrderRecord(8, 1, 1, 1, "c", b"{}", "key0", "created", "o1", "x", 2, None)
    ledger.orders["order:c"] = [sent, done]
    claims, _clock, spawned = claims_on(ledger)
    state = await claims.enter(item("order:c"), can_relist=True)
    assert state is not None and state.open == 1
    assert spawned == [(state, sent)]
    assert claims.mark_ended("order:c")
    await claims.maybe_release("order:c")
    assert ledger.released == []  # the re-send is still open
    await claims.resend_done(state)
    assert ledger.released == [state.listing_id] and claims.get("order:c") is None


async def test_a_listing_is_let_go_when_ended_and_its_last_part_is_done() -> None:
    ledger = Ledger()
    claims, _clock, spawned = claims_on(ledger)
    a = await claims.enter(item("order:a"), can_relist=True)
    b = await claims.enter(item("order:b"), can_relist=True)
    assert isinstance(a, ListingRun) and isinstance(b, ListingRun)
    claims.part_opened("order:a")
    claims.part_opened("order:b")
    mixed = OrderPart("", "", 1, items=[item("order:a"), item("order:b", 1)])
    claims.end_all()
    assert spawned == []  # both have a part open
    await claims.part_done(mixed)
    assert set(ledger.released) == {a.listing_id, b.listing_id}
    assert not claims.mark_ended("order:a")  # no longer held

    c = await claims.enter(item("order:c"), can_relist=True)
    assert c is not None
    claims.end_all()  # nothing open: let go in a task of the run's group
    assert len(spawned) == 1
    await spawned[0]
    assert ledger.released[-1] == c.listing_id


async def test_uploads_and_failures_are_remembered_by_listing() -> None:
    ledger = Ledger()
    claims, _clock, _spawned = claims_on(ledger)
    state = await claims.enter(item("order:a"), can_relist=True)
    assert state is not None
    done = ImageResult("/in/0.jpg", "uploaded", "0.jpg", md5="m", image_url="u", attempts=2)
    claims.remember_upload(item("order:a"), done)
    claims.remember_upload(item("order:zzz"), done)  # not held: nothing recorded
    claims.record_failure("rel/x.jpg", "unreadable")
    [(listing_id, record, attempts, _error)] = ledger.images
    assert (listing_id, record.state, record.md5, record.image_url, attempts) == (
        state.listing_id,
        "uploaded",
        "m",
        "u",
        2,
    )
    assert record.path == "/in/0.jpg"
    assert ledger.failures[0][0].endswith("/rel/x.jpg") and ledger.failures[0][0].startswith("/")


async def test_leases_are_renewed_a_third_of_the_way_in() -> None:
    ledger = Ledger()
    claims, clock, _spawned = claims_on(ledger)
    keeper = asyncio.create_task(claims.keep())
    for _ in range(20):
        await asyncio.sleep(0)
    keeper.cancel()
    assert ledger.renewed >= 3 and set(clock.sleeps) == {10.0}
    assert listing_name("folder:/photos/house-1") == "house-1"
    assert listing_name("order:house 2") == "house 2"
