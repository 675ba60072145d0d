"""Grouping images into orders, option precedence, and order payloads."""

from __future__ import annotations

import string
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


ItemKey = tuple[str, str]


def item_key(item: ImageItem) -> ItemKey:
    """What tells an image apart: its listing and its ``client_image_id`` there."""
    return item.listing, item.client_image_id


@dataclass(slots=True, eq=False)
class OrderPart:
    """Up to ``max_images`` images of one listing (or, in fixed-size batches, of several):
    one order.

    ``listing`` is the listing's identity ("" for a fixed-size batch), ``number`` the part's
    place among this run's parts of it; ``split`` is known once the part closes.
    """

    listing: str
    base_name: str
    number: int
    items: list[ImageItem] = field(default_factory=list)
    results: dict[ItemKey, ImageResult] = field(default_factory=dict)
    closed: bool = False
    split: bool = False
    placed: bool = False  # handed to the order stage (exactly once)

    @property
    def settled(self) -> bool:
        return self.closed and len(self.results) == len(self.items)

    @property
    def listings(self) -> set[str]:
        return {item.listing for item in self.items}

    def api_image_id(self, item: ImageItem) -> str:
        """The ``client_image_id`` the order sends: a fixed-size batch mixes listings, so its
        images are named ``<listing>/<id>`` to stay unique."""
        return item.client_image_id if self.listing else f"{item.group}/{item.client_image_id}"


def order_name(base: str, batch: int, part: int, *, split: bool) -> str:
    """``listing``; a later batch ``listing (2)``; a split one ``listing-1``, ``listing-2``...

    Fixed-size batches (empty ``base``) are ``batch-N``.
    """
    if not base:
        return f"batch-{batch}"
    name = base if batch <= 1 else f"{base} ({batch})"
    return f"{name}-{part}" if split else name


ORDER_NAME_FIELDS = ("listing", "n", "part", "date", "job")


def template_fields(template: str) -> set[str]:
    """The fields ``--order-name`` uses; raises ``ValueError`` naming one it does not know."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc}") from exc
    for name in fields:
        if name not in ORDER_NAME_FIELDS:
            known = ", ".join("{" + f + "}" for f in ORDER_NAME_FIELDS)
            raise ValueError(f"{template!r}: unknown field {{{name}}} (known: {known})")
    return fields


@dataclass(frozen=True, slots=True)
class OrderNamer:
    """An order's name, the same for a run and its dry run. Without a template: the
    listing's label (``order_name``). With one (``--order-name '{date}-{listing}'``):
    what it says, then whatever it leaves out that keeps names apart: `` (n)`` for a
    listing's later batch, ``-n`` for a fixed-size batch, ``-part`` for a split part."""

    template: str = ""
    date: str = ""  # the run's day, YYYY-MM-DD
    job: str = ""

    def name(self, part: OrderPart, label: str, batch: int) -> str:
        base = (label or part.base_name) if part.listing else ""
        if not self.template:
            return order_name(base, batch, part.number, split=part.split)
        fields = template_fields(self.template)
        name = self.template.format(
            listing=base or "batch", n=batch, part=part.number, date=self.date, job=self.job
        )
        if "n" not in fields and (batch > 1 or not part.listing):
            name += f" ({batch})" if part.listing else f"-{batch}"
        if part.split and "part" not in fields:
            name += f"-{part.number}"
        return name


class Grouper:
    """Assigns each item its order part and sequence, in arrival order.

    A part closes when its listing ends, or when it is full and another image of the same
    listing arrives (it is then part 1 of a split, and the next is part 2...). In fixed-size
    batches, a part closes when full, or when an image would repeat an ID in it.
    """

    def __init__(self, *, order_size: int, by_folder: bool) -> None:
        self.order_size = order_size
        self.by_folder = by_folder
        self._open: dict[str, OrderPart] = {}

    def add(self, item: ImageItem) -> tuple[OrderPart, OrderPart | None]:
        """Place ``item``; returns its part and a part this closed, if any."""
        closed = None
        key = item.listing if self.by_folder else ""
        part = self._open.get(key)
        if part is None:
            part = self._open[key] = OrderPart(key, item.group if key else "", 1)
        elif len(part.items) >= self.order_size or (
            not key and any(part.api_image_id(i) == part.api_image_id(item) for i in part.items)
        ):
            closed = self._close(key, split=bool(key))
            part = self._open[key] = OrderPart(key, closed.base_name, closed.number + 1)
        part.items.append(item)
        item.sequence = item.sequence or len(part.items)
        return part, closed

    def end_group(self, listing: str) -> OrderPart | None:
        if not self.by_folder or listing not in self._open:
            return None
        part = self._open[listing]
        return self._close(listing, split=part.number > 1)

    def end_all(self) -> list[OrderPart]:
        return [
            self._close(key, split=bool(key) and self._open[key].number > 1)
            for key in list(self._open)
        ]

    def _close(self, key: str, *, split: bool) -> OrderPart:
        part = self._open.pop(key)
        part.closed, part.split = True, split
        return part


def order_payload(
    part: OrderPart, name: str, *, options: Mapping[str, Any], webhook_url: str | None
) -> dict[str, Any]:
    """The ``POST /v2/orders`` body for the images of ``part`` that were uploaded."""
    images = []
    for item in sorted(part.items, key=lambda i: i.sequence):
        result = part.results.get(item_key(item))
        if result is None or result.image_url is None or result.status not in ORDERABLE:
            continue
        image: dict[str, Any] = {
            "client_image_id": part.api_image_id(item),
            "image_urls": [result.image_url],
            "sequence": item.sequence,
        }
        image.update(item.options)
        images.append(image)
    payload: dict[str, Any] = {"order_name": name, "image_list": images}
    if options:
        payload["apply_to_all"] = dict(options)
    if webhook_url:
        payload["webhook_url"] = webhook_url
    return payload


# Image results that go into an order: uploaded now, or by an earlier run.
ORDERABLE = frozenset({"uploaded"})
