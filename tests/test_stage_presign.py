"""The pre-sign stage on in-memory fakes and a virtual clock: batches of at most the
contract's files per call, a refused batch bisected down to the refused file, the first
network failure of a run ending it, and expired URLs refreshed together."""

from __future__ import annotations

import asyncio

import pytest

from styldod_batch.errors import BadRequest, NetworkError, ServerError, ServiceUnreachable
from styldod_batch.models import ImageItem, UploadTarget
from styldod_batch.orders import OrderPart
from styldod_batch.pipeline.presign import DONE, PRESIGN_GATHER_S, Planned, Presigner, Ready
from tests.virtual_clock import VirtualClock


def item(n: int) -> ImageItem:
    return ImageItem(f"/in/{n}.jpg", f"{n}.jpg", 10, 1, "image/jpeg", "house", listing="order:h")


class URLs:
    """Upload URLs by name; refuses any call that holds a name in ``refused`` (400)."""

    def __init__(self, refused: frozenset[str] = frozenset(), fail: Exception | None = None):
        self.calls: list[list[str]] = []
        self.called = asyncio.Event()
        self.refused = refused
        self.fail = fail

    async def upload_urls(self, items: list[ImageItem]) -> list[UploadTarget]:
        names = [i.client_image_id for i in items]
        self.calls.append(names)
        self.called.set()
        if self.fail is not None:
            raise self.fail
        if self.refused & set(names):
            raise BadRequest("bad file name", param="files")
        return [UploadTarget(f"https://put/{n}", f"https://img/{n}", "later") for n in names]


class Failures:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def failed(self, part: OrderPart, item: ImageItem, error: str) -> None:
        self.seen.append((item.client_image_id, error))


def stage(
    urls: URLs, n: int, *, max_files: int = 50, done: bool = True
) -> tuple[Presigner, asyncio.Queue[Ready | object], Failures, VirtualClock]:
    planned: asyncio.Queue[Planned | object] = asyncio.Queue()
    ready: asyncio.Queue[Ready | object] = asyncio.Queue()
    part = OrderPart("order:h", "house", 1)
    for k in range(n):
        planned.put_nowait((item(k), part))
    if done:
        planned.put_nowait(DONE)
    failures, clock = Failures(), VirtualClock()
    presigner = Presigner(
        urls,
        planned,
        ready,
        failures,
        max_files=max_files,
        base_url="http://127.0.0.1:9",
        stopping=asyncio.Event(),
        clock=clock,
    )
    return presigner, ready, failures, clock


def drained(ready: asyncio.Queue[Ready | object]) -> list[tuple[str, str]]:
    out = []
    while not ready.empty():
        got = ready.get_nowait()
        assert isinstance(got, tuple)
        out.append((got[0].client_image_id, got[2].upload_url))
    return out


async def test_files_are_gathered_up_to_the_limit_per_call() -> None:
    urls = URLs()
    presigner, ready, failures, clock = stage(urls, 120)
    await presigner.worker()
    assert [len(c) for c in urls.calls] == [50, 50, 20]
    assert [name for name, _ in drained(ready)] == [f"{k}.jpg" for k in range(120)]
    assert failures.seen == [] and clock.sleeps == []  # the end was in sight: no wait


async def test_a_part_filled_batch_waits_briefly_for_more() -> None:
    urls = URLs()
    presigner, ready, _failures, clock = stage(urls, 3, done=False)
    worker = asyncio.create_task(presigner.worker())
    await asyncio.wait_for(urls.called.wait(), 1)
    assert clock.sleeps == [PRESIGN_GATHER_S] and urls.calls == [["0.jpg", "1.jpg", "2.jpg"]]
    presigner.planned.put_nowait(DONE)
    await asyncio.wait_for(worker, 1)
    assert len(drained(ready)) == 3


async def test_a_refused_batch_is_bisected_to_the_refused_file() -> None:
    urls = URLs(refused=frozenset({"3.jpg"}))
    presigner, ready, failures, _clock = stage(urls, 5)
    await presigner.worker()
    assert [name for name, _ in drained(ready)] == ["0.jpg", "1.jpg", "2.jpg", "4.jpg"]
    assert [name for name, _ in failures.seen] == ["3.jpg"]
    assert "bad file name" in failures.seen[0][1]


async def test_no_answer_at_all_ends_the_run_but_a_later_failure_costs_only_its_files() -> None:
    urls = URLs(fail=NetworkError("connection refused"))
    presigner, _ready, failures, _clock = stage(urls, 2)
    with pytest.raises(ServiceUnreachable, match=r"127\.0\.0\.1:9"):
        await presigner.worker()
    assert failures.seen == []

    presigner, _ready, failures, _clock = stage(urls, 2)
    presigner.answered = True  # the API answered earlier in this run
    await presigner.worker()
    assert [name for name, _ in failures.seen] == ["0.jpg", "1.jpg"]
    assert all(e.startswith("no upload URL: ") for _, e in failures.seen)


async def test_a_server_error_fails_the_batch_and_counts_as_an_answer() -> None:
    urls = URLs(fail=ServerError("boom", status=503))
    presigner, _ready, failures, _clock = stage(urls, 2)
    await presigner.worker()
    assert len(failures.seen) == 2 and presigner.answered


async def test_an_expired_url_is_refreshed_for_its_one_file() -> None:
    urls = URLs()
    presigner, _ready, _failures, _clock = stage(urls, 0)
    target = await presigner.refresh(item(7))
    assert (urls.calls, target.upload_url) == ([["7.jpg"]], "https://put/7.jpg")


async def test_one_refused_file_in_fifty_costs_a_dozen_calls_not_fifty() -> None:
    urls = URLs(refused=frozenset({"37.jpg"}))
    presigner, ready, failures, _clock = stage(urls, 50)
    await presigner.worker()
    assert len(drained(ready)) == 49 and [n for n, _ in failures.seen] == ["37.jpg"]
    assert len(urls.calls) <= 2 * 6 + 1, urls.calls  # bisected: two calls per level


async def test_urls_that_expired_together_are_refreshed_in_one_call() -> None:
    urls = URLs(refused=frozenset({"13.jpg"}))
    presigner, _ready, _failures, _clock = stage(urls, 0)
    asked = [asyncio.ensure_future(presigner.refresh(item(n))) for n in range(10, 18)]
    done = await asyncio.gather(*asked, return_exceptions=True)
    refused = [n for n, got in zip(range(10, 18), done, strict=True) if isinstance(got, BadRequest)]
    assert refused == [13], "the file the API refuses fails alone"
    assert [got.upload_url for got in done if isinstance(got, UploadTarget)] == [
        f"https://put/{n}.jpg" for n in (10, 11, 12, 14, 15, 16, 17)
    ]
    assert urls.calls[0] == [f"{n}.jpg" for n in range(10, 18)], "one call for all eight"
    assert len(urls.calls) <= 1 + 2 * 3
    await presigner.close()
