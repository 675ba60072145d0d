"""Many workers, one key: a shared rate budget (Redis, or a file on one machine) and a shared
ledger (PostgreSQL, or SQLite on one machine), as real processes against a sandbox that
counts every request of the key, API calls and storage PUTs together."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from styldod_batch.identity import key_label
from styldod_batch.ledger.location import key_fingerprint
from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.sandbox.requestlog import LogEntry, busiest_window, most_in_window
from tests.helpers import assert_each_file_in_one_order, assert_one_key_per_order, make_tree
from tests.servers import PostgresServer, RedisServer
from tests.test_shared_ledger import worker


def key_window(box: Sandbox) -> int:
    """The most requests of the sandbox's key in any one-second window, as the sandbox saw
    them arrive: API calls and storage PUTs together."""
    return most_in_window([e.mono for e in key_requests(box)])


def key_requests(box: Sandbox) -> list[LogEntry]:
    fingerprint = key_fingerprint_of(box)
    return [
        e
        for e in box.log.entries
        if e.kind in ("api", "storage") and e.key_fingerprint == fingerprint
    ]


def busiest(box: Sandbox) -> str:
    """The busiest second, request by request (for a failure's message)."""
    window = busiest_window([e.mono for e in key_requests(box)])
    chosen = sorted(
        (e for e in key_requests(box) if window[0] <= e.mono <= window[-1]), key=lambda e: e.mono
    )
    return ", ".join(
        f"{(e.mono - window[0]) * 1000:.0f} ms {e.method} {e.path[-24:]} {e.status}" for e in chosen
    )


def key_fingerprint_of(box: Sandbox) -> str:
    return key_label(box.api_key)


def start_worker(
    box: Sandbox, paths: list[Path], *, state: str, budget: str | None, elsewhere: bool = False
) -> subprocess.Popen[str]:
    # The sandbox counts PUTs against the key (limit_storage_per_key), and the point is one
    # window for every request of the key: PUTs take the API's budget (the old pace).
    return worker(box, state, *paths, "--share-api-budget", budget=budget, elsewhere=elsewhere)


async def wait_all(workers: list[subprocess.Popen[str]]) -> None:
    for process in workers:
        _out, err = await asyncio.to_thread(process.communicate, timeout=600)
        assert process.returncode == 0, err


async def stored_after(box: Sandbox, count: int) -> None:
    for _ in range(1200):
        if len(box.log.select(kind="storage", status=200)) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} uploads after 60 s")


@pytest.mark.slow
async def test_four_workers_hold_the_keys_limit_together_and_order_each_image_once(
    sandbox_factory: SandboxFactory,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    # 160 files in 20 listings, about 200 requests: over eight seconds at the key's limit, every
    # one-second window of them held to 20 as well as 1,000 files' fifty seconds would.
    make_tree(photos, folders=20, files=8, size=2000)
    listings = await asyncio.to_thread(lambda: sorted(p for p in photos.iterdir()))
    box = await sandbox_factory(rps=20, limit_storage_per_key=True)
    state = await postgres_server.create_database("four_workers")
    inputs = [[photos], listings[:12], listings[8:], [listings[10]]]

    # Two of them on "another host" (a host name and process table of their own).
    workers = [
        start_worker(box, paths, state=state, budget=redis_server.url, elsewhere=n >= 2)
        for n, paths in enumerate(inputs)
    ]
    await wait_all(workers)

    assert key_window(box) <= 20, busiest(box)
    assert box.log.select(status=429) == [], "no request was refused for the rate"
    assert box.api is not None and len(box.api.orders) == 20
    files = await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
    await assert_each_file_in_one_order(box, files)
    assert_one_key_per_order(box)
    # The key's budget lives in Redis under its fingerprint, never the key itself.
    keys = await asyncio.to_thread(redis_keys, redis_server)
    assert keys and all(box.api_key not in key for key in keys)
    assert any(key_fingerprint(box.api_key) in key for key in keys)


def redis_keys(server: RedisServer) -> list[str]:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return [k.decode() if isinstance(k, bytes) else str(k) for k in client.keys("*")]
    finally:
        client.close()


@pytest.mark.slow
async def test_redis_then_postgres_restarted_mid_job(
    sandbox_factory: SandboxFactory,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=6, files=16, size=1000)  # 96 files: five seconds at the limit
    box = await sandbox_factory(rps=20, limit_storage_per_key=True)
    state = await postgres_server.create_database("restarts")
    workers = [start_worker(box, [photos], state=state, budget=redis_server.url) for _ in "ab"]

    await stored_after(box, 25)
    await redis_server.restart()
    await stored_after(box, 55)
    before_postgres = len(box.log.select(kind="storage", status=200))
    await postgres_server.restart()
    await wait_all(workers)

    assert before_postgres < 96, "both restarts came before the job's end"

    assert key_window(box) <= 20, busiest(box)
    assert box.log.select(status=429) == []
    assert box.api is not None and len(box.api.orders) == 6
    files = await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
    await assert_each_file_in_one_order(box, files)
    assert_one_key_per_order(box)


@pytest.mark.slow
async def test_one_machine_no_server_two_processes_share_ledger_and_budget(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=6, files=12, size=1000)
    box = await sandbox_factory(rps=20, limit_storage_per_key=True)
    state = str(tmp_path / "state")  # one SQLite ledger folder; its budget file beside it

    await wait_all([start_worker(box, [photos], state=state, budget=None) for _ in "ab"])

    assert key_window(box) <= 20, busiest(box)
    assert box.log.select(status=429) == []
    assert box.api is not None and len(box.api.orders) == 6
    files = await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
    await assert_each_file_in_one_order(box, files)
    beside = await asyncio.to_thread(lambda: [p.suffix for p in Path(state).iterdir()])
    assert ".sqlite" in beside
    # The key's one budget on this machine: in the budget folder, wherever the ledger is.
    budgets = Path(os.environ["STYLDOD_BUDGET_DIR"])
    assert await asyncio.to_thread(lambda: [p.suffix for p in budgets.iterdir()]) == [".budget"]
