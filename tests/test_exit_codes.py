"""Exit statuses a nightly job can trust, a cost guard, and a quiet ``-q``: the runner in
this process (``tests.runner_inprocess``), against the sandbox where it talks to one."""

from __future__ import annotations

import socket
from pathlib import Path

from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree
from tests.runner_inprocess import run_main


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_inputs_without_any_image_exit_1_and_say_so(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    (mount / "empty-listing").mkdir(parents=True)
    (mount / "notes.txt").write_text("not a photo")
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": f"http://127.0.0.1:{closed_port()}"}

    done = await run_main("upload", str(mount), env=env)
    planned = await run_main("upload", str(mount), "--dry-run", env=env)
    as_json = await run_main("upload", str(mount), "--json", env=env)

    assert done.returncode == 1, done.stderr
    assert "no image in the inputs (1 other file skipped)" in done.stderr
    assert planned.returncode == 1, planned.stderr
    assert "no image in the inputs" in planned.stderr
    assert as_json.returncode == 1
    assert as_json.json()["error"].startswith("no image in the inputs")
    assert as_json.json()["exit_status"] == 1


async def test_redis_or_postgresql_unreachable_at_start_exit_4_not_2(tmp_path: Path) -> None:
    make_tree(tmp_path, folders=1, files=1, size=10)
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": "https://orders.example.com"}

    redis = await run_main(
        "upload", str(tmp_path), "--budget", f"redis://127.0.0.1:{closed_port()}/0", env=env
    )
    postgres = await run_main(
        "upload",
        str(tmp_path),
        "--state",
        f"postgresql://styldod@127.0.0.1:{closed_port()}/styldod",
        "--json",
        env=env,
    )
    invalid = await run_main("upload", str(tmp_path), "--budget", "redis://:x/0", env=env)

    assert redis.returncode == 4, redis.stderr
    assert "Redis" in redis.stderr and "does not answer" in redis.stderr
    assert postgres.returncode == 4, postgres.stderr
    assert postgres.json()["kind"] == "unreachable"
    assert "PostgreSQL" in postgres.json()["error"]
    assert invalid.returncode == 2, "a URL the user mistyped is still a usage error"


async def test_json_prints_an_object_on_every_failure(tmp_path: Path) -> None:
    make_tree(tmp_path, folders=1, files=1, size=10)
    job = tmp_path / "job.toml"
    job.write_text("rps = 0\n", encoding="utf-8")
    env = {"STYLDOD_API_KEY": "k"}

    usage = await run_main("upload", str(tmp_path), "--rps", "fast", "--json", env=env)
    configuration = await run_main("upload", str(tmp_path), "--job", str(job), "--json", env=env)
    missing = await run_main("upload", str(tmp_path / "nope"), "--json", env=env)
    no_key = await run_main("upload", str(tmp_path), "--json")

    for completed, code in ((usage, 2), (configuration, 2), (missing, 2), (no_key, 2)):
        assert completed.returncode == code, completed.stderr
        body = completed.json()
        assert body["exit_status"] == code
        assert body["error"] in completed.stderr
    assert "'fast' is not a number" in usage.json()["error"]
    assert "rps must be a positive" in configuration.json()["error"]
    assert "nope: no such file or directory" in missing.json()["error"]


async def test_an_api_that_cannot_be_reached_is_one_line_and_exit_4(tmp_path: Path) -> None:
    make_tree(tmp_path, folders=1, files=1, size=10)
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": f"http://127.0.0.1:{closed_port()}"}

    quiet = await run_main("upload", str(tmp_path), "--no-progress", env=env)
    verbose = await run_main("upload", str(tmp_path), "--no-progress", "-v", env=env)

    assert quiet.returncode == 4
    assert quiet.stdout == ""
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "could not be reached at 127.0.0.1" in lines[0]
    assert verbose.returncode == 4
    assert "retrying after" in verbose.stderr, "the retries are there at -v"


async def test_max_images_stops_a_larger_run_before_anything_is_sent(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=2, files=3, size=100)
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    job = tmp_path / "job.toml"
    job.write_text("max_images = 5\n", encoding="utf-8")
    photos = str(tmp_path / "photos")

    flagged = await run_main("upload", photos, "--max-images", "5", env=env)
    from_job = await run_main("upload", photos, "--job", str(job), "--json", env=env)

    assert flagged.returncode == 2, flagged.stderr
    assert "would order 6 images, more than max_images 5" in flagged.stderr
    assert from_job.returncode == 2
    assert "would order 6 images" in from_job.json()["error"]
    assert len(box.log) == 0, "nothing was sent"

    enough = await run_main("upload", photos, "--max-images", "6", "--json", env=env)
    assert enough.returncode == 0, enough.stderr
    assert enough.json()["images"]["uploaded"] == 6


async def test_quiet_prints_nothing_when_everything_succeeded(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=1, files=2, size=100)
    (tmp_path / "broken" / "listing").mkdir(parents=True)
    (tmp_path / "broken" / "listing" / "empty.jpg").write_bytes(b"")
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}

    ok = await run_main("upload", str(tmp_path / "photos"), "-q", env=env)
    failed = await run_main("upload", str(tmp_path / "broken"), "-q", env=env)

    assert ok.returncode == 0, ok.stderr
    assert (ok.stdout, ok.stderr) == ("", "")
    assert failed.returncode == 1
    assert "empty.jpg" in failed.stdout + failed.stderr, "what went wrong is still said"
