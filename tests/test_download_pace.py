"""``download --download-rps N`` paces the outputs it fetches, as ``upload`` does: the
sandbox's request log never shows more than N output GETs in any second."""

from __future__ import annotations

import asyncio
from pathlib import Path

from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import json_report, make_tree, run_cli_process

RPS = 2
# The client spaces its requests; their arrivals may bunch by scheduling jitter (a few ms).
JITTER_S = 0.02


async def test_download_rps_caps_the_outputs_fetched_per_second(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=3, files=2, size=800)
    box = await sandbox_factory(rps=1000, order_step_s=0.05)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    placed = await asyncio.to_thread(
        run_cli_process, "upload", str(tmp_path / "photos"), "--json", "--no-progress", env=env
    )
    assert placed.returncode == 0, placed.stderr
    assert len(json_report(placed)["orders"]) == 3
    # The orders finish on the sandbox's side (download asks the API before it fetches); not
    # followed with --wait, whose polling interval would be most of the test.
    assert box.api is not None
    for _ in range(200):
        if {o.status for o in box.api.orders.values()} == {"completed"}:
            break
        await asyncio.sleep(0.05)
    assert {o.status for o in box.api.orders.values()} == {"completed"}
    assert not [e for e in box.log.entries if e.kind == "output"], "nothing fetched yet"

    fetched = await asyncio.to_thread(
        run_cli_process,
        "download",
        str(tmp_path / "edited"),
        "--download-rps",
        str(RPS),
        "--json",
        env=env,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert json_report(fetched)["outputs"]["downloaded"] == 6
    times = sorted(e.mono for e in box.log.entries if e.kind == "output" and e.method == "GET")
    assert len(times) == 6
    busiest = max(sum(1 for t in times if start <= t < start + 1.0 - JITTER_S) for start in times)
    assert busiest <= RPS, f"{busiest} outputs fetched within one second: {times}"
    # Paced, 6 outputs at 2/s span at least two seconds (unpaced they take milliseconds).
    assert times[-1] - times[0] >= (len(times) / RPS - 1) - JITTER_S
