"""The stages wired (``pipeline/run.py``) on in-memory fakes, no socket: every file is put
once and ordered once in its listing's order, and a refused key ends the run with
``RunAborted`` carrying the report so far."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from styldod_batch.errors import AuthenticationError, RunAborted
from styldod_batch.ledger import NullLedger
from styldod_batch.models import ImageItem, RequestCounters, UploadTarget
from styldod_batch.pipeline.feed import ItemFeed
from styldod_batch.pipeline.run import PipelineRun, Services
from styldod_batch.settings import Settings
from tests.virtual_clock import VirtualClock


class World:
    """Upload URLs, an object store and the order API, in memory."""

    def __init__(self, refuse_key: bool = False) -> None:
        self.refuse_key = refuse_key
        self.url_calls = 0
        self.puts: list[str] = []
        self.orders: list[dict[str, Any]] = []

    async def upload_urls(self, items: list[ImageItem]) -> list[UploadTarget]:
        self.url_calls += 1
        if self.refuse_key:
            raise AuthenticationError("bad key", status=401)
        return [UploadTarget(f"put:{i.path}", f"img:{i.path}", "later") for i in items]

    async def put(self, item: ImageItem, target: UploadTarget) -> str:
        self.puts.append(target.upload_url)
        return f"md5:{item.path}"

    async def close(self) -> None:
        return None

    async def create_order(
        self, payload: dict[str, Any] | bytes, idempotency_key: str
    ) -> tuple[dict[str, Any], bool]:
        assert isinstance(payload, bytes)
        self.orders.append(orjson.loads(payload))
        return {"orderID": f"o-{len(self.orders)}"}, False


def items(listings: int, files: int) -> AsyncIterator[ImageItem]:
    async def make() -> AsyncIterator[ImageItem]:
        for n in range(listings):
            for k in range(files):
                yield ImageItem(
                    f"/in/h{n}/{k}.jpg", f"{k}.jpg", 10, 1, "image/jpeg", f"h{n}",
                    listing=f"order:h{n}",
                )  # fmt: skip

    return make()


def run_on(world: World, **settings: Any) -> PipelineRun:
    services = Services(
        settings=Settings(api_key="k", concurrency=3, **settings),
        urls=world,
        store=world,
        orders=world,
        api_budget=None,
        storage_budget=None,
        counters=RequestCounters(),
        stopping=asyncio.Event(),
        clock=VirtualClock(),
    )
    return PipelineRun(services, NullLedger())


async def test_every_file_is_put_once_and_ordered_in_its_listings_order() -> None:
    world = World()
    report = await asyncio.wait_for(run_on(world).execute(ItemFeed(items(3, 4))), 5)
    assert sorted(world.puts) == sorted(set(world.puts)) and len(world.puts) == 12
    assert sorted(o["order_name"] for o in world.orders) == ["h0", "h1", "h2"]
    assert all(len(o["image_list"]) == 4 for o in world.orders)
    assert (report.uploaded, len(report.orders), report.phase) == (12, 3, "done")
    assert {o.status for o in report.orders} == {"created"}


async def test_a_refused_key_ends_the_run_with_its_report() -> None:
    world = World(refuse_key=True)
    with pytest.raises(RunAborted) as aborted:
        await asyncio.wait_for(run_on(world).execute(ItemFeed(items(1, 2))), 5)
    assert isinstance(aborted.value.cause, AuthenticationError)
    assert aborted.value.report.found == 2 and world.puts == [] and world.orders == []
