"""Image results into order parts: a part whose every image is settled (uploaded, reused or
failed) and that is closed goes to the order stage, exactly once. Settling waits while the
order stage is full, so that placing orders pushes back on the uploads."""

from __future__ import annotations

from typing import Protocol

from styldod_batch.models import ImageItem, ImageResult
from styldod_batch.orders import OrderPart, item_key


class ImageEvents(Protocol):
    async def image(self, result: ImageResult) -> None: ...


class OrderStage(Protocol):
    def place(self, part: OrderPart) -> None:
        """Place ``part`` (settled and closed) in the background; only its first call counts."""

    async def room(self) -> None:
        """Until the order stage has room for more."""


class Settler:
    def __init__(self, events: ImageEvents, orders: OrderStage) -> None:
        self._events = events
        self._orders = orders

    async def settle(self, part: OrderPart, item: ImageItem, result: ImageResult) -> None:
        part.results[item_key(item)] = result
        await self._events.image(result)
        if part.settled:
            self._orders.place(part)
        await self._orders.room()  # placing orders pushes back on the uploads

    async def failed(self, part: OrderPart, item: ImageItem, error: str) -> None:
        await self.settle(
            part,
            item,
            ImageResult(item.path, "failed", item.client_image_id, item.group, error=error),
        )

    def closed(self, part: OrderPart) -> None:
        """``part`` closed (full, or its listing ended): placed now if already settled."""
        if part.settled:
            self._orders.place(part)
