"""The intake stage alone, on in-memory fakes: each image's listing claimed, its route
decided, what must be uploaded grouped into parts and planned for pre-signing, and what
must not (already ordered, moved, bad input) told, never planned."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from styldod_batch.errors import InputError
from styldod_batch.ledger import Listing, ListingView, OrderRecord, Owner, PlacedCopy
from styldod_batch.ledger.records import ImageRecord
from styldod_batch.models import ImageItem, ImageResult, OrderResult
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.claims import Claims
from styldod_batch.pipeline.intake import Intake
from styldod_batch.pipeline.presign import DONE, PRESIGN_WORKERS, Planned
from styldod_batch.scan import GroupEnd, ScanEvent, Skipped
from styldod_batch.settings import Settings
from tests.test_stage_claims import Ledger
from tests.virtual_clock import VirtualClock


class ListFeed:
    can_relist = False

    def __init__(self, events: list[ScanEvent]) -> None:
        self._events = events

    async def events(self) -> AsyncIterator[ScanEvent]:
        for event in self._events:
            yield event

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        raise NotImplementedError

    def count(self, stop: threading.Event) -> int | None:
        return len(self._events)

    def close(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.images: list[ImageResult] = []
        self.orders: list[OrderResult] = []

    async def image(self, result: ImageResult) -> None:
        self.images.append(result)

    async def order(self, result: OrderResult) -> None:
        self.orders.append(result)

    def phase(self, phase: str) -> None:
        pass

    def found(self) -> None:
        pass

    def scan_complete(self) -> None:
        pass


class Parts:
    def __init__(self) -> None:
        self.closed_parts: list[OrderPart] = []
        self.settled: list[tuple[str, str]] = []

    async def settle(self, part: OrderPart, item: ImageItem, result: ImageResult) -> None:
        self.settled.append((item.client_image_id, result.status))

    def closed(self, part: OrderPart) -> None:
        self.closed_parts.append(part)


class Content:
    def __init__(self, copies: dict[int, dict[str, PlacedCopy]]) -> None:
        self.copies = copies

    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]:
        return self.copies.get(size, {})


def photo(folder: Path, name: str, data: bytes) -> ImageItem:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    stat = path.stat()
    listing = f"folder:{folder}"
    return ImageItem(
        str(path), name, stat.st_size, stat.st_mtime_ns, "image/jpeg", folder.name, listing=listing
    )


async def take(
    events: list[ScanEvent],
    ledger: Ledger,
    *,
    settings: Settings | None = None,
    content: Content | None = None,
) -> tuple[list[Planned], Events, Parts]:
    claims = Claims(
        ledger, Owner.for_this_run(), lease_s=30.0, stopping=asyncio.Event(), clock=VirtualClock()
    )
    spawned: list[asyncio.Future[Any]] = []  # what claims runs aside (releases), run here
    claims.wire(lambda work: spawned.append(asyncio.ensure_future(work)), lambda state, order: None)
    told, parts = Events(), Parts()
    planned: asyncio.Queue[Planned | object] = asyncio.Queue()
    intake = Intake(
        settings or Settings(order_size=2),
        claims,
        told,
        parts,
        planned,
        stopping=asyncio.Event(),
        content=content,
    )
    await intake.run(ListFeed(events))
    await asyncio.gather(*spawned)
    out: list[Planned] = []
    ends = 0
    while not planned.empty():
        got = planned.get_nowait()
        if got is DONE:
            ends += 1
        else:
            assert isinstance(got, tuple)
            out.append(got)
    assert ends == PRESIGN_WORKERS, "each pre-sign worker is told the planning ended"
    return out, told, parts


async def test_new_images_are_grouped_into_parts_and_planned(tmp_path: Path) -> None:
    a = [photo(tmp_path / "a", f"{n}.jpg", bytes([n]) * 20) for n in range(3)]
    b = [photo(tmp_path / "b", "0.jpg", b"b" * 20)]
    ledger = Ledger()
    planned, told, parts = await take(
        [*a, GroupEnd(a[0].listing), *b, GroupEnd(b[0].listing)], ledger
    )
    assert [(i.client_image_id, p.base_name, p.number) for i, p in planned] == [
        ("0.jpg", "a", 1),
        ("1.jpg", "a", 1),
        ("2.jpg", "a", 2),  # order size 2: a split listing's second part
        ("0.jpg", "b", 1),
    ]
    assert [(p.base_name, p.number, p.split) for p in parts.closed_parts] == [
        ("a", 1, True),
        ("a", 2, True),
        ("b", 1, False),
    ]
    assert told.images == []
    assert sorted(ledger.ids) == [a[0].listing, b[0].listing], "each listing claimed"


async def test_what_must_not_be_sent_is_told_and_never_planned(tmp_path: Path) -> None:
    done = photo(tmp_path / "a", "done.jpg", b"ordered bytes")
    moved = photo(tmp_path / "c", "copy.jpg", b"moved bytes!!")
    md5 = hashlib.md5(b"ordered bytes", usedforsecurity=False).hexdigest()
    moved_md5 = hashlib.md5(b"moved bytes!!", usedforsecurity=False).hexdigest()
    ledger = Ledger()
    order = OrderRecord(5, 1, 1, 1, "a", b"{}", "key-5", "created", "ORD-5", "pending", 1, None)
    ledger.orders[done.listing] = [order]
    known = ImageRecord(
        "done.jpg", done.path, done.size, done.mtime_ns, md5, "https://img", "ordered", md5, 5
    )

    async def claim(listing: Listing, owner: Owner, lease_s: float) -> ListingView:
        view = ListingView(listing, listing_id=len(ledger.ids) + 1)
        ledger.ids[listing.identity] = view.listing_id or 0
        if listing.identity == done.listing:
            view.images["done.jpg"], view.orders[5] = known, order
        return view

    ledger.claim = claim  # type: ignore[method-assign]
    copy = PlacedCopy("b", "orig.jpg", "b", "/old/b/orig.jpg")
    planned, told, _parts = await take(
        [
            done,
            moved,
            InputError("/in/broken.jpg", "not a JPEG"),
            Skipped("/in/notes.txt", "not an image"),
        ],
        ledger,
        content=Content({moved.size: {moved_md5: copy}}),
    )
    assert planned == []
    assert [(Path(r.path).name, r.status, r.resumed) for r in told.images] == [
        ("done.jpg", "ordered", True),
        ("copy.jpg", "moved", False),
        ("broken.jpg", "failed", False),
        ("notes.txt", "skipped", False),
    ]
    assert told.images[1].same_as == "b/orig.jpg"
    assert [o.key for o in told.orders] == ["a"], "the earlier order is named once"
    assert ledger.failures == [("/in/broken.jpg", "not a JPEG")]
