"""The route stage: (item, what the ledger knows, settings) -> what to do; and the dry run
(``plan.py``), which takes the same decision and the run's own batch numbering."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from styldod_batch.ledger import (
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    Owner,
    PlacedCopy,
)
from styldod_batch.ledger.sqlite import SQLiteLedger
from styldod_batch.models import ImageItem
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.feed import ItemFeed
from styldod_batch.pipeline.place import BatchNumbers
from styldod_batch.pipeline.route import (
    ContentBefore,
    Verdict,
    changed_result,
    decide,
    late_result,
    moved_result,
)
from styldod_batch.plan import plan_run
from styldod_batch.rerun import already_ordered
from styldod_batch.settings import Settings

LISTING = Listing("order:house", "house")
BASE_URL, KEY = "http://127.0.0.1:9", "k-route"


def item_at(
    tmp_path: Path, name: str, data: bytes = b"jpeg bytes", group: str = "house"
) -> ImageItem:
    path = tmp_path / name
    path.write_bytes(data)
    stat = path.stat()
    return ImageItem(
        str(path),
        name,
        stat.st_size,
        stat.st_mtime_ns,
        "image/jpeg",
        group,
        listing=f"order:{group}",
    )


def record_of(item: ImageItem, **changes: Any) -> ImageRecord:
    md5 = hashlib.md5(Path(item.path).read_bytes(), usedforsecurity=False).hexdigest()
    fields: dict[str, Any] = {
        "client_image_id": item.client_image_id,
        "path": item.path,
        "size": item.size,
        "mtime_ns": item.mtime_ns,
        "md5": md5,
        "image_url": "https://store/x",
        "state": "uploaded",
    }
    fields.update(changes)
    return ImageRecord(**fields)


def view_with(*records: ImageRecord) -> ListingView:
    return ListingView(LISTING, listing_id=7, images={r.client_image_id: r for r in records})


async def test_a_new_image_is_uploaded(tmp_path: Path) -> None:
    item = item_at(tmp_path, "a.jpg")
    route = await decide(item, view_with(), Settings())
    assert (route.verdict, route.record, route.order) == (Verdict.UPLOAD, None, None)


async def test_an_earlier_upload_of_the_same_file_is_reused(tmp_path: Path) -> None:
    item = item_at(tmp_path, "a.jpg")
    record = record_of(item)
    route = await decide(item, view_with(record), Settings())
    assert route.verdict is Verdict.REUSE
    assert route.md5 == record.md5 and not route.stale(item)
    # Another mtime: the upload is not trusted, the file goes again.
    moved = record_of(item, mtime_ns=item.mtime_ns - 1)
    again = await decide(item, view_with(moved), Settings())
    assert again.verdict is Verdict.UPLOAD and again.stale(item)


async def test_an_ordered_image_is_done_and_a_changed_one_is_not_sent_again(
    tmp_path: Path,
) -> None:
    item = item_at(tmp_path, "a.jpg")
    record = record_of(item, state="ordered", order_ref=3)
    record.ordered_md5 = record.md5
    view = view_with(record)
    order = view.orders[3] = _order(3, "house", batch=1)
    route = await decide(item, view, Settings())
    assert (route.verdict, route.order) == (Verdict.ORDERED, order)
    assert already_ordered(item, route.order).order == "house"

    changed = item_at(tmp_path, "a.jpg", b"other bytes!")  # size and content differ now
    route = await decide(changed, view, Settings())
    assert route.verdict is Verdict.CHANGED and route.md5 != record.md5
    assert "in house" in (changed_result(changed, route.order).error or "")
    reorder = await decide(changed, view, Settings(reorder_changed=True))
    assert reorder.verdict is Verdict.UPLOAD


async def test_a_new_image_in_an_ordered_listing_is_late_only_without_follow_ups(
    tmp_path: Path,
) -> None:
    done = item_at(tmp_path, "a.jpg")
    view = view_with(record_of(done, state="ordered", order_ref=3))
    new = item_at(tmp_path, "b.jpg")
    assert view.ordered_before
    assert (await decide(new, view, Settings())).verdict is Verdict.UPLOAD
    late = await decide(new, view, Settings(follow_ups=False))
    assert late.verdict is Verdict.LATE
    assert late_result(new).status == "late"
    # The run passes what the listing was when claimed, whatever the view says now.
    fresh = await decide(new, view, Settings(follow_ups=False), ordered_before=False)
    assert fresh.verdict is Verdict.UPLOAD


async def test_the_plan_names_fixed_size_batches_as_the_run_numbers_them(tmp_path: Path) -> None:
    """An account with two earlier ``batch-N`` orders: a dry run's fixed-size orders are
    ``batch-3`` and ``batch-4`` (the ledger's next numbers), never ``batch-1`` again, and the
    run's own numbering on the same ledger gives the very same numbers."""
    db = tmp_path / "ledger.sqlite"
    ledger = await SQLiteLedger.open(db, base_url=BASE_URL, api_key=KEY)
    owner = Owner.for_this_run()
    claimed = await ledger.claim(LISTING, owner, 30.0)
    assert isinstance(claimed, ListingView) and claimed.listing_id is not None
    for n, name in enumerate(("old1.jpg", "old2.jpg")):
        old = item_at(tmp_path, name)
        record = record_of(old)
        ledger.record_image(claimed.listing_id, record)
        batch = await ledger.next_batch(None)
        item = OrderItem(claimed.listing_id, old.client_image_id, str(record.md5), old.path)
        draft = OrderDraft(None, batch, 1, f"batch-{batch}", b"{}", f"key-{n}", [item])
        await ledger.write_order_ahead(owner, draft)
    await ledger.release(owner)
    await ledger.close()

    items = [item_at(tmp_path, f"new{n}.jpg", bytes([n]) * 10) for n in range(3)]

    async def source() -> AsyncIterator[ImageItem]:
        for one in items:
            yield one

    settings = Settings(dry_run=True, order_by="none", order_size=2)
    plans: list[dict[str, Any]] = []
    reader = await SQLiteLedger.open(db, base_url=BASE_URL, api_key=KEY, read_only=True)
    try:
        report = await plan_run(ItemFeed(source()), settings, reader, on_plan=plans.append)
    finally:
        await reader.close()
    assert [p["order"] for p in plans] == ["batch-3", "batch-4"]
    assert [o.key for o in report.orders] == ["batch-3", "batch-4"]
    assert [len(p["images"]) for p in plans] == [2, 1]

    writer = await SQLiteLedger.open(db, base_url=BASE_URL, api_key=KEY)
    try:
        run_numbers = BatchNumbers(writer)
        second, first = OrderPart("", "", 2), OrderPart("", "", 1)
        # The second batch placed first still takes the number after the first's.
        assert await run_numbers.of(second, None) == 4
        assert await run_numbers.of(first, None) == 3
        assert await run_numbers.of(second, None) == 4  # a part keeps its number
    finally:
        await writer.close()


async def test_a_listing_batch_is_its_next_one_and_taken_once() -> None:
    class Peeking:
        def __init__(self) -> None:
            self.asked: list[int | None] = []

        async def next_batch(self, listing_id: int | None) -> int:
            self.asked.append(listing_id)
            return 5

    class Slot:
        def __init__(self, known: int | None) -> None:
            self.batch: int | None = None
            self.known_id = known

    ledger = Peeking()
    numbers = BatchNumbers(ledger, peek=True)
    part = OrderPart("order:house", "house", 1)
    slot = Slot(7)
    assert [await numbers.of(part, slot), await numbers.of(part, slot)] == [5, 5]
    assert ledger.asked == [7]  # asked once, then kept in the listing's slot
    assert await numbers.of(part, Slot(None)) == 1  # a listing the ledger never saw
    assert [await numbers.of(OrderPart("", "", n), None) for n in (1, 2)] == [5, 6]


def _order(ref: int, name: str, *, batch: int) -> Any:
    from styldod_batch.ledger import OrderRecord

    return OrderRecord(
        ref, 7, batch, 1, name, b"{}", "key", "created", "o-1", "done", 1, None, label=name
    )


class FakeContent:
    """The account's ordered content, in memory: size -> {md5: copy}; counts the look-ups."""

    def __init__(self, copies: dict[int, dict[str, PlacedCopy]]) -> None:
        self.copies = copies
        self.asked: list[int] = []

    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]:
        self.asked.append(size)
        return self.copies.get(size, {})


async def test_an_image_new_here_whose_content_is_ordered_elsewhere_is_moved(
    tmp_path: Path,
) -> None:
    moved = item_at(tmp_path, "a.jpg", b"the very bytes")
    same_size = item_at(tmp_path, "b.jpg", b"other  bytes!!")
    new = item_at(tmp_path, "c.jpg", b"a size nobody has")
    md5 = hashlib.md5(b"the very bytes", usedforsecurity=False).hexdigest()
    copy = PlacedCopy("Unit-1", "img1.jpg", "Unit-1", "/drive1/Unit-1/img1.jpg")
    content = FakeContent({moved.size: {md5: copy}})
    view = ListingView(LISTING, listing_id=7)

    route = await decide(moved, view, Settings(), content=content)
    assert (route.verdict, route.copy, route.md5) == (Verdict.MOVED, copy, md5)
    assert route.copy is not None
    result = moved_result(moved, route.copy)
    assert (result.status, result.same_as, result.order) == ("moved", "Unit-1/img1.jpg", "Unit-1")
    assert "--reorder-moved" in (result.error or "")
    # The same size, other bytes: uploaded. A size nobody has: the file is not even read.
    assert (await decide(same_size, view, Settings(), content=content)).verdict is Verdict.UPLOAD
    assert (await decide(new, view, Settings(), content=content)).verdict is Verdict.UPLOAD
    # With --reorder-moved, or for an image the listing knows, nothing is looked up.
    content.asked.clear()
    assert (
        await decide(moved, view, Settings(reorder_moved=True), content=content)
    ).verdict is Verdict.UPLOAD
    known = view_with(record_of(moved))
    assert (await decide(moved, known, Settings(), content=content)).verdict is Verdict.REUSE
    assert content.asked == []


async def test_the_ledger_is_read_only_for_a_size_something_ordered_has() -> None:
    class Ledger(FakeContent):
        def __init__(self) -> None:
            super().__init__({14: {"m": PlacedCopy("U", "1.jpg", "U", "/a/U/1.jpg")}})
            self.size_reads = 0

        async def placed_sizes(self) -> array[int]:
            self.size_reads += 1
            return array("q", sorted(self.copies))

    ledger = Ledger()
    content = ContentBefore(ledger)
    assert [len(await content.placed_copies(size)) for size in (3, 14, 15, 14, 99)] == [
        0, 1, 0, 1, 0,
    ]  # fmt: skip
    assert ledger.size_reads == 1, "the sizes are read once"
    assert ledger.asked == [14, 14], "copies are read for a matching size alone"
