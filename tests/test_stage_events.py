"""The events stage: each result counted in the report, logged, handed to the callbacks and
to the stream's queue (a full queue holds the run back), and the report's request counts and
time taken from the run's own start (on a virtual clock)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from styldod_batch.models import ImageResult, OrderResult, RequestCounters
from styldod_batch.pipeline.events import Events
from tests.virtual_clock import VirtualClock


async def test_results_reach_the_report_the_callbacks_and_the_stream() -> None:
    images: list[ImageResult] = []
    orders: list[OrderResult] = []
    sink: asyncio.Queue[ImageResult | OrderResult] = asyncio.Queue()
    events = Events(RequestCounters(), on_image=images.append, on_order=orders.append, sink=sink)
    up = ImageResult("/in/a.jpg", "uploaded", "a.jpg", "h", image_url="u", md5="m")
    bad = ImageResult("/in/b.jpg", "failed", "b.jpg", "h", error="unreadable")
    order = OrderResult("h", "created", 1, order_id="o-1")
    for result in (up, bad):
        await events.image(result)
    await events.order(order)
    report = events.report
    assert (report.uploaded, report.failed, report.orders) == (1, 1, [order])
    assert images == [up, bad] and orders == [order]
    assert [sink.get_nowait() for _ in range(3)] == [up, bad, order]


async def test_a_full_stream_holds_the_run_back() -> None:
    sink: asyncio.Queue[ImageResult | OrderResult] = asyncio.Queue(maxsize=1)
    events = Events(RequestCounters(), sink=sink)
    await events.image(ImageResult("/in/a.jpg", "skipped", error="not an image"))
    blocked = asyncio.ensure_future(events.image(ImageResult("/in/b.jpg", "skipped")))
    await asyncio.sleep(0)
    assert not blocked.done()
    sink.get_nowait()
    await asyncio.wait_for(blocked, 1)


async def test_failures_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    events = Events(RequestCounters())
    with caplog.at_level(logging.DEBUG, logger="styldod_batch"):
        await events.image(ImageResult("/in/b.jpg", "failed", "b.jpg", error="unreadable"))
        await events.order(OrderResult("h", "failed", 2, error="refused: HTTP 400"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["/in/b.jpg: unreadable", "order h: refused: HTTP 400 (2 images)"]


async def test_the_snapshot_counts_this_run_only_on_its_clock() -> None:
    counters = RequestCounters(api=5, storage=7, retries=1)
    clock = VirtualClock()
    events = Events(counters, clock=clock)
    counters.api += 3
    counters.storage += 10
    clock.advance(12.5)
    events.found()
    events.expected(4)
    events.phase("uploading")
    report = events.snapshot()
    assert (report.requests.api, report.requests.storage, report.requests.retries) == (3, 10, 0)
    assert report.elapsed_s == 12.5
    assert (report.found, report.expected, report.phase) == (1, 4, "uploading")
