"""The library as batch code uses it: one Uploader, several runs, stops, streams, loops."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

import pytest

import styldod_batch
from styldod_batch import Settings, Uploader, engine
from styldod_batch.errors import ConfigurationError, StyldodError
from styldod_batch.models import ImageResult, OrderResult
from styldod_batch.sandbox import Faults
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree


def test_the_package_exports_what_batch_code_needs() -> None:
    for name in ("__version__", "Uploader", "Settings", "Report", "upload", "ManifestSource"):
        assert hasattr(styldod_batch, name), name
    assert callable(styldod_batch.upload)
    assert isinstance(styldod_batch.__version__, str) and styldod_batch.__version__


async def test_a_stopped_uploader_runs_again_and_finishes_the_job(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=4, files=40, size=500)
    box = await sandbox_factory(rps=1000, faults=Faults(latency_ms=20))
    settings = Settings(base_url=box.base_url, api_key=box.api_key, stop_grace_s=10)
    async with Uploader(settings) as up:

        def stop_after_some(result: ImageResult) -> None:
            if up.current_report is not None and up.current_report.uploaded >= 20:
                up.request_stop()

        up.on_image = stop_after_some
        first = await up.run([tmp_path / "photos"])
        up.on_image = None
        second = await up.run([tmp_path / "photos"])

    assert first.interrupted and 20 <= first.uploaded < 160
    assert not second.interrupted and second.ok
    assert second.uploaded + second.already_done == 160
    assert len({o.key for o in second.orders}) == 4


async def test_the_library_ends_a_stopped_run_after_its_grace(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=1, files=30, size=500)
    # Every request takes 3 s: in-flight work cannot finish within a grace of 0.5 s.
    box = await sandbox_factory(rps=1000, faults=Faults(latency_ms=3000))
    settings = Settings(base_url=box.base_url, api_key=box.api_key, stop_grace_s=0.5)
    async with Uploader(settings) as up:
        run = asyncio.create_task(up.run([tmp_path / "photos"]))
        for _ in range(1200):  # until the first request arrives (at most 60 s)
            if box.log.select(kind="api"):
                break
            await asyncio.sleep(0.05)
        up.request_stop()
        stopped_at = time.monotonic()
        report = await asyncio.wait_for(run, timeout=30)
        ended_after = time.monotonic() - stopped_at

    assert report.interrupted
    # Ended by the grace, not by the 3 s answers or the retry bounds (a loose bound: the
    # point is that it ends at all, with its report).
    assert ended_after < 10


async def test_two_streams_at_once_each_get_their_own_results(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "a", folders=2, files=5, size=400, prefix="a")
    make_tree(tmp_path / "b", folders=3, files=5, size=400, prefix="b")
    box = await sandbox_factory(rps=1000)
    settings = Settings(base_url=box.base_url, api_key=box.api_key)
    calls: list[str] = []
    async with Uploader(settings, on_order=lambda o: calls.append(o.key)) as up:

        async def collect(root: Path) -> list[ImageResult | OrderResult]:
            return [result async for result in up.stream([root])]

        a, b = await asyncio.gather(collect(tmp_path / "a"), collect(tmp_path / "b"))

    assert sorted(r.key for r in a if isinstance(r, OrderResult)) == ["a-01", "a-02"]
    assert sorted(r.key for r in b if isinstance(r, OrderResult)) == ["b-01", "b-02", "b-03"]
    assert sum(isinstance(r, ImageResult) for r in a) == 10
    assert sum(isinstance(r, ImageResult) for r in b) == 15
    assert sorted(calls) == ["a-01", "a-02", "b-01", "b-02", "b-03"], "callbacks untouched"


async def test_a_stream_nobody_reads_holds_the_run_back(
    sandbox_factory: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queue of 256 (1,024 by default) holds back a run of 1,000 as one of 1,024 holds 3,000.
    monkeypatch.setattr(engine, "STREAM_QUEUE", 256)
    make_tree(tmp_path / "photos", folders=10, files=100, size=10)
    box = await sandbox_factory(rps=100000)
    settings = Settings(base_url=box.base_url, api_key=box.api_key, rps=100000, upload_rps=0)
    async with Uploader(settings) as up:
        results = up.stream([tmp_path / "photos"])
        first = await anext(results)  # the run starts, then nobody reads
        seen, still = -1, 0
        while still < 10:  # until the run stops moving for a second
            await asyncio.sleep(0.1)
            report = up.current_report
            assert report is not None
            now = report.total
            still = still + 1 if now == seen else 0
            seen = now
        assert seen <= engine.STREAM_QUEUE + settings.concurrency + 64, seen
        rest = [result async for result in results]

    assert 1 + sum(isinstance(r, ImageResult) for r in rest) == 1000
    assert isinstance(first, ImageResult | OrderResult)


async def test_a_part_settled_while_its_uploads_wait_on_the_reader_is_ordered_once(
    sandbox_factory: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queue of one: the listing's uploads finish, record their results and then all wait
    # on the reader; when it comes back, each of them finds the part settled.
    monkeypatch.setattr(engine, "STREAM_QUEUE", 1)
    make_tree(tmp_path / "photos", folders=1, files=8, size=10)
    box = await sandbox_factory(rps=100000)
    settings = Settings(base_url=box.base_url, api_key=box.api_key, rps=100000, upload_rps=0)
    async with Uploader(settings) as up:
        results = up.stream([tmp_path / "photos"])
        first = await anext(results)
        for _ in range(50):  # until every upload has finished and waits on the reader
            await asyncio.sleep(0.05)
            if len(box.log.select(kind="storage")) == 8:
                break
        await asyncio.sleep(0.2)
        rest = [first, *[result async for result in results]]

    orders = [r for r in rest if isinstance(r, OrderResult)]
    assert [(o.status, o.images, o.error) for o in orders] == [("created", 8, None)]
    assert box.api is not None and len(box.api.orders) == 1


async def test_a_bare_string_is_refused_not_walked_letter_by_letter(tmp_path: Path) -> None:
    async with Uploader(Settings(api_key="k", base_url="http://127.0.0.1:9")) as up:
        with pytest.raises(ConfigurationError, match="a list of paths"):
            await up.run("photos")


async def test_upload_inside_a_running_loop_points_to_the_uploader(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(StyldodError, match="async with Uploader"):
            styldod_batch.upload([tmp_path], api_key="k", base_url="http://127.0.0.1:9")
