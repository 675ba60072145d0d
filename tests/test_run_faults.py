"""Whole runs of the runner against a sandbox that misbehaves, through a proxy, or is not
there: each fault costs what it concerns, and the run says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from styldod_batch.sandbox import Faults, Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.forward_proxy import ForwardProxy
from tests.helpers import (
    assert_each_file_in_one_order,
    assert_one_key_per_order,
    json_report,
    make_tree,
    run_cli,
)

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                   "no_proxy", "ALL_PROXY", "all_proxy")  # fmt: skip


def env_for(box: Sandbox, **extra: str) -> dict[str, str]:
    return {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url, **extra}


@pytest.mark.slow
async def test_refused_urls_odd_retry_afters_and_a_redirect_cost_only_their_files(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=6, files=50, size=2000)
    faults = Faults(
        # These files' URLs are refused every time (4 of the 300, chosen by name): they fail,
        # alone.
        storage_403=0.01,
        storage_429=0.01,
        api_429=0.05,
        # In turn: huge first (capped, it costs the cap's 20 s), then garbage and negative. The
        # other spellings of huge, "1e9" and "inf", are parsed and capped in the unit tests.
        retry_after_values=("86400", "soon", "-5", "1"),
        storage_redirects=1,
    )
    box = await sandbox_factory(faults=faults)

    completed = await asyncio.to_thread(run_cli, "upload", str(photos), "--json", env=env_for(box))

    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    report = json_report(completed)
    refused = {e.path for e in box.log.select(kind="storage", method="PUT", status=403)}
    assert len(refused) == 4, refused
    assert report["images"]["failed"] == len(refused) == len(report["failures"])
    assert all("403" in f["error"] or "denied" in f["error"].lower() for f in report["failures"])
    assert report["images"]["uploaded"] == 300 - len(refused)
    assert [e.status for e in box.log.select(kind="storage") if e.fault == "redirect"] == [307]
    assert len(report["orders"]) == 6 and all(o["orderID"] for o in report["orders"])
    good = [
        f
        for f in await asyncio.to_thread(lambda: sorted(photos.rglob("*.jpg")))
        if str(f) not in {x["path"] for x in report["failures"]}
    ]
    await assert_each_file_in_one_order(box, good)
    assert_one_key_per_order(box)


async def test_a_proxy_in_the_environment_carries_api_calls_and_puts(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=2, files=3, size=500)
    box = await sandbox_factory(rps=1000)
    async with ForwardProxy() as proxy:
        # Only this proxy: none other from the environment, no exceptions for loopback.
        variables = {**dict.fromkeys(PROXY_VARIABLES, ""), "HTTP_PROXY": proxy.url}
        variables["http_proxy"] = proxy.url  # the lower-case one wins when both are set
        env = env_for(box, **variables)
        completed = await asyncio.to_thread(
            run_cli, "upload", str(tmp_path / "photos"), "--json", env=env
        )
        seen = list(proxy.seen)

    assert completed.returncode == 0, completed.stderr
    puts = [url for method, url in seen if method == "PUT"]
    assert len(puts) == 6 and all(url.startswith(box.storage_url) for url in puts), seen
    posts = [url for method, url in seen if method == "POST"]
    assert posts.count(box.base_url + "/v2/upload-urls") >= 1
    assert posts.count(box.base_url + "/v2/orders") == 2


async def test_an_api_that_is_not_there_ends_the_run_in_one_line(tmp_path: Path) -> None:
    make_tree(tmp_path / "photos", folders=3, files=30, size=100)
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": "http://127.0.0.1:9"}  # nothing there

    completed = await asyncio.to_thread(run_cli, "upload", str(tmp_path / "photos"), env=env)

    assert completed.returncode == 4, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert lines[-1].startswith("styldod-batch: the service could not be reached at 127.0.0.1:9")
    assert not any(line.count("no upload URL") for line in completed.stdout.splitlines())
    assert "Traceback" not in completed.stderr
