"""Content checked before paying: a file whose bytes are not the image its name says, or a
JPEG or PNG cut off, fails alone, named, before its listing is ordered (and in the plan)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from styldod_batch.content import check_file, content_problem, sniff
from styldod_batch.demo import sample_png
from styldod_batch.errors import InputError
from styldod_batch.models import ImageItem
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.scan import FolderScan
from tests.helpers import stored_puts
from tests.runner_inprocess import run_main

HTML_PAGE = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>\n" * 20


def jpeg(size: int = 3000) -> bytes:
    # Entropy-coded data never holds FF D9 (an FF in it is followed by 00): nor does this.
    body = os.urandom(size).replace(b"\xff", b"\x00")
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + body + b"\xff\xd9"


PNG = sample_png(64, 48, 7)
GOOD: dict[str, bytes] = {
    "photo.jpg": jpeg(),
    "photo.png": PNG,
    "little.tif": b"II*\x00" + os.urandom(100),
    "big.tiff": b"MM\x00*" + os.urandom(100),
    "photo.webp": b"RIFF\x10\x00\x00\x00WEBPVP8 " + os.urandom(100),
    "photo.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + os.urandom(100),
    "brand.heic": b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1miafheic" + os.urandom(64),
    # A few bytes after the end marker (some cameras write them) are no truncation.
    "trailer.jpg": jpeg() + b"\x00" * 200,
}
BAD: dict[str, tuple[bytes, str]] = {
    "broken.jpg": (HTML_PAGE, "its name says JPEG, but its content is an HTML page"),
    "png-named.jpg": (PNG, "its name says JPEG, but its content is PNG"),
    "cut.jpg": (jpeg(20000)[:12000], "a JPEG cut off before its end marker (FF D9)"),
    "cut.png": (PNG[:-12], "a PNG cut off before its end marker (IEND)"),
    "noise.png": (os.urandom(500), "its name says PNG, but its content is not a known image"),
    "json.webp": (b'{"error": "expired"}', "its name says WebP, but its content is JSON text"),
    "tiny.heic": (b"\x00", "its name says HEIC, but its content is not a known image"),
}


def content_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[1]
    return {
        "jpg": "image/jpeg",
        "png": "image/png",
        "tif": "image/tiff",
        "tiff": "image/tiff",
        "webp": "image/webp",
        "heic": "image/heic",
    }[suffix]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_each_image_type_passes_by_its_magic_number(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(GOOD[name])

    assert sniff(GOOD[name][:64]) == content_type(name)
    assert check_file(str(path), path.stat().st_size, content_type(name)) is None


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_file_that_is_not_its_type_or_cut_off_is_named_with_its_reason(
    name: str, tmp_path: Path
) -> None:
    data, reason = BAD[name]
    path = tmp_path / name
    path.write_bytes(data)

    problem = check_file(str(path), len(data), content_type(name))

    assert problem is not None and problem.startswith(reason), problem


def test_only_the_head_and_the_tail_are_read() -> None:
    # A 1 GiB JPEG is judged by its first 64 and last 4096 bytes: the middle never matters.
    assert (
        content_problem(b"\xff\xd8\xff" + b"\0" * 61, b"\0" * 4094 + b"\xff\xd9", "image/jpeg")
        is None
    )
    assert content_problem(b"GIF89a", b"", "image/gif") is None, "an unknown type: the API's call"


def make_listing(root: Path) -> Path:
    listing = root / "listing-01"
    listing.mkdir(parents=True)
    for index in range(1, 4):
        (listing / f"photo-{index}.jpg").write_bytes(jpeg(2000))
    (listing / "broken.jpg").write_bytes(HTML_PAGE)
    (listing / "cut.png").write_bytes(PNG[: len(PNG) // 2])
    return listing


def test_the_scan_fails_such_a_file_alone_and_a_count_reads_no_content(tmp_path: Path) -> None:
    make_listing(tmp_path)
    scan = FolderScan([tmp_path], check_content=True)

    events = list(scan.events())

    failed = {Path(e.path).name: e.reason for e in events if isinstance(e, InputError)}
    assert failed == {
        "broken.jpg": "its name says JPEG, but its content is an HTML page",
        "cut.png": "a PNG cut off before its end marker (IEND): incomplete",
    }
    assert sorted(Path(e.path).name for e in events if isinstance(e, ImageItem)) == [
        "photo-1.jpg",
        "photo-2.jpg",
        "photo-3.jpg",
    ]
    counted = [e for e in scan.events(check_content=False) if isinstance(e, ImageItem)]
    assert len(counted) == 5, "the count walk reads names, not content"


async def test_a_broken_file_is_never_uploaded_nor_ordered_and_the_plan_says_so(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_listing(tmp_path / "photos")
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    photos = str(tmp_path / "photos")

    plan = await run_main("upload", photos, "--dry-run", "--json", env=env)
    assert len(box.log) == 0
    run = await run_main("upload", photos, "--json", env=env)

    assert plan.returncode == 1, plan.stderr
    planned = plan.json()
    assert [len(o["images"]) for o in planned["plan"]] == [3]
    assert {Path(f["path"]).name: f["error"] for f in planned["failures"]} == {
        "broken.jpg": "its name says JPEG, but its content is an HTML page",
        "cut.png": "a PNG cut off before its end marker (IEND): incomplete",
    }
    assert run.returncode == 1, run.stderr
    report = run.json()
    assert report["images"]["uploaded"] == 3 and report["images"]["failed"] == 2
    assert [o["images"] for o in report["orders"]] == [3]
    assert sorted(Path(f["path"]).name for f in report["failures"]) == ["broken.jpg", "cut.png"]
    assert len(stored_puts(box)) == 3, "the broken files were never sent"


async def test_a_manifests_broken_file_fails_alone_in_the_plan_too(tmp_path: Path) -> None:
    make_listing(tmp_path)
    manifest = tmp_path / "job.csv"
    rows = ["photo-1.jpg", "broken.jpg", "photo-2.jpg"]
    manifest.write_text(
        "path,order\n" + "".join(f"listing-01/{name},L1\n" for name in rows), encoding="utf-8"
    )

    plan = await run_main("upload", "--manifest", str(manifest), "--dry-run", "--json")

    assert plan.returncode == 1, plan.stderr
    planned = plan.json()
    assert [i["client_image_id"] for i in planned["plan"][0]["images"]] == [
        "listing-01/photo-1.jpg",
        "listing-01/photo-2.jpg",
    ]
    assert [(Path(f["path"]).name, f["error"]) for f in planned["failures"]] == [
        ("broken.jpg", "its name says JPEG, but its content is an HTML page")
    ]
