"""A run's input: folders (scanned in a thread, ``scan_thread.py``), a manifest, or items
from the caller; and the count of the inputs, worked out ahead in a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from styldod_batch.models import ImageItem
from styldod_batch.scan import FolderScan, GroupEnd, ScanEvent
from styldod_batch.scan_thread import threaded
from styldod_batch.settings import Settings

if TYPE_CHECKING:
    from styldod_batch.manifest import StagedManifest


@dataclass(frozen=True, slots=True)
class ManifestSource:
    """Run on a manifest (CSV or JSON Lines) instead of folders. ``staged``: the manifest as
    ``stage_manifest`` read it already (the caller closes it); else the run reads it."""

    path: Path
    staged: StagedManifest | None = field(default=None, compare=False)


Source = Sequence[str | os.PathLike[str]] | AsyncIterable[ImageItem] | ManifestSource


class Feed(Protocol):
    """A run's input: its scan events, and (when ``can_relist``) one listing's events again."""

    can_relist: bool

    def events(self) -> AsyncIterator[ScanEvent]: ...

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]: ...

    def count(self, stop: threading.Event) -> int | None:
        """How many events (other than ``GroupEnd``) ``events()`` yields, worked out apart
        from them (blocking; None when it cannot be known ahead)."""

    def close(self) -> None: ...


class FolderFeed:
    can_relist = True

    def __init__(self, scan: FolderScan) -> None:
        self.scan = scan

    def events(self) -> AsyncIterator[ScanEvent]:
        return threaded(self.scan.events)

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        return threaded(lambda: self.scan.relist(listing))

    def count(self, stop: threading.Event) -> int | None:
        # A walk of its own, so the total is known long before the uploads reach the end.
        found = 0
        for event in self.scan.events(check_content=False):  # names suffice to count
            if stop.is_set():
                return None
            found += not isinstance(event, GroupEnd)
        return found

    def close(self) -> None:
        return None


class ItemFeed:
    """Items from the caller: they cannot be listed again, so a listing another run holds is
    waited for where it is met."""

    can_relist = False

    def __init__(self, items: AsyncIterable[ImageItem]) -> None:
        self.items = items

    async def events(self) -> AsyncIterator[ScanEvent]:
        async for item in self.items:
            yield item

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        raise NotImplementedError("items from the caller cannot be listed again")

    def count(self, stop: threading.Event) -> int | None:
        return None

    def close(self) -> None:
        return None


def feed_for(source: Source, settings: Settings) -> Feed:
    if isinstance(source, ManifestSource):
        from styldod_batch.manifest import ManifestFeed

        return ManifestFeed(source.path, staged=source.staged, check_content=settings.check_content)
    if isinstance(source, AsyncIterable):
        return ItemFeed(source)
    return FolderFeed(
        FolderScan(
            source,
            follow_symlinks=settings.follow_symlinks,
            check_content=settings.check_content,
        )
    )


def count_ahead(feed: Feed, found: Callable[[int], None]) -> threading.Event:
    """Count the inputs in a thread of their own, and hand the count to ``found`` on the
    event loop; returns the event that stops it. A daemon thread: a run never waits for it."""
    stop = threading.Event()
    loop = asyncio.get_running_loop()

    def settle(count: int | None) -> None:
        if count is not None and not stop.is_set():
            found(count)

    def count() -> None:
        with contextlib.suppress(Exception):  # a count is a nicety: the run does not need it
            counted = feed.count(stop)
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(settle, counted)

    threading.Thread(target=count, name="styldod-count", daemon=True).start()
    return stop
