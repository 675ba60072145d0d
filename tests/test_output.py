"""What people and logs see: the summary, the progress line, the log, the runner's manners."""

from __future__ import annotations

import asyncio
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from rich.cells import cell_len

from styldod_batch import Settings, Uploader
from styldod_batch.models import ImageResult, OrderResult
from styldod_batch.progress import Meter, ProgressShow
from styldod_batch.report import Report
from styldod_batch.sandbox import Faults, Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import REPO, json_report, make_tree, run_cli, run_cli_process
from tests.runner_inprocess import run_main


def env_for(box: Sandbox) -> dict[str, str]:
    return {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}


# -- the summary --------------------------------------------------------------------------------


def test_the_summary_says_one_order_and_aligns_wide_names() -> None:
    report = Report()
    report.add_image(ImageResult("a/1.jpg", "uploaded", "1.jpg", size=10))
    report.add_order(OrderResult("東京タワー", "created", 1, order_id="7"))
    report.add_order(OrderResult("listing-1", "created", 12, order_id="8"))

    lines = report.summary().splitlines()

    rows = [line for line in lines if line.startswith("  ")]
    assert "1 image " in rows[1] or rows[1].rstrip().endswith("1 image")
    assert "12 images" in rows[0]
    # The status column starts at the same terminal cell on both rows.
    starts = [cell_len(row[: row.index("created")]) for row in rows]
    assert starts[0] == starts[1]


def test_after_a_stop_the_summary_counts_what_was_not_reached() -> None:
    report = Report(expected=600, found=180, interrupted=True, peak_rss_mb=40.0)
    for n in range(159):
        report.add_image(ImageResult(f"{n}.jpg", "uploaded", size=1))

    text = report.summary()

    assert "Images: 600 total, 159 uploaded" in text
    assert "441 not reached" in text
    assert report.to_dict()["images"]["not_reached"] == 441
    assert "Peak memory: 40.0 MB" in text
    # Every line fits an 80-column terminal, with large counts too.
    report.requests.api, report.requests.storage = 12_345, 54_321
    report.requests.retries, report.requests.rate_limited = 10_000, 10_000
    wide = [line for line in report.summary().splitlines() if cell_len(line) > 80]
    assert wide == []


# -- progress ------------------------------------------------------------------------------------


def test_rates_count_only_what_this_run_uploaded() -> None:
    meter = Meter()
    report = Report(expected=100)
    meter.read(report)
    for n in range(50):  # done by an earlier run, or skipped: instant, not a rate
        report.add_image(ImageResult(f"{n}.jpg", "ordered", resumed=True))
    time.sleep(0.2)
    snapshot = meter.read(report)
    assert snapshot.files_per_s == 0 and snapshot.already_done == 50
    assert snapshot.total == 100 and snapshot.eta_s is None


async def test_without_a_terminal_the_log_shows_the_progress(
    sandbox_factory: SandboxFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path / "photos", folders=2, files=20, size=300)
    box = await sandbox_factory(rps=1000, faults=Faults(latency_ms=50))
    settings = Settings(base_url=box.base_url, api_key=box.api_key, concurrency=2)
    caplog.set_level(logging.INFO, logger="styldod_batch")
    async with Uploader(settings) as up:
        show = ProgressShow(lambda: up.current_report, terminal=False, log_every_s=0.2)
        show.start()
        await up.run([tmp_path / "photos"])
        await show.close()

    progress = [r for r in caplog.records if getattr(r, "event", None) == "progress"]
    assert progress, "no progress line in the log"
    assert all(getattr(r, "phase", "") for r in progress)
    assert any("files/s" in r.getMessage() for r in progress)
    orders = [r for r in caplog.records if getattr(r, "event", None) == "order"]
    assert sorted(getattr(r, "order", "") for r in orders) == ["listing-01", "listing-02"]


async def test_on_a_terminal_a_live_line_shows_the_run(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=2, files=30, size=300)
    box = await sandbox_factory(rps=20)
    # PUTs capped at 20/s, so the upload lasts long enough (3 s) for the line to be drawn.
    env = {**env_for(box), "STYLDOD_UPLOAD_RPS": "20"}
    output = await asyncio.to_thread(run_on_a_terminal, tmp_path / "photos", env)

    assert "uploading" in output and "files/s" in output and "%" in output
    assert "60/60 100%" in output
    assert "Images: 60 total, 60 uploaded" in output
    assert "Traceback" not in output


def run_on_a_terminal(photos: Path, env: dict[str, str]) -> str:
    """The runner with stdout and stderr on a pseudo-terminal; everything it drew."""
    leader, follower = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STYLDOD_")}
    full_env.update(env, COLUMNS="160", TERM="xterm")
    process = subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", "upload", str(photos)],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env=full_env,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the other end closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(leader)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


# -- the log -----------------------------------------------------------------------------------


async def test_a_json_log_is_one_object_per_line(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=2, files=3, size=300)
    (tmp_path / "photos" / "listing-01" / "empty.jpg").write_bytes(b"")
    # The first three PUTs answered 503: retried, and each retry logged.
    box = await sandbox_factory(rps=1000, faults=Faults(storage_5xx_next=3))

    completed = await asyncio.to_thread(
        run_cli,
        "upload",
        str(tmp_path / "photos"),
        "--json",
        "--log-format",
        "json",
        "-v",
        env=env_for(box),
    )

    assert completed.returncode == 1  # the empty file
    records = [orjson.loads(line) for line in completed.stderr.splitlines() if line.strip()]
    assert records, completed.stderr
    assert all({"level", "event", "time"} <= set(r) for r in records)
    events = {r["event"] for r in records}
    assert {"order", "file_failed", "retry"} <= events
    retry = next(r for r in records if r["event"] == "retry")
    assert retry["reason"] and retry["wait_s"] >= 0 and retry["attempt"] >= 2
    failed = [r for r in records if r["event"] == "file_failed"]
    assert failed and all(
        r["level"] == "warning" and r["path"].endswith("empty.jpg") for r in failed
    ), failed
    assert json_report(completed)["images"]["failed"] == 1
    assert box.api_key not in completed.stderr


# -- the runner's manners ----------------------------------------------------------------------


async def test_version_suggestions_and_one_line_errors() -> None:
    # The runner in a process of its own once (its start, its exit status, its streams); the
    # same manners in this process after it.
    version = run_cli_process("--version")
    assert version.returncode == 0 and version.stdout.startswith("styldod-batch ")

    typo = await run_main("upload", "photos", "--dry-rn")
    assert typo.returncode == 2
    assert "did you mean --dry-run?" in typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1, typo.stderr

    bad = await run_main("upload", "photos", "--rps", "fast")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--rps" in bad.stderr and "usage:" not in bad.stderr

    command = await run_main("uplaod")
    assert command.returncode == 2 and "did you mean upload?" in command.stderr


async def test_download_prints_a_download_summary(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=1, files=2, size=300)
    box = await sandbox_factory(rps=1000)
    done = await run_main("upload", str(tmp_path / "photos"), "--wait", "--json", env=env_for(box))
    assert done.returncode == 0, done.stderr

    fetched = await run_main("download", str(tmp_path / "out"), env=env_for(box))

    assert fetched.returncode == 0, fetched.stderr
    assert "Outputs: 2 downloaded" in fetched.stdout
    assert "Images:" not in fetched.stdout and "Orders:" not in fetched.stdout


async def test_a_file_that_is_not_an_image_named_on_its_own_is_an_error(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    completed = await run_main("upload", str(notes), "--dry-run", "--json")

    assert completed.returncode == 1
    (failure,) = json_report(completed)["failures"]
    assert failure["path"] == str(notes) and "not an image type" in failure["error"]
