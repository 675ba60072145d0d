"""Grouping images into orders, and naming them: fast, no server."""

from __future__ import annotations

from styldod_batch.models import ImageItem, ImageResult
from styldod_batch.orders import Grouper, OrderPart, item_key, order_name, order_payload


def item(listing: str, name: str, *, sequence: int = 0) -> ImageItem:
    return ImageItem(
        path=f"/photos/{listing}/{name}",
        relative=name,
        size=10,
        mtime_ns=1,
        content_type="image/jpeg",
        group=listing,
        sequence=sequence,
        listing=f"folder:/photos/{listing}",
    )


def test_a_listing_is_one_order_until_it_holds_more_than_the_order_size() -> None:
    grouper = Grouper(order_size=3, by_folder=True)
    closed: list[OrderPart] = []
    for n in range(1, 8):
        _part, done = grouper.add(item("L", f"{n}.jpg"))
        closed += [done] if done else []
    last = grouper.end_group("folder:/photos/L")
    assert last is not None
    parts = [*closed, last]

    assert [(p.number, len(p.items), p.split) for p in parts] == [(1, 3, True), (2, 3, True),
                                                                  (3, 1, True)]  # fmt: skip
    assert [order_name("L", 1, p.number, split=p.split) for p in parts] == ["L-1", "L-2", "L-3"]
    assert [i.sequence for i in parts[1].items] == [1, 2, 3]


def test_listings_do_not_mix_and_a_small_one_is_not_split() -> None:
    grouper = Grouper(order_size=100, by_folder=True)
    a, _ = grouper.add(item("A", "1.jpg"))
    b, _ = grouper.add(item("B", "1.jpg"))
    assert a is not b
    ended = grouper.end_group("folder:/photos/A")
    assert ended is a and not a.split and a.closed
    assert order_name(a.base_name, 1, a.number, split=a.split) == "A"
    assert grouper.end_all() == [b]


def test_names_of_later_batches_and_fixed_size_batches() -> None:
    assert order_name("12 Oak St", 2, 1, split=False) == "12 Oak St (2)"
    assert order_name("12 Oak St", 3, 2, split=True) == "12 Oak St (3)-2"
    assert order_name("", 7, 1, split=False) == "batch-7"


def test_a_fixed_size_batch_keeps_ids_unique_by_naming_them_with_their_listing() -> None:
    grouper = Grouper(order_size=10, by_folder=False)
    part, _ = grouper.add(item("A", "front.jpg"))
    again, closed = grouper.add(item("B", "front.jpg"))
    assert closed is None and again is part
    assert [part.api_image_id(i) for i in part.items] == ["A/front.jpg", "B/front.jpg"]


def test_a_payload_holds_the_uploaded_images_in_sequence_order() -> None:
    grouper = Grouper(order_size=10, by_folder=True)
    first = item("L", "b.jpg", sequence=2)
    second = item("L", "a.jpg", sequence=1)
    third = item("L", "c.jpg")
    part = None
    for each in (first, second, third):
        part, _ = grouper.add(each)
    assert part is not None
    part.results[item_key(first)] = ImageResult(first.path, "uploaded", image_url="u/b")
    part.results[item_key(second)] = ImageResult(second.path, "uploaded", image_url="u/a")
    part.results[item_key(third)] = ImageResult(third.path, "failed", error="gone")

    payload = order_payload(part, "L", options={"basic_editing": True}, webhook_url=None)

    assert [i["client_image_id"] for i in payload["image_list"]] == ["a.jpg", "b.jpg"]
    assert payload["apply_to_all"] == {"basic_editing": True}
    assert "webhook_url" not in payload
