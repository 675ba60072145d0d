"""The ledger on PostgreSQL: workers that share nothing but the server, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import (
    REPO,
    assert_each_file_in_one_order,
    assert_one_key_per_order,
    json_report,
    make_tree,
    run_cli,
)
from tests.servers import PostgresServer

# Another host, as far as claims go: its own host name and process table (the network stays
# the loopback one, since plain http is refused for anything else).
ELSEWHERE = ["unshare", "--uts", "--pid", "--fork", "--kill-child", "sh", "-c",
             'hostname "$0"; exec "$@"', "worker-host"]  # fmt: skip


def worker(
    box: Sandbox,
    state: str,
    *args: str | Path,
    budget: str | None = None,
    elsewhere: bool = False,
) -> subprocess.Popen[str]:
    """The runner as one worker of a job, on the ledger ``state`` (and the rate ``budget``);
    ``elsewhere``: on a host of its own, as far as claims can tell."""
    # The test's own budget folder stays (conftest): every worker of the key shares it.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STYLDOD_") or k == "STYLDOD_BUDGET_DIR"
    }
    env.update(STYLDOD_API_KEY=box.api_key, STYLDOD_BASE_URL=box.base_url, STYLDOD_STATE=state)
    if budget is not None:
        env["STYLDOD_BUDGET_URL"] = budget
    # Niced: the sandbox stands for a server on other hardware, and the arrival times it
    # records must not wait for the very clients it measures to leave it the CPU.
    command = ["nice", "-n", "5", sys.executable, "-m", "styldod_batch", "upload",
               *map(str, args), "--json"]  # fmt: skip
    return subprocess.Popen(
        [*ELSEWHERE, *command] if elsewhere else command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


async def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = await asyncio.to_thread(process.communicate, timeout=300)
    return process.returncode, out, err


def listings_of(photos: Path) -> list[Path]:
    return sorted(p for p in photos.iterdir() if p.is_dir())


@pytest.mark.slow
async def test_four_overlapping_workers_on_postgres_order_each_image_once(
    sandbox_factory: SandboxFactory, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=8, files=6, size=300)
    listings = await asyncio.to_thread(listings_of, photos)
    files = await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
    for trial in range(5):
        box = await sandbox_factory(rps=1000)
        state = await postgres_server.create_database(f"ledger_{trial}")
        inputs = [[photos], listings[:5], listings[3:], [listings[4]]]
        workers = [worker(box, state, *paths) for paths in inputs]
        for code, _out, err in [await finish(w) for w in workers]:
            assert code == 0, f"trial {trial}: {err}"
        assert box.api is not None and len(box.api.orders) == 8, f"trial {trial}"
        await assert_each_file_in_one_order(box, files)
        assert_one_key_per_order(box)


async def test_a_killed_worker_on_another_host_is_taken_over_when_its_lease_ends(
    sandbox_factory: SandboxFactory, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=4, files=40, size=300)
    files = await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
    box = await sandbox_factory(rps=1000)
    state = await postgres_server.create_database("killed")
    # The doomed worker goes slowly (5 requests/s), on a host of its own, with a short lease.
    doomed = worker(box, state, photos, "--rps", "5", "--lease", "3", elsewhere=True)
    deadline = asyncio.get_running_loop().time() + 60
    while len(box.log.select(kind="storage", status=200)) < 10:
        assert asyncio.get_running_loop().time() < deadline and doomed.poll() is None
        await asyncio.sleep(0.1)
    os.killpg(doomed.pid, signal.SIGKILL)
    await finish(doomed)

    survivor = worker(box, state, photos, "--lease", "3")
    code, out, err = await finish(survivor)

    assert code == 0, err
    assert "waiting for" in err, "the dead worker's listing was waited for, not taken at once"
    assert box.api is not None and len(box.api.orders) == 4
    await assert_each_file_in_one_order(box, files)
    assert_one_key_per_order(box)
    report = json_report(subprocess.CompletedProcess([], code, out, err))
    assert report["images"]["uploaded"] + report["images"]["already_done"] == 160


async def test_postgres_restarted_mid_job_the_workers_pause_then_finish(
    sandbox_factory: SandboxFactory, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=6, files=20, size=300)
    files = await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
    box = await sandbox_factory(rps=1000)
    state = await postgres_server.create_database("restarted")
    workers = [worker(box, state, photos, "--rps", "30") for _ in range(2)]
    deadline = asyncio.get_running_loop().time() + 60
    while len(box.log.select(kind="storage", status=200)) < 20:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    await postgres_server.restart()

    for code, _out, err in [await finish(w) for w in workers]:
        assert code == 0, err
    assert box.api is not None and len(box.api.orders) == 6
    await assert_each_file_in_one_order(box, files)
    assert_one_key_per_order(box)


async def test_an_unreachable_postgres_stops_the_run_at_once_naming_it(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=1, files=1, size=100)
    box = await sandbox_factory(rps=1000)
    state = "postgresql://someone:hunter2@127.0.0.1:9/ledger"

    completed = await asyncio.to_thread(
        run_cli,
        "upload",
        str(tmp_path / "photos"),
        env={
            "STYLDOD_API_KEY": box.api_key,
            "STYLDOD_BASE_URL": box.base_url,
            "STYLDOD_STATE": state,
        },
    )

    # Transient (exit 4), not a usage error: a nightly job retries on 4 (issue 20, point 4).
    assert completed.returncode == 4, completed.stderr
    assert "127.0.0.1:9" in completed.stderr and "cannot be reached" in completed.stderr
    assert "hunter2" not in completed.stderr
    assert box.log.select(kind="api") == [], "nothing was sent"
