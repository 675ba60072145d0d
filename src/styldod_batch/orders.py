"""Grouping images into orders, option precedence, and order payloads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from styldod_batch.models import ImageItem, ImageResult


def effective_options(
    global_options: Mapping[str, Any],
    apply_to_all: Mapping[str, Any],
    image_options: Mapping[str, Any],
) -> dict[str, Any]:
    """The seed's precedence: image level > ``apply_to_all`` > the key's global configuration.

    A level that sets an option to null leaves it to the levels below.
    """
    effective = {k: v for k, v in global_options.items() if v is not None}
    effective.update((k, v) for k, v in apply_to_all.items() if v is not None)
    effective.update((k, v) for k, v in image_options.items() if v is not None)
    return effective


@dataclass(slots=True)
class OrderPart:
    """Up to ``max_images`` images of one group: one order."""

    group: str
    number: int
    items: list[ImageItem] = field(default_factory=list)
    results: dict[str, ImageResult] = field(default_factory=dict)
    # The name is fixed when the part closes: ``group`` alone, or ``group-N`` when split.
    name: str | None = None

    @property
    def settled(self) -> bool:
        return self.name is not None and len(self.results) == len(self.items)


class Grouper:
    """Assigns each item its order part and sequence, in arrival order.

    A part closes when its group ends, or when it is full and another image of the same
    group arrives (it is then named ``group-1`` and the next part ``group-2``...).
    """

    def __init__(self, *, order_size: int, by_folder: bool) -> None:
        self.order_size = order_size
        self.by_folder = by_folder
        self._open: dict[str, OrderPart] = {}
        self._batches = 0

    def add(self, item: ImageItem) -> tuple[OrderPart, OrderPart | None]:
        """Place ``item``; returns its part and a part this closed, if any."""
        closed = None
        if not self.by_folder:
            part = self._open.get("")
            if part is None or len(part.items) >= self.order_size:
                if part is not None:
                    closed = self._close("", single=True)
                self._batches += 1
                part = self._open[""] = OrderPart(group=f"batch-{self._batches}", number=1)
        else:
            part = self._open.get(item.group)
            if part is None:
                part = self._open[item.group] = OrderPart(group=item.group, number=1)
            elif len(part.items) >= self.order_size:
                closed = self._close(item.group, single=False)
                part = self._open[item.group] = OrderPart(
                    group=item.group, number=closed.number + 1
                )
        part.items.append(item)
        item.sequence = item.sequence or len(part.items)
        return part, closed

    def end_group(self, group: str) -> OrderPart | None:
        if not self.by_folder or group not in self._open:
            return None
        part = self._open[group]
        return self._close(group, single=part.number == 1)

    def end_all(self) -> list[OrderPart]:
        return [
            self._close(key, single=self._open[key].number == 1 or not self.by_folder)
            for key in list(self._open)
        ]

    def _close(self, key: str, *, single: bool) -> OrderPart:
        part = self._open.pop(key)
        part.name = part.group if single else f"{part.group}-{part.number}"
        return part


def order_payload(
    part: OrderPart, *, options: Mapping[str, Any], webhook_url: str | None
) -> dict[str, Any]:
    """The ``POST /v2/orders`` body for the images of ``part`` that were uploaded."""
    images = []
    for item in sorted(part.items, key=lambda i: i.sequence):
        result = part.results.get(item.path)
        if result is None or result.status != "uploaded" or result.image_url is None:
            continue
        image: dict[str, Any] = {
            "client_image_id": item.client_image_id,
            "image_urls": [result.image_url],
            "sequence": item.sequence,
        }
        image.update(item.options)
        images.append(image)
    payload: dict[str, Any] = {"order_name": part.name, "image_list": images}
    if options:
        payload["apply_to_all"] = dict(options)
    if webhook_url:
        payload["webhook_url"] = webhook_url
    return payload
