"""Resumable runs on the ledger: exactly-once orders across crashes, as a user runs them."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import (
    REPO,
    assert_each_file_in_one_order,
    assert_one_key_per_order,
    image_bytes,
    json_report,
    make_tree,
    run_cli,
)


def upload_args(root: Path, journal: Path, *extra: str) -> list[str]:
    return ["upload", str(root), "--journal", str(journal), "--json", "--no-progress", *extra]


def env_for(box: Sandbox) -> dict[str, str]:
    return {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STYLDOD_")}
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def orders_are_exactly_once(box: Sandbox, expected_orders: int, root: Path) -> None:
    assert box.api is not None
    assert len(box.api.orders) == expected_orders, "exactly one order per listing, never two"
    files = await asyncio.to_thread(lambda: sorted(root.rglob("*.jpg")))
    await assert_each_file_in_one_order(box, files)
    assert_one_key_per_order(box)


@pytest.mark.slow
async def test_sigkill_at_random_moments_then_rerun_creates_each_order_once(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=10, files=30, size=2048)
    box = await sandbox_factory(rps=1000)
    journal = tmp_path / "job.sqlite"
    # PUTs share the API's 20 requests/s, so the job lasts long enough for 10 kills.
    args = [*upload_args(tmp_path / "job", journal), "--share-api-budget"]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = attempts = 0
    while kills < 10:
        attempts += 1
        assert attempts < 30, f"seed {seed}: the job finished before 10 kills"
        process = start(args, env_for(box))
        try:
            await asyncio.to_thread(process.wait, rng.uniform(0.3, 2.0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            kills += 1
        await asyncio.to_thread(process.communicate)
        if process.returncode == 0:
            break
    final = await asyncio.to_thread(run_cli, *args, env=env_for(box))
    assert final.returncode == 0, f"seed {seed}: {final.stderr}"
    report = json_report(final)
    assert kills >= 10, f"seed {seed}"
    images = report["images"]
    assert images["uploaded"] + images["already_done"] == 300 and images["failed"] == 0
    assert len(report["orders"]) == 10 and all(o["orderID"] for o in report["orders"])
    await orders_are_exactly_once(box, 10, tmp_path / "job")

    # A re-run of the finished job sends no PUT and no order request.
    before = len(box.log)
    again = await asyncio.to_thread(run_cli, *args, env=env_for(box))
    assert again.returncode == 0, again.stderr
    rerun = json_report(again)
    assert rerun["images"]["already_done"] == 300 and rerun["images"]["uploaded"] == 0
    assert sorted(o["orderID"] for o in rerun["orders"]) == sorted(
        o["orderID"] for o in report["orders"]
    )
    assert box.log.entries[before:] == []
    assert rerun["requests"] == {"api": 0, "storage": 0, "retries": 0, "rate_limited": 0}


async def test_status_shows_each_listing_its_orders_and_its_images(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=2, files=3, size=500)
    (tmp_path / "job" / "listing-01" / "empty.jpg").write_bytes(b"")
    box = await sandbox_factory(rps=1000)
    ledger = tmp_path / "j.sqlite"
    done = await asyncio.to_thread(
        run_cli, *upload_args(tmp_path / "job", ledger), env=env_for(box)
    )
    assert done.returncode == 1  # the empty file
    late = tmp_path / "job" / "listing-02" / "photo-9.jpg"
    late.write_bytes(image_bytes(300))
    changed = tmp_path / "job" / "listing-01" / "photo-1.jpg"
    changed.write_bytes(image_bytes(300))
    again = await asyncio.to_thread(
        run_cli, *upload_args(tmp_path / "job", ledger, "--no-follow-up"), env=env_for(box)
    )
    assert again.returncode == 1, again.stderr  # the empty file, still

    status = await asyncio.to_thread(run_cli, "status", "--state", str(ledger), "--json")

    assert status.returncode == 0, status.stderr
    body = orjson.loads(status.stdout)
    assert body["images"] == {"ordered": 5, "changed": 1, "late": 1}
    assert sorted(o["key"] for o in body["orders"]) == ["listing-01", "listing-02"]
    assert all(o["orderID"] and o["state"] == "created" for o in body["orders"])
    listings = {entry["name"]: entry for entry in body["listings"]}
    assert listings["listing-01"]["changed"] == [str(changed)]
    assert listings["listing-02"]["late"] == [str(late)]
    assert [o["key"] for o in listings["listing-02"]["orders"]] == ["listing-02"]
    assert [Path(f["path"]).name for f in body["failures"]] == ["empty.jpg"]
    assert box.api_key not in status.stdout
    # With the account's key, status finds its ledger by itself.
    default = await asyncio.to_thread(
        run_cli, "status", "--json", env={**env_for(box), "STYLDOD_STATE": str(ledger)}
    )
    assert orjson.loads(default.stdout)["images"] == body["images"]
    text = await asyncio.to_thread(run_cli, "status", "--journal", str(ledger), "--all")
    assert "listing-01" in text.stdout and "empty.jpg: empty file" in text.stdout
    assert f"late: {late}" in text.stdout and f"changed: {changed}" in text.stdout
    with sqlite3.connect(ledger) as db:
        assert box.api_key not in str(db.execute("SELECT * FROM meta").fetchall())


async def test_bad_ledgers_are_refused_and_left_as_they_are(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=1, files=2, size=500)
    box = await sandbox_factory(rps=1000)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    refused = await asyncio.to_thread(
        run_cli, *upload_args(tmp_path / "job", garbage), env=env_for(box)
    )
    assert refused.returncode == 2
    assert "corrupt" in refused.stderr and str(garbage) in refused.stderr
    assert garbage.read_bytes() == b"this is not a database" * 100

    good = tmp_path / "good.sqlite"
    first = await asyncio.to_thread(run_cli, *upload_args(tmp_path / "job", good), env=env_for(box))
    assert first.returncode == 0, first.stderr
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(good.read_bytes()[: 4096 + 100])
    cut = await asyncio.to_thread(
        run_cli, *upload_args(tmp_path / "job", truncated), env=env_for(box)
    )
    assert cut.returncode == 2, cut.stdout
    assert "ledger" in cut.stderr and "Traceback" not in cut.stderr

    other = await sandbox_factory(rps=1000)
    mismatch = await asyncio.to_thread(
        run_cli, *upload_args(tmp_path / "job", good), env=env_for(other)
    )
    assert mismatch.returncode == 2
    assert "ledger of another account (different base_url)" in mismatch.stderr
    forced = await asyncio.to_thread(
        run_cli, *upload_args(tmp_path / "job", good, "--force"), env=env_for(other)
    )
    assert forced.returncode == 0, forced.stderr
    # Other options are not another job: the listing is ordered already.
    options = await asyncio.to_thread(
        run_cli,
        *upload_args(tmp_path / "job", good, "--option", "basic_editing=true"),
        env=env_for(box),
    )
    assert options.returncode == 0, options.stderr
    assert json_report(options)["images"]["already_done"] == 2


async def test_sigint_finishes_in_flight_work_and_a_rerun_completes(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=4, files=50, size=1024)
    box = await sandbox_factory(rps=1000)
    journal = tmp_path / "j.sqlite"
    args = upload_args(tmp_path / "job", journal)
    process = start(args, env_for(box))
    deadline = time.monotonic() + 60
    while len(box.log.select(kind="storage", status=200)) < 30:
        assert time.monotonic() < deadline and process.poll() is None
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 130, stderr
    report = orjson.loads(stdout)
    assert 30 <= report["images"]["uploaded"] < 200
    assert "finishing what is in flight" in stderr
    uploaded_before = report["images"]["uploaded"]

    final = await asyncio.to_thread(run_cli, *args, env=env_for(box))
    assert final.returncode == 0, final.stderr
    again = json_report(final)
    assert again["images"]["already_done"] >= uploaded_before
    assert again["images"]["already_done"] + again["images"]["uploaded"] == 200
    await orders_are_exactly_once(box, 4, tmp_path / "job")
