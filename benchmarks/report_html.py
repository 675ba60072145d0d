"""What the morning review costs on a large night: 30,000 images in 300 listings.

    python -m benchmarks.report_html [--images 30000] [--keep DIR]

It makes tiny JPEG originals and edited outputs (distinct bytes, so 60,000 thumbnails), a
ledger holding them through the ledger's public write methods (listings claimed, images
recorded, one order per listing written ahead, created, completed, its outputs recorded;
a few failed, late and changed images), and a run log of a paced 20/s run (synthetic: the
per-second counts such a run records). Then it runs ``styldod-batch report --html`` twice
in a child process each: the first makes every thumbnail, the second finds them cached.
Wall time and peak RSS (the child's ``ru_maxrss``) of each run go to
``benchmarks/results/report_html.json`` and on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from hashlib import md5
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.ledger import (
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    Owner,
    open_ledger,
)
from styldod_batch.review.runlog import RUNS_SUFFIX
from styldod_batch.settings import Settings

PER_LISTING = 100
BASE_URL = "http://127.0.0.1:9"
API_KEY = "bench-report-key"
RESULTS = Path(__file__).parent / "results" / "report_html.json"


def _jpeg(seed: int, tint: int) -> bytes:
    from io import BytesIO

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 72), ((seed * 37) % 256, (seed * 91) % 256, tint))
    draw = ImageDraw.Draw(image)
    draw.rectangle((seed % 40, 10, seed % 40 + 40, 50), fill=(tint, (seed * 13) % 256, 200))
    # The seed in the corner blocks: every image's content (and thumbnail) is its own.
    for bit in range(16):
        shade = 255 if seed >> bit & 1 else 0
        draw.rectangle((bit * 6, 64, bit * 6 + 5, 71), fill=(shade, shade, shade))
    out = BytesIO()
    image.save(out, "JPEG", quality=70)
    return out.getvalue()


def make_files(root: Path, images: int) -> list[tuple[int, Path, Path]]:
    """Originals in ``photos/listing-NNN/`` and their outputs in ``edited/listing-NNN/``."""
    jobs = []
    for n in range(images):
        listing = f"listing-{n // PER_LISTING + 1:03d}"
        name = f"photo-{n % PER_LISTING + 1:03d}.jpg"
        jobs.append((n, root / "photos" / listing / name, root / "edited" / listing / name))
    for folder in {p.parent for _, a, b in jobs for p in (a, b)}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(job: tuple[int, Path, Path]) -> None:
        n, original, output = job
        original.write_bytes(_jpeg(n, 40))
        output.write_bytes(_jpeg(n, 220))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, jobs))
    return jobs


async def make_ledger(state: Path, jobs: list[tuple[int, Path, Path]]) -> Path:
    settings = Settings(base_url=BASE_URL, api_key=API_KEY, state=state)
    ledger = await open_ledger(settings)
    owner = Owner.for_this_run()
    try:
        by_listing: dict[Path, list[tuple[int, Path, Path]]] = {}
        for job in jobs:
            by_listing.setdefault(job[1].parent, []).append(job)
        for number, (folder, items) in enumerate(sorted(by_listing.items()), start=1):
            view = await ledger.claim(Listing(f"folder:{folder}", folder.name), owner, 600)
            assert isinstance(view, ListingView) and view.listing_id is not None
            listing_id = view.listing_id
            ordered: list[OrderItem] = []
            for n, original, _output in items:
                stat = original.stat()
                digest = md5(original.read_bytes(), usedforsecurity=False).hexdigest()
                failed = n % 3001 == 7
                record = ImageRecord(
                    original.name,
                    str(original),
                    stat.st_size,
                    stat.st_mtime_ns,
                    None if failed else digest,
                    None if failed else f"{BASE_URL}/bucket/{digest}",
                    "failed" if failed else "uploaded",
                )
                ledger.record_image(
                    listing_id, record, error="storage answered 403" if failed else None
                )
                if not failed:
                    ordered.append(OrderItem(listing_id, original.name, digest, str(original)))
            body = orjson.dumps(
                {
                    "order_name": folder.name,
                    "image_list": [{"client_image_id": i.client_image_id} for i in ordered],
                }
            )
            ref = await ledger.write_order_ahead(
                owner, OrderDraft(listing_id, 1, 1, folder.name, body, f"key-{number}", ordered)
            )
            order_id = str(1_800_000_000_000 + number)
            ledger.settle_order(ref, OrderOutcome("created", order_id, "pre_processing"))
            outputs = [
                {
                    "client_image_id": i.client_image_id,
                    "image_status": "completed",
                    "output_url": f"{BASE_URL}/outputs/{order_id}/{i.client_image_id}",
                }
                for i in ordered
            ]
            ledger.record_progress(order_id, "completed", outputs)
            for n, original, output in items:
                if n % 3001 != 7:
                    data = output.read_bytes()
                    ledger.record_output(
                        order_id,
                        original.name,
                        str(output),
                        len(data),
                        md5(data, usedforsecurity=False).hexdigest(),
                    )
            await ledger.release(owner, listing_id)
        await ledger.flush()
        return Path(ledger.location)
    finally:
        await ledger.close()


def write_run_log(ledger_file: Path, images: int) -> None:
    """A paced run as the recorder writes it: 20 requests a second (19 PUTs, 1 API call)."""
    log = ledger_file.with_name(ledger_file.name.removesuffix(".sqlite") + RUNS_SUFFIX)
    start = time.time() - images / 19 - 60
    lines = [{"run": "20261206T010000Z-bench0", "start": start, "rps": 20.0}]
    ticks = []
    left = images
    second = 0
    while left > 0:
        second += 1
        files = min(19, left)
        left -= files
        ticks.append([second * 1000, 1, files, 0, files, files * 1500])
    lines.append({"run": "20261206T010000Z-bench0", "ticks": ticks})
    lines.append({"run": "20261206T010000Z-bench0", "end": start + second + 1})
    log.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def report_once(ledger_file: Path, page: Path) -> dict[str, Any]:
    """One ``styldod-batch report --html`` in a child process: wall time and peak RSS."""
    started = time.monotonic()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "styldod_batch",
            "report",
            "--html",
            str(page),
            "--state",
            str(ledger_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    out = child.stdout.read() if child.stdout else ""
    assert os.waitstatus_to_exitcode(status) == 0, out
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "said": out.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="styldod-report-bench-"))
    try:
        began = time.monotonic()
        jobs = make_files(root, args.images)
        made_files = time.monotonic() - began
        ledger_file = asyncio.run(make_ledger(root / "state", jobs))
        write_run_log(ledger_file, args.images)
        print(
            f"{args.images} images and outputs in {made_files:.1f} s, ledger in "
            f"{time.monotonic() - began - made_files:.1f} s",
            flush=True,
        )
        page = root / "review" / "index.html"
        first = report_once(ledger_file, page)
        print("first run (makes every thumbnail):", first, flush=True)
        second = report_once(ledger_file, page)
        print("second run (thumbnails cached):  ", second, flush=True)
        result = {
            "images": args.images,
            "listings": -(-args.images // PER_LISTING),
            "page_mb": round(page.stat().st_size / 1e6, 1),
            "thumbnails": sum(1 for _ in (root / "review" / "index_files").iterdir()),
            "cpus": os.cpu_count(),
            "first": first,
            "second": second,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
