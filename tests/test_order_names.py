"""Order names that say which listing: labels told apart by their folders, ``--order-name``
templates that never give two orders one name, and the same names without a ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from styldod_batch.errors import ConfigurationError
from styldod_batch.ledger import Listing, ListingView, NullLedger, Owner, SQLiteLedger
from styldod_batch.orders import OrderNamer, OrderPart
from styldod_batch.settings import Settings

KEY, BASE_URL = "names-key", "https://orders.example.com"


def listing(path: str) -> Listing:
    return Listing(f"folder:{path}", Path(path).name)


def part(listing_id: str, number: int = 1, *, split: bool = False) -> OrderPart:
    made = OrderPart(listing_id, Path(listing_id).name if listing_id else "", number)
    made.split = split
    return made


def test_without_a_template_an_order_is_named_by_its_listings_label() -> None:
    namer = OrderNamer()
    assert namer.name(part("/a/alice/Unit-1"), "Unit-1", 1) == "Unit-1"
    assert namer.name(part("/a/bob/Unit-1"), "Unit-1 (bob)", 1) == "Unit-1 (bob)"
    assert namer.name(part("/a/bob/Unit-1"), "Unit-1 (bob)", 2) == "Unit-1 (bob) (2)"
    assert namer.name(part("/a/bob/Unit-1", 2, split=True), "Unit-1 (bob)", 1) == ("Unit-1 (bob)-2")
    assert namer.name(part(""), "", 7) == "batch-7"


@pytest.mark.parametrize(
    ("template", "the_part", "label", "batch", "name"),
    [
        ("{date}-{listing}", part("/x/Unit-1"), "Unit-1", 1, "2026-12-06-Unit-1"),
        # What the template leaves out that keeps names apart is added:
        ("{date}-{listing}", part("/x/Unit-1"), "Unit-1", 3, "2026-12-06-Unit-1 (3)"),
        ("{date}-{listing}", part(""), "", 4, "2026-12-06-batch-4"),
        ("{job}", part("/x/Unit-1", 2, split=True), "Unit-1", 1, "nightly-2"),
        # ... and nothing when the template has it.
        ("{job}-{n}", part(""), "", 4, "nightly-4"),
        ("{listing}/{n}.{part}", part("/x/U", 2, split=True), "U", 2, "U/2.2"),
    ],
)
def test_a_template_names_orders_and_keeps_them_apart(
    template: str, the_part: OrderPart, label: str, batch: int, name: str
) -> None:
    namer = OrderNamer(template, "2026-12-06", "nightly")
    assert namer.name(the_part, label, batch) == name


@pytest.mark.parametrize("template", ["{listing}-{nope}", "{listing", "{0}"])
def test_a_template_with_an_unknown_field_is_refused_naming_the_setting(template: str) -> None:
    with pytest.raises(ConfigurationError, match="order_name"):
        Settings(order_name=template)


async def test_same_named_listings_get_labels_from_their_folders(tmp_path: Path) -> None:
    ledger = await SQLiteLedger.open(tmp_path / "ledger.sqlite", base_url=BASE_URL, api_key=KEY)
    owner = Owner.for_this_run()
    try:
        # A dry run hands out, without writing, the labels a run's claims will take.
        seen: set[str] = set()
        planned = []
        for path in ("/in/alice/Unit-1", "/in/bob/Unit-1", "/other/bob/Unit-1"):
            view = await ledger.view(listing(path), seen)
            seen.add(view.label)
            planned.append(view.label)
        claimed = []
        for path in ("/in/alice/Unit-1", "/in/bob/Unit-1", "/other/bob/Unit-1"):
            held = await ledger.claim(listing(path), owner, 30.0)
            assert isinstance(held, ListingView)
            claimed.append(held.label)
        assert claimed == planned == ["Unit-1", "Unit-1 (bob)", "Unit-1 (other-bob)"]
        # A listing keeps its label: a later claim or view gives the same one.
        again = await ledger.view(listing("/in/bob/Unit-1"))
        assert again.label == "Unit-1 (bob)"
    finally:
        await ledger.release(owner)
        await ledger.close()


async def test_without_a_ledger_names_are_still_apart_within_the_run() -> None:
    ledger = NullLedger()
    owner = Owner.for_this_run()
    first = await ledger.claim(listing("/in/alice/Unit-1"), owner, 30.0)
    second = await ledger.claim(listing("/in/bob/Unit-1"), owner, 30.0)
    assert isinstance(first, ListingView) and isinstance(second, ListingView)
    assert (first.label, second.label) == ("Unit-1", "Unit-1 (bob)")
    # Fixed-size batches are numbered within the run, not all batch-1.
    assert [await ledger.next_batch(None) for _ in range(3)] == [1, 2, 3]
