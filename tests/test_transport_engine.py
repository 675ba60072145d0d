"""Whole runs against a hostile Order API and a hostile storage on 127.0.0.1: a failure
stays with what it concerns, and a strange Retry-After neither crashes nor parks a run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from styldod_batch.engine import Uploader
from styldod_batch.models import ImageResult
from styldod_batch.settings import RetryPolicy, Settings
from tests.helpers import make_tree
from tests.hostile_api import HostileOrderAPI, json_answer
from tests.hostile_storage import Exchange, HostileStorage


@pytest_asyncio.fixture(loop_scope="session")
async def storage() -> AsyncIterator[HostileStorage]:
    async with HostileStorage() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def api(storage: HostileStorage) -> AsyncIterator[HostileOrderAPI]:
    async with HostileOrderAPI(storage.url("")) as server:
        yield server


def settings(api: HostileOrderAPI, **changes: Any) -> Settings:
    return Settings(base_url=api.url, api_key="k", rps=400.0, **changes)


async def test_a_storage_403_fails_that_one_file_and_the_run_goes_on(
    api: HostileOrderAPI, storage: HostileStorage, tmp_path: Path
) -> None:
    """A refused pre-signed URL used to stop the whole run as if the API refused the key."""

    async def refuse_one(exchange: Exchange) -> None:
        await exchange.read_body()
        if "photo-2" in exchange.request.target:
            await exchange.refuse(403, "SignatureDoesNotMatch", "The signature does not match")
        else:
            await exchange.store()

    storage.script = refuse_one
    make_tree(tmp_path, folders=2, files=3, size=2048)
    results: list[ImageResult] = []
    async with Uploader(settings(api), on_image=results.append) as uploader:
        report = await uploader.run([tmp_path])
    assert (report.total, report.uploaded, report.failed) == (6, 4, 2)
    failed = [r for r in results if r.status == "failed"]
    assert all("photo-2" in r.path and "403" in (r.error or "") for r in failed)
    assert all(r.attempts == 1 for r in failed), "a refusal is not retried"
    assert [o.status for o in report.orders] == ["created", "created"]
    assert api.count("POST", "/v2/orders") == 2


async def test_a_429_saying_retry_after_soon_is_retried_not_a_crash(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    limited = json_answer({"error": {"code": "rate_limited"}}, 429, **{"Retry-After": "soon"})
    api.then("/v2/upload-urls", limited)
    api.then("/v2/orders", limited)
    make_tree(tmp_path, folders=1, files=3, size=1024)
    async with Uploader(settings(api)) as uploader:
        report = await uploader.run([tmp_path])
    assert (report.uploaded, report.failed) == (3, 0)
    assert [o.status for o in report.orders] == ["created"]
    assert report.requests.rate_limited == 2
    assert uploader.api_budget.rate_limited == 2


@pytest.mark.parametrize("shared", [False, True], ids=["default", "share-api-budget"])
async def test_a_storage_429_asking_for_a_day_does_not_park_the_run(
    api: HostileOrderAPI, storage: HostileStorage, tmp_path: Path, shared: bool
) -> None:
    """Storage's SlowDown pauses the PUTs' budget (with no cap, by default, one that only
    pauses; with --share-api-budget the API's, where an uncapped pause would stop the run's
    API calls too, for a day)."""

    async def slow_down_once(exchange: Exchange) -> None:
        await exchange.read_body()
        if exchange.request.number == 1:
            await exchange.refuse(
                429, "SlowDown", "Reduce your request rate", **{"Retry-After": "86400"}
            )
        else:
            await exchange.store()

    storage.script = slow_down_once
    make_tree(tmp_path, folders=1, files=3, size=1024)
    policy = RetryPolicy(max_server_wait_s=0.2)
    config = settings(api, retry=policy, share_api_budget=shared)
    async with asyncio.timeout(120), Uploader(config) as uploader:
        report = await uploader.run([tmp_path])
    assert (report.uploaded, report.failed) == (3, 0)
    assert report.requests.rate_limited == 1
    assert uploader.storage_budget.rate_limited == 1, "the SlowDown paused the PUTs"
    assert uploader.api_budget.rate_limited == (1 if shared else 0)
    assert [o.status for o in report.orders] == ["created"]
