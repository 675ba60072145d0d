"""The settle stage: a part goes to the order stage once it is closed and every image of it
is settled, exactly when that happens; settling waits while the order stage is full."""

from __future__ import annotations

import asyncio

from styldod_batch.models import ImageItem, ImageResult
from styldod_batch.orders import Grouper, OrderPart
from styldod_batch.pipeline.settle import Settler


def item(n: int) -> ImageItem:
    return ImageItem(f"/in/{n}.jpg", f"{n}.jpg", 10, 1, "image/jpeg", "house", listing="order:h")


class Fakes:
    def __init__(self) -> None:
        self.images: list[str] = []
        self.placed: list[OrderPart] = []
        self.open = asyncio.Event()
        self.open.set()

    async def image(self, result: ImageResult) -> None:
        self.images.append(f"{result.client_image_id}:{result.status}")

    def place(self, part: OrderPart) -> None:
        self.placed.append(part)

    async def room(self) -> None:
        await self.open.wait()


def two_of_one_listing() -> tuple[OrderPart, list[ImageItem]]:
    grouper = Grouper(order_size=10, by_folder=True)
    items = [item(0), item(1)]
    part = grouper.add(items[0])[0]
    grouper.add(items[1])
    return part, items


async def test_a_closed_part_is_placed_when_its_last_image_settles() -> None:
    fakes = Fakes()
    settler = Settler(fakes, fakes)
    part, items = two_of_one_listing()
    part.closed = True
    await settler.failed(part, items[0], "unreadable")
    assert fakes.placed == []
    ok = ImageResult(items[1].path, "uploaded", "1.jpg", "house", image_url="u", md5="m")
    await settler.settle(part, items[1], ok)
    assert fakes.placed == [part]
    assert fakes.images == ["0.jpg:failed", "1.jpg:uploaded"]
    assert part.results[("order:h", "0.jpg")].error == "unreadable"


async def test_a_settled_part_is_placed_when_it_closes() -> None:
    fakes = Fakes()
    settler = Settler(fakes, fakes)
    part, items = two_of_one_listing()
    for one in items:
        await settler.failed(part, one, "x")
    settler.closed(part)  # (closed by the grouper: its listing ended)
    assert fakes.placed == []  # the grouper closes the part; ``closed`` only hands it on
    part.closed = True
    settler.closed(part)
    assert fakes.placed == [part]


async def test_settling_waits_while_the_order_stage_is_full() -> None:
    fakes = Fakes()
    fakes.open.clear()
    settler = Settler(fakes, fakes)
    part, items = two_of_one_listing()
    waiting = asyncio.create_task(settler.failed(part, items[0], "x"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiting.done() and fakes.images == ["0.jpg:failed"]
    fakes.open.set()
    await asyncio.wait_for(waiting, 1)
