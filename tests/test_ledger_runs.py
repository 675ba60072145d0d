"""The ledger's points of issue 18 seen from whole runs (the library, against a hostile Order
API and storage on 127.0.0.1): a refusal after an unknown outcome (point 1), a reverted image
(12), batch names of two runs at once (14), and a state path with ``#`` or ``%`` (15)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from styldod_batch.engine import Uploader
from styldod_batch.ledger import SQLiteLedger
from styldod_batch.report import Report
from styldod_batch.settings import RetryPolicy, Settings
from tests.helpers import make_tree, run_cli
from tests.hostile_api import HostileOrderAPI, json_answer
from tests.hostile_storage import HostileStorage

FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.05)


def jpeg(size: int) -> bytes:
    """New content that a content check still takes for a JPEG."""
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 6) + b"\xff\xd9"


@pytest_asyncio.fixture(loop_scope="session")
async def storage() -> AsyncIterator[HostileStorage]:
    async with HostileStorage() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def api(storage: HostileStorage) -> AsyncIterator[HostileOrderAPI]:
    async with HostileOrderAPI(storage.url("")) as server:
        yield server


def settings(api: HostileOrderAPI, state: Path, **changes: Any) -> Settings:
    return Settings(
        base_url=api.url, api_key="k", rps=400.0, state=str(state), retry=FAST_RETRY, **changes
    )


async def run(api: HostileOrderAPI, state: Path, inputs: list[Path], **changes: Any) -> Report:
    async with Uploader(settings(api, state, **changes), global_options={}) as uploader:
        return await uploader.run(inputs)


def placed(report: Report) -> list[tuple[str, int]]:
    """The orders this run sent (not those an earlier run placed)."""
    return [(o.status, o.images) for o in report.orders if not o.resumed]


async def ledger_orders(state: Path) -> list[tuple[str, str, int]]:
    ledger = await SQLiteLedger.open(state, base_url="x", api_key="k", force=True, read_only=True)
    try:
        return [(o.idempotency_key, o.state, o.images) for o in await ledger.orders()]
    finally:
        await ledger.close()


# -- point 1: a refusal after an unknown outcome --------------------------------------------


async def test_a_4xx_after_a_try_that_may_have_reached_the_service_keeps_the_key(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    photos, state = tmp_path / "photos", tmp_path / "ledger.sqlite"
    make_tree(photos, folders=1, files=2, size=1024)
    # The first try reached the service (a 503 from it), the retry got a gateway's 400.
    api.then(
        "/v2/orders",
        json_answer({"error": {"code": "unavailable", "message": "busy"}}, 503),
        json_answer({"error": {"code": "bad_request", "message": "from a gateway"}}, 400),
    )
    first = await run(api, state, [photos])
    (order,) = first.orders
    assert order.status == "failed"
    assert "outcome unknown: a retry was refused" in (order.error or "")
    ((key, kept, _),) = await ledger_orders(state)
    assert kept == "sent", "the images stay bound to that key and body"

    again = await run(api, state, [photos])
    assert [o.status for o in again.orders] == ["created"]
    assert await ledger_orders(state) == [(key, "created", 2)], "re-sent with the same key"
    assert api.count("POST", "/v2/orders") == 3


# -- point 12: an image that went A -> B -> A -----------------------------------------------


async def test_a_reverted_image_is_left_out_and_the_rest_is_ordered(
    api: HostileOrderAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos, state = tmp_path / "photos", tmp_path / "ledger.sqlite"
    x, y = make_tree(photos, folders=1, files=2, size=1024)
    a = x.read_bytes()
    assert placed(await run(api, state, [photos])) == [("created", 2)]
    x.write_bytes(jpeg(1024))
    assert placed(await run(api, state, [photos], reorder_changed=True)) == [("created", 1)]
    x.write_bytes(a)  # back to A, which the first order holds
    y.write_bytes(jpeg(900))
    caplog.set_level(logging.WARNING, logger="styldod_batch")

    third = await run(api, state, [photos], reorder_changed=True)

    assert placed(third) == [("created", 1)], third.orders
    assert [n for _k, _s, n in await ledger_orders(state)] == [2, 1, 1]
    assert any("already in a live order" in r.getMessage() for r in caplog.records)


# -- point 14: two fixed-size runs at once --------------------------------------------------


async def test_two_runs_of_fixed_size_batches_at_once_never_share_a_name(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    state = tmp_path / "ledger.sqlite"
    make_tree(tmp_path / "one", folders=2, files=5, size=512)
    make_tree(tmp_path / "two", folders=2, files=5, size=512)
    reports = await asyncio.gather(
        run(api, state, [tmp_path / "one"], order_by="none", order_size=1),
        run(api, state, [tmp_path / "two"], order_by="none", order_size=1),
    )
    names = [o.key for report in reports for o in report.orders if not o.resumed]
    assert len(names) == 20 and len(set(names)) == 20, sorted(names)


# -- point 15: a state path with #, ? or % --------------------------------------------------


@pytest.mark.parametrize("folder", ["state#1", "state?x", "state%25"])
async def test_a_state_path_with_uri_characters_works_for_runs_and_dry_runs(
    api: HostileOrderAPI, tmp_path: Path, folder: str
) -> None:
    photos, state = tmp_path / "photos", tmp_path / folder / "ledger.sqlite"
    make_tree(photos, folders=1, files=2, size=512)
    assert [o.status for o in (await run(api, state, [photos])).orders] == ["created"]
    planned = await run(api, state, [photos], dry_run=True)
    assert planned.already_done == 2 and placed(planned) == []
    again = await run(api, state, [photos])
    assert api.count("POST", "/v2/orders") == 1 and again.already_done == 2


async def test_only_release_frees_the_images_of_an_order_of_unknown_outcome(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    photos, state = tmp_path / "photos", tmp_path / "ledger.sqlite"
    make_tree(photos, folders=1, files=2, size=1024)
    api.then(
        "/v2/orders",
        json_answer({"error": {"code": "unavailable", "message": "busy"}}, 503),
        json_answer({"error": {"code": "bad_request", "message": "from a gateway"}}, 400),
    )
    await run(api, state, [photos])
    ((key, _, _),) = await ledger_orders(state)
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": api.url, "STYLDOD_STATE": str(state)}

    unknown = await asyncio.to_thread(run_cli, "release", "no-such-order", env=env)
    released = await asyncio.to_thread(run_cli, "release", key, env=env)

    assert unknown.returncode == 2 and "no orders of unknown outcome" in unknown.stderr
    assert released.returncode == 0, released.stderr
    assert key in released.stdout and "2 images" in released.stdout
    again = await run(api, state, [photos])
    assert placed(again) == [("created", 2)]
    orders = await ledger_orders(state)
    assert orders[0] == (key, "refused", 2) and orders[1][0] != key and orders[1][1] == "created"
