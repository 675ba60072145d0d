"""The feed stage: which source becomes which feed, folders scanned in a thread with their
listings ended, one listing listed again, and the inputs counted ahead in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from styldod_batch.models import ImageItem
from styldod_batch.pipeline.feed import (
    FolderFeed,
    ItemFeed,
    ManifestSource,
    count_ahead,
    feed_for,
)
from styldod_batch.scan import GroupEnd, ScanEvent, Skipped
from styldod_batch.settings import Settings
from tests.helpers import make_tree


async def events_of(stream: AsyncIterator[ScanEvent]) -> list[ScanEvent]:
    return [event async for event in stream]


async def test_folders_are_scanned_into_listings_each_ended(tmp_path: Path) -> None:
    make_tree(tmp_path, folders=2, files=3, size=64)
    (tmp_path / "listing-01" / "notes.txt").write_text("not an image")
    feed = feed_for([tmp_path], Settings())
    assert isinstance(feed, FolderFeed) and feed.can_relist
    events = await events_of(feed.events())
    images = [e for e in events if isinstance(e, ImageItem)]
    ends = [e for e in events if isinstance(e, GroupEnd)]
    assert len(images) == 6 and {e.group for e in ends} == {i.listing for i in images}
    assert [e.reason for e in events if isinstance(e, Skipped)]
    assert feed.count(threading.Event()) == 7  # six images and the skipped file

    one = images[0].listing
    again = await events_of(feed.relist(one))
    assert {e.client_image_id for e in again if isinstance(e, ImageItem)} == {
        i.client_image_id for i in images if i.listing == one
    }
    stopped = threading.Event()
    stopped.set()
    assert feed.count(stopped) is None


async def test_items_from_the_caller_pass_as_they_are_and_cannot_be_relisted() -> None:
    item = ImageItem("/in/a.jpg", "a.jpg", 1, 1, "image/jpeg", "h", listing="order:h")

    async def items() -> AsyncIterator[ImageItem]:
        yield item

    feed = feed_for(items(), Settings())
    assert isinstance(feed, ItemFeed) and not feed.can_relist
    assert await events_of(feed.events()) == [item]
    assert feed.count(threading.Event()) is None
    with pytest.raises(NotImplementedError):
        feed.relist("order:h")


def test_a_manifest_source_becomes_a_manifest_feed(tmp_path: Path) -> None:
    from styldod_batch.manifest import ManifestFeed

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,order\n")
    assert isinstance(feed_for(ManifestSource(manifest), Settings()), ManifestFeed)


async def test_the_count_ahead_arrives_on_the_loop_unless_stopped(tmp_path: Path) -> None:
    make_tree(tmp_path, folders=1, files=4, size=64)
    feed = feed_for([tmp_path], Settings())
    counted: asyncio.Queue[int] = asyncio.Queue()
    count_ahead(feed, counted.put_nowait)
    assert await asyncio.wait_for(counted.get(), 1) == 4

    class Slow(ItemFeed):
        def count(self, stop: threading.Event) -> int | None:
            stop.wait(1)
            return 99

    async def nothing() -> AsyncIterator[ImageItem]:
        return
        yield

    late: list[int] = []
    count_ahead(Slow(nothing()), late.append).set()  # stopped before it is done
    await asyncio.sleep(0.05)
    assert late == []
