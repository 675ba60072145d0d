"""The ledger: exactly-once orders by what an image is, however the job is run.

Each test is one way a real job is run (late photos, a subset, another working folder, the
library, two processes, a lost answer...), over real sockets against the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import styldod_batch
from styldod_batch import Settings, Uploader
from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import RetryPolicy
from tests.helpers import (
    REPO,
    Ran,
    assert_each_file_in_one_order,
    assert_one_key_per_order,
    image_bytes,
    json_report,
    make_tree,
    run_cli,
    run_cli_process,
)


def env_for(box: Sandbox, **extra: str) -> dict[str, str]:
    return {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url, **extra}


async def upload(box: Sandbox, *args: str | Path, cwd: Path | None = None) -> Ran:
    """``upload ARGS``: in this process, or in a process of its own started in ``cwd``."""
    argv = ("upload", *map(str, args), "--json", "--no-progress")
    if cwd is None:
        return await asyncio.to_thread(run_cli, *argv, env=env_for(box))
    return await asyncio.to_thread(run_cli_process, *argv, env=env_for(box), cwd=cwd)


def order_names(box: Sandbox) -> list[str]:
    assert box.api is not None
    return sorted(o.order_name or "" for o in box.api.orders.values())


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg") if p.is_file())


# -- 1. late photos ------------------------------------------------------------------------


async def test_a_late_photo_goes_into_a_named_follow_up_order(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=2, files=3, size=700)
    box = await sandbox_factory(rps=1000)
    first = await upload(box, photos)
    assert first.returncode == 0, first.stderr

    (photos / "listing-01" / "photo-9.jpg").write_bytes(image_bytes(900))
    again = await upload(box, photos)

    assert again.returncode == 0, again.stderr
    report = json_report(again)
    assert report["images"]["uploaded"] == 1 and report["images"]["already_done"] == 6
    follow_up = [o for o in report["orders"] if o["follow_up"]]
    assert [(o["key"], o["images"], o["listing"]) for o in follow_up] == [
        ("listing-01 (2)", 1, "listing-01")
    ]
    assert order_names(box) == ["listing-01", "listing-01 (2)", "listing-02"]
    await assert_each_file_in_one_order(box, files_of(photos))
    assert_one_key_per_order(box)
    summary = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--no-progress", env=env_for(box)
    )
    assert "listing-01 (2)" in summary.stdout and "follow-up" in summary.stdout


async def test_without_follow_ups_late_photos_are_named_not_ordered(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=2, files=3, size=700)
    box = await sandbox_factory(rps=1000)
    assert (await upload(box, photos)).returncode == 0
    late = photos / "listing-02" / "photo-7.jpg"
    late.write_bytes(image_bytes(800))

    completed = await upload(box, photos, "--no-follow-up")

    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert report["images"]["late"] == 1
    assert report["late"] == [
        {"path": str(late), "client_image_id": "photo-7.jpg", "listing": "listing-02"}
    ]
    assert order_names(box) == ["listing-01", "listing-02"]
    text = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--no-follow-up", "--no-progress", env=env_for(box)
    )
    assert str(late) in text.stdout and "not ordered" in text.stdout
    status = orjson.loads(
        (await asyncio.to_thread(run_cli, "status", "--json", env=env_for(box))).stdout
    )
    (listing,) = [entry for entry in status["listings"] if entry["name"] == "listing-02"]
    assert listing["late"] == [str(late)]

    # Turned back on, the late photo goes into a follow-up order.
    assert (await upload(box, photos)).returncode == 0
    assert order_names(box) == ["listing-01", "listing-02", "listing-02 (2)"]
    await assert_each_file_in_one_order(box, files_of(photos))


async def test_a_changed_photo_is_reported_and_reordered_only_when_asked(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=1, files=3, size=700)
    box = await sandbox_factory(rps=1000)
    assert (await upload(box, photos)).returncode == 0
    touched = photos / "listing-01" / "photo-1.jpg"
    os.utime(touched, ns=(1, 1))  # a new time, the same bytes: not a change
    edited = photos / "listing-01" / "photo-2.jpg"
    edited.write_bytes(image_bytes(700))

    completed = await upload(box, photos)

    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert report["changed"] == [
        {"path": str(edited), "client_image_id": "photo-2.jpg", "order": "listing-01"}
    ]
    assert report["images"]["already_done"] == 2 and report["images"]["uploaded"] == 0
    assert order_names(box) == ["listing-01"]
    puts_before = len(box.log.select(kind="storage", method="PUT"))

    reordered = await upload(box, photos, "--reorder-changed")

    assert reordered.returncode == 0, reordered.stderr
    assert json_report(reordered)["images"]["uploaded"] == 1
    assert len(box.log.select(kind="storage", method="PUT")) == puts_before + 1
    assert order_names(box) == ["listing-01", "listing-01 (2)"]
    assert box.api is not None
    (second,) = [o for o in box.api.orders.values() if o.order_name == "listing-01 (2)"]
    assert [i.client_image_id for i in second.images] == ["photo-2.jpg"]


# -- 2. subsets and working folders ---------------------------------------------------------


async def test_a_subset_or_another_working_folder_never_orders_twice(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=3, files=3, size=600)
    box = await sandbox_factory(rps=1000)
    assert (await upload(box, photos)).returncode == 0
    requests = len(box.log)

    subset = await upload(box, photos / "listing-01")
    from_inside = await upload(box, ".", cwd=photos / "listing-02")
    from_above = await upload(box, "photos/listing-03", "photos", cwd=tmp_path)

    for completed in (subset, from_inside, from_above):
        assert completed.returncode == 0, completed.stderr
        assert json_report(completed)["images"]["uploaded"] == 0
    assert box.log.entries[requests:] == [], "a re-run of done work sends nothing"
    assert order_names(box) == ["listing-01", "listing-02", "listing-03"]
    await assert_each_file_in_one_order(box, files_of(photos))


# -- 3. the library ----------------------------------------------------------------------------


async def test_the_library_keeps_the_ledger_unless_told_not_to(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=2, files=4, size=500)
    box = await sandbox_factory(rps=1000)

    def call(**changes: Any) -> styldod_batch.Report:
        return styldod_batch.upload([photos], base_url=box.base_url, api_key=box.api_key, **changes)

    first = await asyncio.to_thread(call)
    second = await asyncio.to_thread(call)

    assert (first.uploaded, second.uploaded, second.already_done) == (8, 0, 8)
    assert order_names(box) == ["listing-01", "listing-02"]
    async with Uploader(Settings(base_url=box.base_url, api_key=box.api_key)) as up:
        third = await up.run([photos / "listing-02"])
    assert third.already_done == 4 and order_names(box) == ["listing-01", "listing-02"]

    # Opting out is explicit, and gives exactly-once up.
    await asyncio.to_thread(call, ledger=False)
    assert order_names(box) == ["listing-01", "listing-01", "listing-02", "listing-02"]


# -- 4. processes at once ----------------------------------------------------------------------


def start(box: Sandbox, *args: str | Path, state: Path | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLDOD_")}
    env.update(env_for(box))
    if state is not None:
        env["STYLDOD_STATE"] = str(state)
    return subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", "upload", *map(str, args), "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def overlapping_runs(
    box: Sandbox, photos: Path, listings: list[Path], state: Path
) -> list[tuple[int, str]]:
    """Four processes started together: the whole tree, two overlapping subsets, one
    listing."""
    half = len(listings) // 2
    inputs: list[list[Path]] = [
        [photos],
        listings[: half + 1],
        listings[half - 1 :],
        [listings[half]],
    ]
    processes = [start(box, *paths, state=state) for paths in inputs]
    outcomes = []
    for process in processes:
        _out, err = await asyncio.to_thread(process.communicate, timeout=240)
        outcomes.append((process.returncode, err))
    return outcomes


async def test_two_processes_on_one_job_order_each_listing_once(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=6, files=8, size=400)
    for listing in ("listing-02", "listing-05"):
        (photos / listing / "notes.txt").write_text("not an image")
    box = await sandbox_factory(rps=1000)
    state = tmp_path / "state"

    processes = [start(box, photos, state=state) for _ in range(2)]
    for process in processes:
        out, err = await asyncio.to_thread(process.communicate, timeout=240)
        assert process.returncode == 0, err
        # Each saw the whole tree once: a listing it waited for is not counted twice.
        images = orjson.loads(out)["images"]
        assert (images["total"], images["skipped"]) == (50, 2), images
        assert images["uploaded"] + images["already_done"] == 48

    assert len(order_names(box)) == 6
    await assert_each_file_in_one_order(box, files_of(photos))
    assert_one_key_per_order(box)


@pytest.mark.slow
async def test_four_overlapping_processes_six_times_each_image_in_one_order(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=8, files=6, size=300)
    listings = sorted({f.parent for f in files_of(photos)})
    # Six rounds of the race; the claims' atomicity itself is in the contract suite, on both
    # backends, in one process.
    for trial in range(6):
        box = await sandbox_factory(rps=1000)
        outcomes = await overlapping_runs(box, photos, listings, tmp_path / f"state-{trial}")
        for code, err in outcomes:
            assert code == 0, f"trial {trial}: {err}"
            assert "Traceback" not in err
        assert len(order_names(box)) == 8, f"trial {trial}: {order_names(box)}"
        await assert_each_file_in_one_order(box, files_of(photos))
        assert_one_key_per_order(box)


# -- 5. one key per order -----------------------------------------------------------------------


async def test_an_order_whose_answer_was_lost_is_asked_again_under_its_own_key(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=1, files=3, size=500)
    box = await sandbox_factory(rps=1000)
    box.faults.order_answer_lost = 1.0
    settings = Settings(
        base_url=box.base_url,
        api_key=box.api_key,
        retry=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.02),
    )

    async with Uploader(settings) as up:
        first = await up.run([photos])
    (order,) = first.orders
    assert order.status == "failed" and "outcome unknown" in (order.error or "")
    assert len(order_names(box)) == 1, "the service did create it"
    async with Uploader(settings) as up:
        second = await up.run([photos])  # still lost: asked again, the same key
    assert second.orders[0].status == "failed"

    box.faults.order_answer_lost = 0.0
    async with Uploader(settings) as up:
        third = await up.run([photos])

    (settled,) = third.orders
    assert settled.status == "created" and settled.replayed
    assert order_names(box) == ["listing-01"]
    keys = {
        e.idempotency_key for e in box.log.select(kind="api", method="POST", path_prefix="/v2/or")
    }
    assert keys == {order.idempotency_key}
    async with Uploader(settings) as up:
        fourth = await up.run([photos])
    assert fourth.already_done == 3 and fourth.orders[0].order_id == settled.order_id


async def test_a_declined_order_gets_a_new_key_on_the_next_run(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    from styldod_batch.sandbox import KeyConfig

    photos = tmp_path / "photos"
    make_tree(photos, folders=1, files=3, size=500)
    box = await sandbox_factory(rps=1000, keys={"sandbox-key": KeyConfig(credit_images=1)})
    settings = Settings(base_url=box.base_url, api_key=box.api_key)

    async with Uploader(settings) as up:
        declined = await up.run([photos])
    assert declined.orders[0].status == "failed" and "402" in (declined.orders[0].error or "")
    assert box.api is not None
    box.api.keys[box.api_key].credit_images = None
    async with Uploader(settings) as up:
        accepted = await up.run([photos])

    assert accepted.orders[0].status == "created"
    assert accepted.already_done == 3, "the uploads were kept"
    assert accepted.orders[0].idempotency_key != declined.orders[0].idempotency_key
    assert order_names(box) == ["listing-01 (2)"]


# -- 6. names ------------------------------------------------------------------------------


async def test_names_come_from_the_listing_folder_alone(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "12 Oak St").mkdir(parents=True)
    (photos / "12 Oak St" / "IMG_1.jpg").write_bytes(image_bytes(300))
    (photos / "Maple Ave 7" / "drone").mkdir(parents=True)
    (photos / "Maple Ave 7" / "front.jpg").write_bytes(image_bytes(300))
    (photos / "Maple Ave 7" / "drone" / "aerial1.jpg").write_bytes(image_bytes(300))
    other = tmp_path / "elsewhere" / "12 Oak St"  # another folder of the same name
    other.mkdir(parents=True)
    (other / "IMG_1.jpg").write_bytes(image_bytes(300))
    box = await sandbox_factory(rps=1000)

    # Overlapping inputs, the same folder twice, a folder of the same name elsewhere.
    completed = await upload(
        box, photos, photos / "12 Oak St", photos / "12 Oak St", photos / "Maple Ave 7", other
    )

    assert completed.returncode == 0, completed.stderr
    assert json_report(completed)["failures"] == []
    assert box.api is not None
    served = sorted(
        (o.order_name or "", sorted(i.client_image_id for i in o.images))
        for o in box.api.orders.values()
    )
    assert served == [  # the second "12 Oak St" is told apart by the folder above it
        ("12 Oak St", ["IMG_1.jpg"]),
        ("12 Oak St (elsewhere)", ["IMG_1.jpg"]),
        ("Maple Ave 7", ["front.jpg"]),
        ("drone", ["aerial1.jpg"]),
    ]
    out = tmp_path / "out"
    downloaded = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--wait", "--download", str(out), "--json",
        env=env_for(box),
    )  # fmt: skip
    assert downloaded.returncode == 0, downloaded.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["12 Oak St/IMG_1.jpg", "Maple Ave 7/front.jpg", "drone/aerial1.jpg"]


# -- 7. dry run and job identity ----------------------------------------------------------------


async def test_a_dry_run_reads_the_ledger(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=2, files=3, size=500)
    box = await sandbox_factory(rps=1000)
    assert (await upload(box, photos)).returncode == 0
    (photos / "listing-02" / "photo-8.jpg").write_bytes(image_bytes(600))
    requests = len(box.log)

    planned = await upload(box, photos, "--dry-run")

    assert planned.returncode == 0, planned.stderr
    body = orjson.loads(planned.stdout)
    assert [(p["order"], p["follow_up"], [i["client_image_id"] for i in p["images"]])
            for p in body["plan"]] == [("listing-02 (2)", True, ["photo-8.jpg"])]  # fmt: skip
    assert body["images"]["already_done"] == 6 and body["images"]["planned"] == 1
    assert len(box.log) == requests, "a dry run sends nothing"
    text = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--dry-run", "--no-progress", env=env_for(box)
    )
    assert "order listing-02 (2): 1 images" in text.stdout
    assert "Already done by an earlier run: 6 images, 2 orders" in text.stdout


async def test_another_listen_port_is_the_same_job(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=2, files=2, size=500)
    box = await sandbox_factory(rps=1000)

    first = await upload(box, photos, "--listen", "127.0.0.1:0", "--wait-timeout", "60")
    photo = photos / "listing-01" / "photo-5.jpg"
    photo.write_bytes(image_bytes(500))
    second = await upload(box, photos, "--listen", "127.0.0.1:0", "--wait-timeout", "60")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert order_names(box) == ["listing-01", "listing-01 (2)", "listing-02"]
    assert json_report(second)["images"]["already_done"] == 4


# -- 8. permissions ------------------------------------------------------------------------


async def test_the_ledger_is_private_and_lives_in_the_state_folder(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=1, files=2, size=500)
    box = await sandbox_factory(rps=1000)
    state_home = Path(os.environ["XDG_STATE_HOME"])

    completed = await upload(box, photos, "--webhook-url", "https://hooks.example/t/SECRET")

    assert completed.returncode == 0, completed.stderr
    folder = state_home / "styldod-batch"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert files and any(f.suffix == ".sqlite" for f in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in files:
        assert box.api_key.encode() not in path.read_bytes()
    assert not (tmp_path / ".styldod-batch").exists()

    # --state chooses another place; --journal is another name for it.
    elsewhere = tmp_path / "ledgers" / "mine.sqlite"
    again = await upload(box, photos, "--journal", elsewhere)
    assert again.returncode == 0, again.stderr
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    assert stat.S_IMODE(elsewhere.parent.stat().st_mode) == 0o700
    assert json_report(again)["images"]["uploaded"] == 2, "a new ledger knows nothing"
