"""The scan thread: a blocking walk of folders or a manifest, run in a thread and handed to
the event loop in batches behind a bounded queue, so a slow disk never blocks the loop and a
huge tree never becomes a huge list."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable

from styldod_batch.scan import ScanEvent

SCAN_BATCH = 256
_DONE = object()
_EMPTY = object()


async def threaded(make: Callable[[], Iterable[ScanEvent]]) -> AsyncIterator[ScanEvent]:
    """Run a blocking generator in a thread, in batches, behind a bounded queue."""
    batches: queue.Queue[list[ScanEvent] | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(value: list[ScanEvent] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                batches.put(value, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        batch: list[ScanEvent] = []
        try:
            for event in make():
                batch.append(event)
                if len(batch) >= SCAN_BATCH:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(None)
        except BaseException as exc:  # handed to the event loop, which re-raises it
            put(exc)

    def take() -> list[ScanEvent] | BaseException | object | None:
        # A bounded wait, so no executor thread outlives a cancelled run.
        try:
            return batches.get(timeout=0.5)
        except queue.Empty:
            return _DONE if not thread.is_alive() and batches.empty() else _EMPTY

    thread = threading.Thread(target=produce, name="styldod-scan", daemon=True)
    thread.start()
    try:
        while True:
            got = await asyncio.to_thread(take)
            if got is _EMPTY:
                continue
            if got is None or got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            assert isinstance(got, list)
            for event in got:
                yield event
    finally:
        stop.set()
