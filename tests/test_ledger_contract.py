"""The ledger's contract, against real SQLite, real PostgreSQL and (where it applies) the null
ledger: claims and leases, the write-ahead order, one live order per content, and the
failures of issue 18 (points 3, 4, 5, 12, 14, 15 and PostgreSQL's part of 6)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from styldod_batch.errors import LedgerError, LedgerFailure
from styldod_batch.ledger import (
    ClaimLost,
    Held,
    ImageRecord,
    Ledger,
    Listing,
    ListingView,
    NullLedger,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    Owner,
    SQLiteLedger,
)
from tests.servers import PostgresServer

Opener = Callable[[], Awaitable[Ledger]]
_databases = itertools.count(1)
YEAR_2300_NS = 10_413_792_000 * 10**9  # past int64 nanoseconds


class Store:
    """One ledger's storage, opened as many times as a test likes (as separate processes
    would); ``refuse`` makes the database itself reject one row, as a full or broken one
    would."""

    def __init__(self, kind: str, target: str | Path) -> None:
        self.kind, self.target = kind, target
        self.opened: list[Ledger] = []

    async def open(self, *, read_only: bool = False) -> Ledger:
        if self.kind == "null":
            ledger: Ledger = NullLedger()
        elif self.kind == "sqlite":
            assert isinstance(self.target, Path)
            ledger = await SQLiteLedger.open(
                self.target, base_url="http://api", api_key="k", read_only=read_only
            )
        else:
            from styldod_batch.ledger.postgres import PostgresLedger

            ledger = await PostgresLedger.open(str(self.target), base_url="http://api", api_key="k")
        self.opened.append(ledger)
        return ledger

    async def refuse(self, table: str, column: str, value: str) -> None:
        """Every write that sets ``column`` of ``table`` to ``value`` fails in the database."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as c:
                for event in ("INSERT", "UPDATE"):
                    c.execute(
                        f"CREATE TRIGGER refuse_{event} BEFORE {event} ON {table}"
                        f" WHEN NEW.{column} = '{value}'"
                        " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
                    )
        else:
            c = await asyncpg.connect(str(self.target))
            try:
                check = f"CHECK ({column} <> '{value}')"
                await c.execute(f"ALTER TABLE styldod_{table} ADD CONSTRAINT refuse {check}")
            finally:
                await c.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer
) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        made = Store("sqlite", tmp_path / "ledger.sqlite")
    else:
        database = f"contract_{next(_databases)}"
        made = Store("postgres", await postgres_server.create_database(database))
    yield made
    for ledger in made.opened:
        with contextlib.suppress(LedgerError):  # what the test was about, checked there
            await ledger.close()


def image(name: str, md5: str = "a" * 32, *, mtime_ns: int = 1) -> ImageRecord:
    return ImageRecord(name, f"/photos/{name}", 10, mtime_ns, md5, f"https://s/{name}", "uploaded")


async def claimed(ledger: Ledger, owner: Owner, name: str = "house") -> ListingView:
    view = await ledger.claim(Listing(f"folder:/{name}", name), owner, 30)
    assert isinstance(view, ListingView) and view.listing_id is not None
    return view


def draft(view: ListingView, key: str, *items: tuple[str, str], batch: int = 1) -> OrderDraft:
    assert view.listing_id is not None
    return OrderDraft(
        view.listing_id,
        batch,
        1,
        f"{view.listing.name} #{key}",
        b'{"body": "' + key.encode() + b'"}',
        key,
        [OrderItem(view.listing_id, cid, md5, f"/photos/{cid}") for cid, md5 in items],
    )


# -- the existing promises ------------------------------------------------------------------


async def test_a_claim_is_one_runs_until_released_and_a_lease_runs_out(store: Store) -> None:
    first, second = await store.open(), await store.open()
    me, other = Owner.for_this_run(), Owner.for_this_run()
    await claimed(first, me)
    held = await second.claim(Listing("folder:/house", "house"), other, 30)
    assert isinstance(held, Held)
    await first.release(me)
    assert isinstance(await claimed(second, other), ListingView)
    await second.claim(Listing("folder:/short", "short"), other, 0.2)
    await asyncio.sleep(0.4)
    assert isinstance(await claimed(first, me, "short"), ListingView), "its lease ran out"


async def test_the_order_is_written_ahead_and_one_content_is_in_one_live_order(
    store: Store,
) -> None:
    ledger, owner = await store.open(), Owner.for_this_run()
    view = await claimed(ledger, owner)
    ledger.record_image(view.listing_id or 0, image("1.jpg"))
    ref = await ledger.write_order_ahead(owner, draft(view, "key-1", ("1.jpg", "a" * 32)))
    # Durable before it returns: another process sees the key and body at once.
    seen = await (await store.open(read_only=True)).orders()
    assert [(o.ref, o.idempotency_key, o.state) for o in seen] == [(ref, "key-1", "sent")]
    with pytest.raises(ClaimLost):
        await ledger.write_order_ahead(owner, draft(view, "key-2", ("1.jpg", "a" * 32)))
    with pytest.raises(ClaimLost):
        await ledger.write_order_ahead(
            Owner.for_this_run(), draft(view, "key-3", ("2.jpg", "b" * 32))
        )
    ledger.settle_order(ref, OrderOutcome("refused", error="HTTP 400"))
    await ledger.flush()
    # A definite refusal frees the content for an order under a new key.
    await ledger.write_order_ahead(owner, draft(view, "key-4", ("1.jpg", "a" * 32)))


async def test_a_listing_claimed_again_knows_its_images_and_orders(store: Store) -> None:
    """Exactly-once across runs: by listing, ``client_image_id`` and content."""
    ledger, owner = await store.open(), Owner.for_this_run()
    view = await claimed(ledger, owner)
    listing_id = view.listing_id or 0
    for name, md5 in (("1.jpg", "a" * 32), ("2.jpg", "b" * 32)):
        ledger.record_image(listing_id, image(name, md5))
    first = await ledger.write_order_ahead(owner, draft(view, "k1", ("1.jpg", "a" * 32)))
    second = await ledger.write_order_ahead(owner, draft(view, "k2", ("2.jpg", "b" * 32), batch=2))
    ledger.settle_order(first, OrderOutcome("created", order_id="ORD-1", status="pending"))
    await ledger.release(owner)

    again = await claimed(await store.open(), Owner.for_this_run())

    assert again.ordered_before and sorted(again.orders) == [first, second]
    assert (
        again.images["1.jpg"].ordered_md5 == "a" * 32 and again.images["1.jpg"].order_ref == first
    )
    assert again.orders[first].order_id == "ORD-1" and again.orders[first].state == "created"
    assert [o.idempotency_key for o in again.unsettled_orders()] == ["k2"], "re-sent as it is"
    assert await ledger.next_batch(listing_id) == 3


async def test_ordered_content_is_found_across_the_account_by_size_then_md5(
    store: Store,
) -> None:
    """A moved folder's images: what a live order of any listing holds is found by size and
    content; a refused order's content is free again."""
    ledger, owner = await store.open(), Owner.for_this_run()
    view = await claimed(ledger, owner, "Unit-1")
    other = await claimed(ledger, owner, "Unit-2")
    for name, md5 in (("1.jpg", "a" * 32), ("2.jpg", "b" * 32)):
        ledger.record_image(view.listing_id or 0, image(name, md5))
    ledger.record_image(other.listing_id or 0, image("3.jpg", "c" * 32))
    ordered = await ledger.write_order_ahead(owner, draft(view, "k1", ("1.jpg", "a" * 32)))
    ledger.settle_order(ordered, OrderOutcome("created", order_id="ORD-1", status="pending"))
    refused = await ledger.write_order_ahead(owner, draft(other, "k2", ("3.jpg", "c" * 32)))
    ledger.settle_order(refused, OrderOutcome("refused", error="HTTP 400"))
    await ledger.flush()

    reader = await store.open(read_only=True)
    for seen in (ledger, reader):
        copies = await seen.placed_copies(10)
        assert sorted(copies) == ["a" * 32], "2.jpg was never ordered, 3.jpg was refused"
        copy = copies["a" * 32]
        assert (copy.where, copy.order, copy.path) == (
            "Unit-1/1.jpg",
            "Unit-1 #k1",
            "/photos/1.jpg",
        )
        assert await seen.placed_copies(11) == {}
        assert list(await seen.placed_sizes()) == [10], "the sizes in memory, distinct"


async def test_the_null_ledger_keeps_nothing_and_never_refuses() -> None:
    ledger, owner = NullLedger(), Owner.for_this_run()
    view = await ledger.claim(Listing("folder:/house", "house"), owner, 30)
    assert isinstance(view, ListingView) and not view.images
    ledger.record_image(1, image("1.jpg"))
    await ledger.write_order_ahead(owner, draft(view, "k", ("1.jpg", "a" * 32)))
    await ledger.flush()
    assert await ledger.orders() == [] and not ledger.durable
    await ledger.close()


# -- point 14: names claimed atomically -----------------------------------------------------


async def test_two_runs_numbering_batches_at_once_never_get_the_same_number(
    store: Store,
) -> None:
    first, second = await store.open(), await store.open()
    numbers = await asyncio.gather(
        *(ledger.next_batch(None) for _ in range(15) for ledger in (first, second))
    )
    assert sorted(numbers) == list(range(1, 31)), "each batch-N is claimed by one run"


# -- point 12: an image that went A -> B -> A -----------------------------------------------


async def test_a_reverted_image_leaves_the_order_alone_not_the_whole_draft(store: Store) -> None:
    ledger, owner = await store.open(), Owner.for_this_run()
    view = await claimed(ledger, owner)
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    await ledger.write_order_ahead(owner, draft(view, "k1", ("x.jpg", a), ("y.jpg", a)))
    await ledger.write_order_ahead(owner, draft(view, "k2", ("x.jpg", b), batch=2))
    # x.jpg is back to A (in order k1, live), y.jpg has new content C.
    follow_up = [
        OrderItem(view.listing_id or 0, "x.jpg", a, "/x"),
        OrderItem(view.listing_id or 0, "y.jpg", c, "/y"),
    ]
    taken = await ledger.in_live_orders(follow_up)
    assert [i.client_image_id for i in taken] == ["x.jpg"]
    ref = await ledger.write_order_ahead(owner, draft(view, "k3", ("y.jpg", c), batch=3))
    assert ref > 0


# -- point 5: values made storable; one bad row fails alone; a dead writer stops the run ----


async def test_a_date_past_int64_and_a_nul_in_an_error_are_recorded(store: Store) -> None:
    ledger, owner = await store.open(), Owner.for_this_run()
    view = await claimed(ledger, owner)
    listing_id = view.listing_id or 0
    ledger.record_image(listing_id, image("2300.jpg", mtime_ns=YEAR_2300_NS))
    ledger.record_image(listing_id, image("nul.jpg"), error="403: <Error>\x00\x00gzip")
    ledger.record_failure("/photos/bad\x00name.jpg", "cannot read\x00")
    for n in range(20):
        ledger.record_image(listing_id, image(f"{n}.jpg"))
    await ledger.flush()
    again = await claimed(await store.open(), owner)
    assert len(again.images) == 22, "no row was lost with the odd ones"
    assert again.images["2300.jpg"].mtime_ns == 2**63 - 1
    assert len(await ledger.failures()) == 1


async def test_a_row_the_database_refuses_fails_alone_and_is_named(store: Store) -> None:
    ledger, owner = await store.open(), Owner.for_this_run()
    listing_id = (await claimed(ledger, owner)).listing_id or 0
    await store.refuse("images", "path", "/photos/bad.jpg")
    for name in ("1.jpg", "bad.jpg", "2.jpg"):
        ledger.record_image(listing_id, image(name))
    with pytest.raises(LedgerFailure, match=r"bad\.jpg"):
        await ledger.flush()
    view = await (await store.open()).view(Listing("folder:/house", "house"))
    assert sorted(view.images) == ["1.jpg", "2.jpg"], "the other rows were recorded"


async def test_a_writer_that_dies_stops_the_run_at_once(store: Store) -> None:
    ledger, owner = await store.open(), Owner.for_this_run()
    listing_id = (await claimed(ledger, owner)).listing_id or 0

    async def broken(_batch: object) -> None:
        raise RuntimeError("a bug in the writer")

    ledger._writer._commit = broken  # type: ignore[attr-defined]
    ledger.record_image(listing_id, image("1.jpg"))
    await asyncio.sleep(0.3)
    with pytest.raises(LedgerFailure, match="writer stopped"):
        ledger.record_image(listing_id, image("2.jpg"))
    with pytest.raises(LedgerFailure, match="writer stopped"):
        await ledger.claim(Listing("folder:/other", "other"), owner, 30)


# -- point 4: a final write that fails is never swallowed -----------------------------------


async def test_a_created_order_the_ledger_could_not_record_fails_the_close(store: Store) -> None:
    ledger, owner = await store.open(), Owner.for_this_run()
    view = await claimed(ledger, owner)
    ref = await ledger.write_order_ahead(owner, draft(view, "k1", ("1.jpg", "a" * 32)))
    await store.refuse("orders", "order_id", "ORD-7")
    ledger.settle_order(ref, OrderOutcome("created", order_id="ORD-7", status="pending"))
    with pytest.raises(LedgerFailure, match="ORD-7"):
        await ledger.close()


# -- point 15: a path with #, ? or % --------------------------------------------------------


@pytest.mark.parametrize("name", ["a#b", "what?x=1", "100%25", "50% off"])
async def test_a_state_path_with_uri_characters_is_the_same_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name / f"ledger{name}.sqlite"
    ledger, owner = (
        await SQLiteLedger.open(path, base_url="http://api", api_key="k"),
        Owner.for_this_run(),
    )
    view = await claimed(ledger, owner)
    await ledger.write_order_ahead(owner, draft(view, "k1", ("1.jpg", "a" * 32)))
    await ledger.close()
    reader = await SQLiteLedger.open(path, base_url="http://api", api_key="k", read_only=True)
    try:
        assert [o.idempotency_key for o in await reader.orders()] == ["k1"]
        assert (await reader.view(Listing("folder:/house", "house"))).ordered_before
    finally:
        await reader.close()
    assert sorted(p.name for p in path.parent.iterdir())[0] == path.name
