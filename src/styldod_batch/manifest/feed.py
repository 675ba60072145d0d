"""A manifest as a run's input: staged once (in a thread), then taken back by listing."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from styldod_batch.manifest.staging import StagedManifest, stage_manifest
from styldod_batch.scan import ScanEvent, content_checked


class ManifestFeed:
    """A manifest as a run's input: staged once (in a thread), then taken back by listing."""

    can_relist = True

    def __init__(
        self, path: Path, *, staged: StagedManifest | None = None, check_content: bool = False
    ) -> None:
        self.path = path
        self._staged = staged
        self._owned = staged is None
        # Each image's head and tail read in the feed's thread (``scan.content_checked``).
        self._check = content_checked if check_content else iter

    def events(self) -> AsyncIterator[ScanEvent]:
        from styldod_batch.scan_thread import threaded

        def generate() -> Iterator[ScanEvent]:
            if self._staged is None:
                self._staged = stage_manifest(self.path)
            yield from self._check(self._staged.events())

        return threaded(generate)

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        from styldod_batch.scan_thread import threaded

        assert self._staged is not None
        staged = self._staged
        return threaded(lambda: self._check(staged.listing_events(listing)))

    def count(self, stop: threading.Event) -> int | None:
        # Staged already (by the runner): its rows; else the run stages it, and learns then.
        return self._staged.rows if self._staged is not None else None

    def close(self) -> None:
        if self._owned and self._staged is not None:
            self._staged.close()
            self._staged = None
