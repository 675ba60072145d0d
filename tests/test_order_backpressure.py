"""Placing orders pushes back on uploads (issue 18, point 13): with one image per order and
uploads far faster than the API's order rate, the number of order tasks waiting at once
stays bounded instead of growing with the file count."""

from __future__ import annotations

import asyncio
from pathlib import Path

from styldod_batch.engine import ORDER_BACKLOG, Uploader
from styldod_batch.models import ImageResult
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import Settings
from tests.helpers import make_tree

# Ten times the bound (ORDER_BACKLOG + CONCURRENCY): unbounded, the waiting order tasks would
# grow to hundreds (uploads finish seconds before orders at 100/s do); bounded, they stay under it.
FILES = 500
CONCURRENCY = 16


def order_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("order "))


async def test_order_tasks_stay_bounded_with_one_image_per_order(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=1, files=FILES, size=64)
    box = await sandbox_factory(rps=1000)
    seen: list[int] = []

    def on_image(result: ImageResult) -> None:
        if len(seen) < FILES and result.status == "uploaded":
            seen.append(order_tasks())

    settings = Settings(
        base_url=box.base_url,
        api_key=box.api_key,
        state=tmp_path / "state",
        order_by="none",
        order_size=1,
        # Orders go at 100/s; uploads have no budget of their own and go as fast as storage.
        rps=100,
        upload_rps=0,
        concurrency=CONCURRENCY,
    )
    async with Uploader(settings, on_image=on_image) as uploader:
        report = await uploader.run([tmp_path / "job"])
    assert report.uploaded == FILES and report.failures == []
    assert len(report.orders) == FILES
    assert all(o.status == "created" for o in report.orders)
    bound = ORDER_BACKLOG + CONCURRENCY
    assert max(seen) <= bound, f"{max(seen)} order tasks waited at once (bound {bound})"
    assert 0 < uploader.order_backlog_peak <= bound
