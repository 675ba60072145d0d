"""The morning review: a page of the account's orders, each image's original beside its
edited output, and a picture of each run, written from the ledger for people who would
rather look than read.

``write_review(settings, "review.html")`` writes the page and its thumbnails (in
``review_files/`` beside it); ``RunRecorder`` records a run's timeline for the page's charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from styldod_batch.ledger import open_ledger
from styldod_batch.review.model import IMAGE_STATES, ReviewFilter, read_review
from styldod_batch.review.page import OPEN_UP_TO, PageWriter
from styldod_batch.review.runlog import RunRecorder, read_runs, run_log_path
from styldod_batch.review.thumbs import make_thumbnails
from styldod_batch.settings import Settings

__all__ = [
    "IMAGE_STATES",
    "ReviewFilter",
    "ReviewWritten",
    "RunRecorder",
    "run_log_path",
    "thumbs_folder",
    "write_review",
]


# Beside the thumbnails: where the ledger said each output was saved (it never changes once
# recorded), so a second report need not ask again for each of 30,000 images.
OUTPUTS_INDEX = "outputs.json"


@dataclass(frozen=True, slots=True)
class ReviewWritten:
    path: Path
    listings: int
    orders: int
    images: int
    thumbnails: int
    thumbnails_made: int
    elapsed_s: float

    def summary(self) -> str:
        return (
            f"Review page: {self.path} ({self.listings} listings, {self.orders} orders, "
            f"{self.images} images; {self.thumbnails_made} of {self.thumbnails} thumbnails "
            f"made, the rest cached; {self.elapsed_s:.1f} s)"
        )


def thumbs_folder(page: Path) -> Path:
    """Where a page's thumbnails go: ``<page name>_files/`` beside it."""
    return page.with_name(page.stem + "_files")


async def write_review(
    settings: Settings,
    page: str | os.PathLike[str],
    filters: ReviewFilter | None = None,
    *,
    open_up_to: int = OPEN_UP_TO,
) -> ReviewWritten:
    """Write the review page of ``settings``' account (its ledger, read only) to ``page``.

    Its sections start open when it holds at most ``open_up_to`` images; else only the
    listings with problems do, and the others' pictures load when they are opened."""
    started = time.monotonic()
    page = _page_path(Path(page))
    filters = filters or ReviewFilter()
    runs = await asyncio.to_thread(read_runs, run_log_path(settings))
    folder = thumbs_folder(page)
    known = await asyncio.to_thread(_read_index, folder / OUTPUTS_INDEX)
    ledger = await open_ledger(settings, read_only=True)
    try:
        review = await read_review(ledger, runs, filters, now=time.time(), known_outputs=known)
    finally:
        await ledger.close()
    thumbs, made = await asyncio.to_thread(make_thumbnails, folder, review.wanted_thumbnails())
    review.attach(thumbs)
    await asyncio.to_thread(_write_index, folder / OUTPUTS_INDEX, known)
    writer = PageWriter(review, quote(folder.name), open_up_to=open_up_to)
    await asyncio.to_thread(_write_page, writer, page)
    return ReviewWritten(
        path=page,
        listings=len(review.listings),
        orders=sum(len(s.orders) for s in review.listings),
        images=sum(len(s.images) for s in review.listings),
        thumbnails=len(thumbs),
        thumbnails_made=made,
        elapsed_s=time.monotonic() - started,
    )


def _read_index(path: Path) -> dict[str, list[Any]]:
    try:
        index = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return index if isinstance(index, dict) else {}


def _write_index(path: Path, index: dict[str, list[Any]]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    with contextlib.suppress(OSError):
        partial.write_bytes(orjson.dumps(index))
        os.replace(partial, path)


def _page_path(page: Path) -> Path:
    page = page.absolute()
    return page / "review.html" if page.is_dir() else page


def _write_page(writer: PageWriter, page: Path) -> None:
    """Written whole, then moved into place: a reader never sees half a page."""
    page.parent.mkdir(parents=True, exist_ok=True)
    partial = page.with_name(f".{page.name}.{os.getpid()}.part")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            buffer: list[str] = []
            size = 0
            for chunk in writer.chunks():
                buffer.append(chunk)
                size += len(chunk)
                if size > 1 << 20:
                    out.write("".join(buffer))
                    buffer, size = [], 0
            out.write("".join(buffer))
        os.replace(partial, page)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
