"""The ``styldod-batch upload`` runner as a user runs it, against the sandbox: in this process,
and the memory bound in a process of its own (its peak is the whole process's)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from styldod_batch.engine import Uploader
from styldod_batch.sandbox import KeyConfig
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import Settings
from tests.helpers import Ran, json_report, make_tree, run_cli, run_cli_process

SECRET_KEY = "sk-live-7c1f9e0b2d4a"


async def cli(*args: str, env: dict[str, str] | None = None) -> Ran:
    return await asyncio.to_thread(run_cli, *args, env=env)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """What must not differ between two runs of the same job (IDs and timings may)."""
    return {
        "images": report["images"],
        "orders": sorted((o["key"], o["images"], o["error"]) for o in report["orders"]),
        "order_statuses": sorted(o["status"] for o in report["orders"]),
        "failures": sorted((Path(f["path"]).name, f["error"]) for f in report["failures"]),
        "requests": report["requests"],
    }


async def test_library_and_runner_give_the_same_report(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path, folders=3, files=7, size=3000)
    (tmp_path / "listing-01" / "readme.txt").write_text("skip me")
    (tmp_path / "listing-02" / "empty.png").write_bytes(b"")

    library_box = await sandbox_factory(rps=1000)
    settings = Settings(
        base_url=library_box.base_url, api_key=library_box.api_key, rps=200, upload_rps=0
    )
    async with Uploader(settings) as uploader:
        library = (await uploader.run([tmp_path])).to_dict()

    runner_box = await sandbox_factory(rps=1000)
    completed = await cli(
        "upload",
        str(tmp_path),
        "--rps",
        "200",
        "--upload-rps",
        "0",
        "--json",
        "--separate-ledger",  # another service for the same key and state
        env={"STYLDOD_API_KEY": runner_box.api_key, "STYLDOD_BASE_URL": runner_box.base_url},
    )
    assert completed.returncode == 1, completed.stderr  # the empty file failed
    runner = json_report(completed)
    assert comparable(runner) == comparable(library)
    assert runner["images"] == {
        "total": 23,
        "uploaded": 21,
        "skipped": 1,
        "failed": 1,
        "already_done": 0,
        "changed": 0,
        "late": 0,
        "moved": 0,
    }
    assert set(runner) >= {"images", "orders", "failures", "requests", "elapsed_s", "peak_rss_mb"}
    assert all(o["orderID"] for o in runner["orders"])


async def test_runner_exit_statuses_and_messages(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path, folders=1, files=2, size=100)
    box = await sandbox_factory(keys={SECRET_KEY: KeyConfig()}, api_key=SECRET_KEY)
    env = {"STYLDOD_BASE_URL": box.base_url}

    ok = await cli("upload", str(tmp_path), "--json", env={**env, "STYLDOD_API_KEY": SECRET_KEY})
    assert ok.returncode == 0, ok.stderr
    assert json_report(ok)["images"] == {
        "total": 2,
        "uploaded": 2,
        "skipped": 0,
        "failed": 0,
        "already_done": 0,
        "changed": 0,
        "late": 0,
        "moved": 0,
    }

    missing = await cli(
        "upload", str(tmp_path / "nope"), env={**env, "STYLDOD_API_KEY": SECRET_KEY}
    )
    assert missing.returncode == 2
    assert "nope: no such file or directory" in missing.stderr

    bad_option = await cli(
        "upload",
        str(tmp_path),
        "--option",
        "basic_editing=maybe",
        env={**env, "STYLDOD_API_KEY": SECRET_KEY},
    )
    assert bad_option.returncode == 2
    assert "option basic_editing must be a boolean" in bad_option.stderr

    plain_http = await cli(
        "upload",
        str(tmp_path),
        "--base-url",
        "http://orders.example.com",
        env={"STYLDOD_API_KEY": SECRET_KEY},
    )
    assert plain_http.returncode == 2
    assert "plain http://" in plain_http.stderr

    no_key = await cli("upload", str(tmp_path), env=env)
    assert no_key.returncode == 2
    assert "STYLDOD_API_KEY" in no_key.stderr

    wrong_key = await cli("upload", str(tmp_path), "--api-key", SECRET_KEY + "x", env=env)
    assert wrong_key.returncode == 3
    assert "401" in wrong_key.stderr

    for run in (ok, missing, bad_option, plain_http, no_key, wrong_key):
        assert SECRET_KEY not in run.stdout + run.stderr, "the key never appears in output"


async def test_dry_run_sends_nothing(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    make_tree(tmp_path, folders=2, files=120, size=10)
    box = await sandbox_factory()
    completed = await cli(
        "upload", str(tmp_path), "--dry-run", "--json", env={"STYLDOD_BASE_URL": box.base_url}
    )
    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert sorted((o["key"], o["images"], o["status"]) for o in report["orders"]) == [
        ("listing-01-1", 100, "planned"),
        ("listing-01-2", 20, "planned"),
        ("listing-02-1", 100, "planned"),
        ("listing-02-2", 20, "planned"),
    ]
    assert len(box.log) == 0


# The bound the README promises (peak_rss_mb counts MiB), and files of half of it: one file
# held whole, or a sixteenth of each of the 16 uploads at once, shows against the same run's
# peak with tiny files (the interpreter and its libraries, some 45 MiB), whatever that is.
BOUND_MIB = 100
SIZE = 48 * 1024 * 1024
FILES = 17


def sparse_images(folder: Path, size: int) -> None:
    folder.mkdir()
    for index in range(FILES):
        with (folder / f"photo-{index}.jpg").open("wb") as handle:
            handle.truncate(size)  # sparse: the disk holds none of it
            handle.write(b"\xff\xd8\xff\xe0")  # framed as a JPEG for the content check
            handle.seek(size - 2)
            handle.write(b"\xff\xd9")


@pytest.mark.slow
async def test_more_large_files_than_uploads_at_once_hold_no_file_in_memory(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    # More files than the run's 16 uploads at once (17). (17 of 48 MiB against a baseline
    # prove what 17 of 104 MiB against the bound alone did, with 1 GB fewer bytes through
    # storage.)
    sparse_images(tmp_path / "tiny", 4096)
    sparse_images(tmp_path / "large", SIZE)
    box = await sandbox_factory()
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    peaks = {}
    for name in ("tiny", "large"):
        completed = await asyncio.to_thread(
            run_cli_process, "upload", str(tmp_path / name), "--upload-rps", "0", "--json", env=env
        )
        assert completed.returncode == 0, completed.stderr
        report = json_report(completed)
        assert report["images"]["uploaded"] == FILES
        peaks[name] = report["peak_rss_mb"]
    print(f"peak RSS: {peaks}")
    stored = box.log.select(kind="storage", method="PUT", status=200)
    assert sorted(e.bytes_in for e in stored) == [4096] * FILES + [SIZE] * FILES
    assert peaks["large"] < BOUND_MIB, peaks
    assert peaks["large"] - peaks["tiny"] < SIZE / 2**20 / 2, peaks
