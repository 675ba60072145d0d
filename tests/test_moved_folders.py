"""A moved folder is not a new listing to pay for: an image whose very content a live order
of the account holds is never ordered again silently, a folder that is wholly an ordered
listing is reported as that listing, moved, and ``--reorder-moved`` orders it again. The
dry run says the same as the run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from styldod_batch.ledger.records import PlacedCopy
from styldod_batch.models import ImageItem
from styldod_batch.pipeline.route import moved_result
from styldod_batch.report import Report
from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import image_bytes
from tests.runner_inprocess import Completed, run_main


def photos(folder: Path, *sizes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, size in enumerate(sizes, 1):
        (folder / f"img{index}.jpg").write_bytes(image_bytes(size))


async def upload(box: Sandbox, state: Path, *args: str) -> Completed:
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    return await run_main("upload", *args, "--state", str(state), "--json", env=env)


def order_names(box: Sandbox) -> list[str]:
    assert box.api is not None
    return sorted(order.order_name or "" for order in box.api.orders.values())


def moved_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((Path(m["path"]).name, m["same_as"]) for m in body["moved"])


async def test_a_moved_folder_is_reported_as_its_listing_and_never_ordered_again(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    box = await sandbox_factory(rps=1000)
    state = tmp_path / "ledger.sqlite"
    photos(tmp_path / "drive1" / "Unit-1", 600, 700, 800)
    photos(tmp_path / "drive1" / "Unit-2", 900)
    first = await upload(box, state, str(tmp_path / "drive1"))
    assert first.returncode == 0, first.stderr
    assert order_names(box) == ["Unit-1", "Unit-2"]

    (tmp_path / "drive1").rename(tmp_path / "drive2")  # mv drive1 drive2
    # A third listing beside them: one copied image, one new one.
    photos(tmp_path / "drive2" / "Unit-3", 1000)
    shutil.copy(
        tmp_path / "drive2" / "Unit-2" / "img1.jpg", tmp_path / "drive2" / "Unit-3" / "x.jpg"
    )

    plan = await upload(box, state, str(tmp_path / "drive2"), "--dry-run")
    run = await upload(box, state, str(tmp_path / "drive2"))

    assert run.returncode == 0, run.stderr
    body = run.json()
    # Only Unit-3's new image was ordered: the moved listings and the copy were not.
    assert order_names(box) == ["Unit-1", "Unit-2", "Unit-3"]
    assert box.api is not None
    unit3 = [o for o in box.api.orders.values() if o.order_name == "Unit-3"]
    assert [i.client_image_id for i in unit3[0].images] == ["img1.jpg"]
    assert body["images"]["moved"] == 5 and body["images"]["uploaded"] == 1
    assert moved_of(body) == [
        ("img1.jpg", "Unit-1/img1.jpg"),
        ("img1.jpg", "Unit-2/img1.jpg"),
        ("img2.jpg", "Unit-1/img2.jpg"),
        ("img3.jpg", "Unit-1/img3.jpg"),
        ("x.jpg", "Unit-2/img1.jpg"),
    ]
    # The folders that are an ordered listing whole are said to be that listing, moved.
    listings = [
        (Path(m["listing"]).name, m["same_as"], m["images"]) for m in body["moved_listings"]
    ]
    assert listings == [("Unit-1", "Unit-1", 3), ("Unit-2", "Unit-2", 1)]
    assert plan.returncode == 0, plan.stderr
    assert moved_of(plan.json()) == moved_of(body), "the dry run says what the run does"
    assert plan.json()["images"]["planned"] == 1

    human = await run_main(
        "upload",
        str(tmp_path / "drive2"),
        "--state",
        str(state),
        env={"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url},
    )
    assert human.returncode == 0, human.stderr
    assert "the listing Unit-1, moved (3 images)" in human.stdout + human.stderr
    assert "--reorder-moved" in human.stdout + human.stderr

    # Ordering the same content again takes a flag, and it is a listing of its own then.
    again = await upload(box, state, str(tmp_path / "drive2" / "Unit-1"), "--reorder-moved")
    assert again.returncode == 0, again.stderr
    assert order_names(box) == ["Unit-1", "Unit-1 (drive2)", "Unit-2", "Unit-3"]


def test_a_client_image_id_with_a_slash_keeps_its_listing_whole() -> None:
    """The moved listing is the copies' own label, never read back out of "label/ID": a
    manifest's client image IDs may hold a "/" ("rooms/kitchen.jpg")."""
    report = Report()
    for name, client_image_id in (("a.jpg", "rooms/kitchen.jpg"), ("b.jpg", "rooms/bath.jpg")):
        copy = PlacedCopy("Unit-9", client_image_id, "Unit-9", f"/old/Unit-9/{name}")
        item = ImageItem(f"/new/Unit-9/{name}", client_image_id, 10, 1, "image/jpeg", "Unit-9")
        report.add_image(moved_result(item, copy))
    assert report.moved_listings() == [{"listing": "/new/Unit-9", "same_as": "Unit-9", "images": 2}]
    assert [m["same_as"] for m in report.moved] == [
        "Unit-9/rooms/kitchen.jpg",
        "Unit-9/rooms/bath.jpg",
    ]
