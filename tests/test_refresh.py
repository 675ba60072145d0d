"""Upload at night, download in the morning: orders placed without waiting are refreshed
from the API by ``refresh`` (and by ``download`` first), with no inputs, and then download."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import json_report, make_tree, run_cli


async def test_the_morning_after_an_upload_without_wait(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=3, files=2, size=800)
    box = await sandbox_factory(rps=1000, order_step_s=0.1)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    night = await asyncio.to_thread(
        run_cli, "upload", str(tmp_path / "photos"), "--json", "--no-progress", env=env
    )
    assert night.returncode == 0, night.stderr
    assert {o["status"] for o in json_report(night)["orders"]} != {"completed"}

    async def all_completed_at_the_service() -> None:
        assert box.api is not None
        for _ in range(200):
            if all(o.status == "completed" for o in box.api.orders.values()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the sandbox never completed the orders")

    await all_completed_at_the_service()
    refreshed = await asyncio.to_thread(run_cli, "refresh", "--json", env=env)
    assert refreshed.returncode == 0, refreshed.stderr
    answer = orjson.loads(refreshed.stdout)
    assert answer == {"asked": 3, "orders": {"completed": 3}}
    again = await asyncio.to_thread(run_cli, "refresh", "--json", env=env)
    assert orjson.loads(again.stdout)["asked"] == 0  # nothing open any more

    morning = await asyncio.to_thread(
        run_cli, "download", str(tmp_path / "edited"), "--json", env=env
    )
    assert morning.returncode == 0, morning.stderr
    assert json_report(morning)["outputs"]["downloaded"] == 6


async def test_download_refreshes_before_it_fetches(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Orders placed without --wait stayed pre_processing in the ledger and `download`
    skipped them; it now asks the API first."""
    make_tree(tmp_path / "photos", folders=2, files=2, size=800)
    box = await sandbox_factory(rps=1000, order_step_s=0.05)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    night = await asyncio.to_thread(
        run_cli, "upload", str(tmp_path / "photos"), "--json", "--no-progress", env=env
    )
    assert night.returncode == 0, night.stderr
    await asyncio.sleep(1.0)  # the service finishes meanwhile (4 steps of 0.05 s)
    morning = await asyncio.to_thread(
        run_cli, "download", str(tmp_path / "edited"), "--json", env=env
    )
    assert morning.returncode == 0, morning.stderr
    assert json_report(morning)["outputs"]["downloaded"] == 4
