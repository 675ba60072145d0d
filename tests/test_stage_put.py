"""The upload workers on an in-memory object store and a virtual clock: a PUT retried
within the policy, an expired URL refreshed before the next try, the outcome recorded and
settled into its part."""

from __future__ import annotations

import asyncio

from styldod_batch.errors import InputError, StorageServerError, UploadURLExpired
from styldod_batch.models import ImageItem, ImageResult, RequestCounters, UploadTarget
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.presign import DONE, Ready
from styldod_batch.pipeline.put import Putter
from styldod_batch.settings import RetryPolicy
from tests.virtual_clock import VirtualClock


def item(n: int) -> ImageItem:
    return ImageItem(f"/in/{n}.jpg", f"{n}.jpg", 10, 1, "image/jpeg", "house", listing="order:h")


def target(name: str, n: int = 0) -> UploadTarget:
    return UploadTarget(f"https://put/{name}/{n}", f"https://img/{name}/{n}", "later")


class Store:
    """PUTs in memory; ``script`` names the failures each file meets first."""

    def __init__(self, script: dict[str, list[Exception]] | None = None) -> None:
        self.script = script or {}
        self.puts: list[str] = []
        self.objects: dict[str, str] = {}

    async def put(self, item: ImageItem, target: UploadTarget) -> str:
        self.puts.append(target.upload_url)
        pending = self.script.get(item.client_image_id)
        if pending:
            raise pending.pop(0)
        self.objects[target.image_url] = item.client_image_id
        return f"md5-{item.client_image_id}"

    async def close(self) -> None:
        return None


class Recorder:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []
        self.settled: list[tuple[str, str]] = []
        self.refreshed: list[str] = []

    def remember_upload(self, item: ImageItem, result: ImageResult) -> None:
        self.recorded.append((item.client_image_id, result.status))

    async def settle(self, part: OrderPart, item: ImageItem, result: ImageResult) -> None:
        self.settled.append((item.client_image_id, result.status))

    async def refresh(self, item: ImageItem) -> UploadTarget:
        self.refreshed.append(item.client_image_id)
        return target(item.client_image_id, len(self.refreshed))


def putter(store: Store, recorder: Recorder, **stage: object) -> tuple[Putter, VirtualClock]:
    clock = VirtualClock()
    ready: asyncio.Queue[Ready | object] = asyncio.Queue()
    made = Putter(
        store,
        ready,
        refresh=recorder.refresh,
        record=recorder,
        settler=recorder,
        retry=RetryPolicy(max_attempts=3),
        budget=None,
        counters=RequestCounters(),
        stopping=asyncio.Event(),
        clock=clock,
    )
    return made, clock


async def test_each_file_is_put_recorded_and_settled_until_the_end() -> None:
    store, recorder = Store(), Recorder()
    stage, _clock = putter(store, recorder)
    part = OrderPart("order:h", "house", 1)
    for n in range(3):
        stage.ready.put_nowait((item(n), part, target(f"{n}.jpg")))
    stage.ready.put_nowait(DONE)
    await asyncio.wait_for(stage.worker(), 1)
    assert len(store.objects) == 3
    assert recorder.recorded == recorder.settled == [(f"{n}.jpg", "uploaded") for n in range(3)]


async def test_an_expired_url_is_refreshed_and_the_put_retried_on_the_new_one() -> None:
    store = Store({"1.jpg": [UploadURLExpired("expired", status=403)]})
    recorder = Recorder()
    stage, clock = putter(store, recorder)
    result = await stage.upload(item(1), target("1.jpg"))
    assert recorder.refreshed == ["1.jpg"]
    assert store.puts == ["https://put/1.jpg/0", "https://put/1.jpg/1"]
    assert (result.status, result.attempts, result.image_url) == (
        "uploaded",
        2,
        "https://img/1.jpg/1",
    )
    assert stage.counters.retries == 1 and len(clock.sleeps) == 1  # waited on the fake clock


async def test_a_file_that_keeps_failing_fails_alone_with_its_reason() -> None:
    boom: list[Exception] = [StorageServerError("slow down", status=503) for _ in range(5)]
    store, recorder = Store({"2.jpg": boom}), Recorder()
    stage, clock = putter(store, recorder)
    result = await stage.upload(item(2), target("2.jpg"))
    assert (result.status, result.attempts) == ("failed", 3)
    assert "503" in (result.error or "") and len(clock.sleeps) == 2
    unreadable = Store({"3.jpg": [InputError("/in/3.jpg", "cannot read")]})
    stage, _clock = putter(unreadable, recorder)
    assert (await stage.upload(item(3), target("3.jpg"))).error == "cannot read"


async def test_a_stopped_run_puts_nothing_more() -> None:
    store, recorder = Store(), Recorder()
    stage, _clock = putter(store, recorder)
    stage.stopping.set()
    stage.ready.put_nowait((item(0), OrderPart("order:h", "house", 1), target("0.jpg")))
    stage.ready.put_nowait(DONE)
    await asyncio.wait_for(stage.worker(), 1)
    assert store.puts == [] and recorder.settled == []
