"""``status``: one screen of counts by default, the full list with ``--all``, and filters
(``--listing``, ``--image-state``, ``--since``, ``--open``); and what ``-vv`` and a JSON log
say about a run."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import orjson

from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree
from tests.runner_inprocess import run_main


async def test_status_counts_by_default_lists_with_all_and_filters(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    make_tree(tmp_path / "first", folders=1, files=3, size=300, prefix="done")
    (tmp_path / "first" / "done-01" / "empty.jpg").write_bytes(b"")
    make_tree(tmp_path / "second", folders=2, files=2, size=300, prefix="open")
    ledger = tmp_path / "ledger.sqlite"
    state = ["--state", str(ledger)]
    first = await run_main("upload", str(tmp_path / "first"), *state, "--wait", "-q", env=env)
    assert first.returncode == 1, first.stderr  # the empty file
    await asyncio.sleep(0.05)
    between = datetime.now().isoformat()
    second = await run_main("upload", str(tmp_path / "second"), *state, "-q", env=env)
    assert second.returncode == 0, second.stderr

    async def status(*args: str) -> str:
        done = await run_main("status", *state, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    counts = await status()
    listed = await status("--all")
    also_listed = await status("--list")
    one = await status("--all", "--listing", "open-0[1]")
    failed = await status("--all", "--image-state", "failed")
    recent = orjson.loads(await status("--json", "--since", between))
    still_open = orjson.loads(await status("--json", "--open"))
    open_text = await status("--open")

    # The default: counts, no per-image lines, one screen.
    assert f"Ledger: {ledger}" in counts
    assert "Images: 1 failed, 4 processing, 3 completed" in counts, counts
    assert "Orders: 3" in counts and "2 open" in counts
    assert "Listings: 3" in counts
    assert "done-01/empty.jpg: empty file" in counts
    assert "photo" not in counts.replace("empty", ""), "no image listed by default"
    assert len(counts.splitlines()) <= 24
    # --all (or --list): every listing, its orders and their images.
    assert listed == also_listed
    assert all(name in listed for name in ("done-01", "open-01", "open-02"))
    assert listed.count("completed") >= 3
    # Filters.
    assert "open-01" in one and "open-02" not in one and "done-01" not in one
    assert "Listings: 1" in one
    assert f"failed     {tmp_path / 'first' / 'done-01' / 'empty.jpg'}" in failed
    assert "open-01" not in failed and "Images: 1 failed" in failed
    assert sorted(o["key"] for o in recent["orders"]) == ["open-01", "open-02"]
    assert sorted(o["key"] for o in still_open["orders"]) == ["open-01", "open-02"]
    assert [entry["name"] for entry in still_open["listings"]] == ["open-01", "open-02"]
    assert "Orders: 2" in open_text and "done-01" not in open_text


async def test_status_says_the_ledger_and_paths_absolute(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    make_tree(tmp_path / "photos", folders=1, files=1, size=300)
    (tmp_path / "photos" / "listing-01" / "empty.jpg").write_bytes(b"")
    await run_main(
        "upload", str(tmp_path / "photos"), "--state", str(tmp_path / "l.sqlite"), env=env
    )
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        done = await run_main("status", "--state", "l.sqlite", "--all")
    finally:
        os.chdir(here)

    assert done.returncode == 0, done.stderr
    assert f"Ledger: {tmp_path / 'l.sqlite'}" in done.stdout
    assert f"  {tmp_path / 'photos' / 'listing-01' / 'empty.jpg'}: empty file" in done.stdout


async def test_vv_logs_each_file_and_a_json_log_ends_with_a_summary(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    files = make_tree(tmp_path / "photos", folders=2, files=3, size=300)
    (tmp_path / "photos" / "listing-01" / "empty.jpg").write_bytes(b"")
    (tmp_path / "photos" / "listing-01" / "notes.txt").write_text("not a photo")
    common = ["--no-progress", "--log-format", "json"]

    vv = await run_main(
        "upload", str(tmp_path / "photos"), *common, "-vv", "--state", str(tmp_path / "a"), env=env
    )
    v = await run_main(
        "upload", str(tmp_path / "photos"), *common, "-v", "--state", str(tmp_path / "b"), env=env
    )
    again = await run_main(
        "upload", str(tmp_path / "photos"), *common, "-vv", "--state", str(tmp_path / "a"), env=env
    )

    records = [orjson.loads(line) for line in vv.stderr.splitlines()]
    by_file = [r for r in records if r["event"] in ("file", "file_failed", "file_skipped")]
    assert sorted(Path(r["path"]).name for r in by_file) == sorted(
        [f.name for f in files] + ["empty.jpg", "notes.txt"]
    ), "one line per file"
    uploaded = [r for r in by_file if r["event"] == "file"]
    assert {(r["level"], r["outcome"]) for r in uploaded} == {("debug", "uploaded")}
    assert {r["listing"] for r in uploaded} == {"listing-01", "listing-02"}
    summary = records[-1]
    assert summary["event"] == "summary", "the log ends with the summary"
    assert summary["images"]["uploaded"] == 6 and summary["images"]["failed"] == 1
    assert summary["images"]["skipped"] == 1
    assert sum(summary["orders"].values()) == 2
    assert summary["requests"]["storage"] == 6 and summary["exit_status"] == 1
    assert summary["level"] == "warning"
    # -v says orders and retries, not every file.
    v_events = {orjson.loads(line)["event"] for line in v.stderr.splitlines()}
    assert "file" not in v_events and "summary" in v_events
    # A re-run: each file already done, said as such.
    outcomes = {
        orjson.loads(line).get("outcome")
        for line in again.stderr.splitlines()
        if orjson.loads(line)["event"] == "file"
    }
    assert outcomes == {"already_done"}
