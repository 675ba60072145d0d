"""The pace of a job (issue 20, point 1): API calls keep the strict 20/s budget; PUTs and
downloads take nothing from it by default (concurrency bounds them, storage's SlowDown pauses
them), unless capped (``--upload-rps``, ``--download-rps``) or told to share it
(``--share-api-budget``, the old pace); ``--bwlimit`` caps their bytes per second."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from styldod_batch.budget import (
    ByteBucket,
    RateBudget,
    StoragePause,
    ThroughputCap,
    parse_bytes_rate,
)
from styldod_batch.budget.bandwidth import format_bytes_rate
from styldod_batch.download import OutputDownloader
from styldod_batch.engine import Uploader
from styldod_batch.errors import ConfigurationError
from styldod_batch.jobfile import load_job_file
from styldod_batch.option_registry import add_flags, from_environ
from styldod_batch.output_policy import OutputHostPolicy
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import RetryPolicy, Settings
from tests.helpers import make_tree, stored_puts
from tests.hostile_outputs import HostileOutputs, body_for
from tests.virtual_clock import VirtualClock


def settings_for(base_url: str, key: str, **changes: object) -> Settings:
    return Settings(base_url=base_url, api_key=key, budget="process", **changes)  # type: ignore[arg-type]


# -- the default: PUTs are not paced by the API's budget ------------------------------------


async def test_by_default_puts_take_nothing_from_the_api_budget(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """150 photos at 20/s: the API's budget grants the API calls alone; the 150 PUTs go
    through a budget of their own that caps nothing."""
    files = make_tree(tmp_path, folders=3, files=50, size=2048)
    box = await sandbox_factory(rps=20)
    async with Uploader(settings_for(box.base_url, box.api_key, rps=20.0)) as up:
        report = await up.run([tmp_path])
    assert (report.uploaded, report.failed) == (150, 0)
    assert len(stored_puts(box)) == len(files)
    assert isinstance(up.storage_budget, StoragePause)
    assert up.storage_budget is not up.api_budget
    assert up.api_budget.granted == report.requests.api == len(box.log.select(kind="api"))
    assert up.storage_budget.granted == report.requests.storage >= 150
    assert box.log.max_in_window(("api",)) <= 20
    assert box.log.select(status=429) == []


async def test_share_api_budget_puts_the_puts_back_in_the_api_window(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path, folders=2, files=10, size=2048)
    box = await sandbox_factory(rps=100)
    config = settings_for(box.base_url, box.api_key, rps=100.0, share_api_budget=True)
    async with Uploader(config) as up:
        report = await up.run([tmp_path])
    assert (report.uploaded, report.failed) == (20, 0)
    assert up.storage_budget is up.api_budget is up.download_budget
    assert up.api_budget.granted == report.requests.api + report.requests.storage
    assert report.requests.storage >= 20


def test_which_budget_each_kind_of_request_takes() -> None:
    def budgets(**changes: object) -> Uploader:
        return Uploader(Settings(api_key="k", **changes))  # type: ignore[arg-type]

    default = budgets()
    assert isinstance(default.api_budget, RateBudget) and default.api_budget.nominal_rate == 20
    assert isinstance(default.storage_budget, StoragePause)
    assert isinstance(default.download_budget, StoragePause)
    assert default.storage_budget is not default.download_budget
    assert isinstance(budgets(upload_rps=0.0).storage_budget, StoragePause)

    capped = budgets(upload_rps=50.0, download_rps=1000.0)
    assert isinstance(capped.storage_budget, RateBudget)  # the strict window up to 200/s
    assert (capped.storage_budget.nominal_rate, capped.storage_budget.name) == (50, "storage")
    assert isinstance(capped.download_budget, ThroughputCap)  # a token bucket above
    assert capped.download_budget.nominal_rate == 1000

    shared = budgets(share_api_budget=True)
    assert shared.storage_budget is shared.api_budget is shared.download_budget
    # A cap given beside the flag still wins for its kind.
    mixed = budgets(share_api_budget=True, upload_rps=30.0)
    assert mixed.storage_budget is not mixed.api_budget
    assert mixed.download_budget is mixed.api_budget


async def test_upload_rps_caps_the_puts(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    make_tree(tmp_path, folders=1, files=12, size=1024)
    box = await sandbox_factory(rps=400)
    config = settings_for(box.base_url, box.api_key, rps=400.0, upload_rps=40.0)
    async with Uploader(config) as up:
        report = await up.run([tmp_path])
    assert (report.uploaded, report.failed) == (12, 0)
    assert isinstance(up.storage_budget, RateBudget)
    assert up.storage_budget.granted == report.requests.storage >= 12
    assert up.api_budget.granted == report.requests.api
    assert box.log.max_in_window(("storage",)) <= 40


# -- storage's SlowDown still pauses, with no cap ---------------------------------------------


async def test_a_pause_only_budget_caps_nothing_but_honours_slow_down() -> None:
    clock = VirtualClock()
    budget = StoragePause(max_pause_s=5.0, clock=clock)
    start = clock.now()
    for _ in range(1000):
        await budget.acquire()
    assert clock.now() == start, "no cap: nothing waits"
    budget.slow_down(2.0)
    assert budget.pause_remaining_s() == pytest.approx(2.0)
    await budget.acquire()
    assert clock.now() - start == pytest.approx(2.0)
    budget.slow_down(86400.0)  # capped at max_pause_s
    assert budget.pause_remaining_s() == pytest.approx(5.0)
    budget.slow_down(float("nan"))  # no usable wait: no pause added
    assert (budget.rate_limited, budget.granted) == (3, 1001)


# -- --bwlimit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500K", 500 * 1024),
        ("10M", 10 << 20),
        ("1G", 1 << 30),
        ("1.5M", int(1.5 * (1 << 20))),
        ("2048", 2048),
        ("10m", 10 << 20),
        ("10MiB", 10 << 20),
        ("off", None),
        ("OFF", None),
    ],
)
def test_bwlimit_takes_rclone_suffixes(text: str, value: int | None) -> None:
    assert parse_bytes_rate(text) == value


@pytest.mark.parametrize("text", ["fast", "10X", "-1M", "0", "1e3", "M"])
def test_a_bad_bwlimit_names_the_flag_the_variable_and_the_key(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, ["bwlimit"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--bwlimit", text])
    assert "--bwlimit" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match=r"\$STYLDOD_BWLIMIT"):
        from_environ({"STYLDOD_BWLIMIT": text})
    job = tmp_path / "job.toml"
    job.write_text(f'bwlimit = "{text}"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="bwlimit"):
        load_job_file(job)


def test_bwlimit_in_a_job_file_and_the_environment(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('bwlimit = "10M"\n', encoding="utf-8")
    assert load_job_file(job)["bwlimit"] == 10 << 20
    assert from_environ({"STYLDOD_BWLIMIT": "500K"})["bwlimit"] == 500 * 1024
    assert format_bytes_rate(10 << 20) == "10M" and format_bytes_rate(None) == "off"
    with pytest.raises(ConfigurationError, match="bwlimit"):
        Settings(bwlimit=0)


async def test_a_byte_bucket_holds_its_rate_on_virtual_time() -> None:
    clock = VirtualClock()
    bucket = ByteBucket(100_000, clock=clock)  # 100 kB/s
    start = clock.now()
    sent: list[tuple[float, int]] = []
    for _ in range(50):  # 50 chunks of 16 kB: 800 kB
        await bucket.take(16_000)
        sent.append((clock.now() - start, 16_000))
    elapsed = clock.now() - start
    # 800 kB at 100 kB/s: 8 s, less the one burst that may leave at once.
    assert elapsed == pytest.approx(8.0 - bucket.burst_s, abs=1e-6)
    # In any window of T seconds: at most rate * (T + burst) bytes, plus one chunk.
    for i, (at, _) in enumerate(sent):
        for later in range(i, len(sent)):
            span = sent[later][0] - at
            moved = sum(size for _, size in sent[i : later + 1])
            assert moved <= 100_000 * (span + bucket.burst_s) + 16_000


@pytest.mark.parametrize("streamed", [False, True], ids=["small", "streamed"])
async def test_bwlimit_meters_every_byte_of_every_put(
    sandbox_factory: SandboxFactory, tmp_path: Path, streamed: bool
) -> None:
    """Every byte of every PUT (small bodies in one read, large ones streamed) passes the
    one bucket, all PUTs together."""
    size = 48 * 1024
    make_tree(tmp_path, folders=1, files=6, size=size)
    box = await sandbox_factory(rps=400)
    config = settings_for(
        box.base_url,
        box.api_key,
        rps=400.0,
        bwlimit=4 << 20,
        stream_chunk_bytes=16 * 1024,
        small_file_bytes=16 * 1024 if streamed else 1 << 20,
    )
    async with Uploader(config) as up:
        report = await up.run([tmp_path])
    assert (report.uploaded, report.failed) == (6, 0)
    assert up.bandwidth is not None
    puts = len(box.log.select(kind="storage", method="PUT"))
    assert up.bandwidth.taken == puts * size >= 6 * size


# -- downloads: their own budget, storage's 429 pauses it, --bwlimit meters them --------------


@pytest_asyncio.fixture(loop_scope="session")
async def outputs() -> AsyncIterator[HostileOutputs]:
    async with HostileOutputs() as server:
        yield server


def output(client_image_id: str, url: str) -> dict[str, Any]:
    return {"client_image_id": client_image_id, "image_status": "completed", "output_url": url}


async def test_downloads_are_metered_and_a_429_pauses_their_budget(
    outputs: HostileOutputs, tmp_path: Path
) -> None:
    budget = StoragePause(name="download")
    bandwidth = ByteBucket(4 << 20)
    images = [
        output("a.jpg", outputs.url("/ok/a")),
        output("b.jpg", outputs.url("/ok/b")),
        output("limited.jpg", outputs.url("/status/429")),
    ]
    policy = RetryPolicy(max_attempts=2, rate_limited_wait_s=0.05)
    async with aiohttp.ClientSession() as session:
        downloader = OutputDownloader(
            session,
            tmp_path,
            budget=budget,
            ledger=None,
            retry=policy,
            concurrency=4,
            policy=OutputHostPolicy(allow_loopback=True),
            bandwidth=bandwidth,
        )
        results = {r.client_image_id: r for r in await downloader.fetch_order("o", "1", images)}
    assert [results[i].status for i in ("a.jpg", "b.jpg")] == ["downloaded", "downloaded"]
    assert results["limited.jpg"].status == "failed"
    assert bandwidth.taken == len(body_for("a")) + len(body_for("b"))
    assert budget.rate_limited == 1, "the 429 paused every download, not just its own"
    assert budget.granted == 4  # two outputs, and the refused one twice
