"""Bad input costs only itself: links out of the tree, names that are not UTF-8, absurd
settings, a reader that goes away. Each over real processes and the sandbox."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from styldod_batch import Settings
from styldod_batch.errors import ConfigurationError
from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import REPO, image_bytes, json_report, make_tree, run_cli


def env_for(box: Sandbox) -> dict[str, str]:
    return {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}


def stored_bytes(box: Sandbox) -> int:
    return sum(e.bytes_in for e in box.log.select(kind="storage", method="PUT", status=200))


async def test_a_link_out_of_the_tree_is_skipped_unless_asked(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=1, files=2, size=1000)
    secret = tmp_path / "secrets" / "id_rsa"
    secret.parent.mkdir()
    # Framed as a JPEG: what keeps it out is the link rule, not the content check.
    secret.write_bytes(b"\xff\xd8\xff\xe0" + b"PRIVATE KEY " * 1000 + b"\xff\xd9")
    link = photos / "listing-01" / "photo.jpg"
    link.symlink_to(secret)
    inside = photos / "listing-01" / "again.jpg"  # a link within the tree is followed
    inside.symlink_to(photos / "listing-01" / "photo-1.jpg")
    box = await sandbox_factory(rps=1000)

    completed = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--json", "--no-progress", env=env_for(box)
    )

    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert report["images"]["uploaded"] == 3 and report["images"]["skipped"] == 1
    assert stored_bytes(box) == 3 * 1000, "not a byte of the secret reached storage"
    text = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--no-progress", "--dry-run", env=env_for(box)
    )
    assert "photo.jpg" not in text.stdout

    followed = await asyncio.to_thread(
        run_cli,
        "upload",
        str(photos),
        "--json",
        "--follow-symlinks",
        env=env_for(box),
    )
    assert followed.returncode == 0, followed.stderr
    assert json_report(followed)["images"]["uploaded"] == 1
    assert stored_bytes(box) == 3 * 1000 + secret.stat().st_size


async def test_a_name_that_is_not_utf8_fails_alone_and_is_named(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_tree(photos, folders=2, files=2, size=500)
    bad = os.fsencode(photos / "listing-01") + b"/caf\xe9.jpg"
    descriptor = os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(descriptor, image_bytes(500))
    os.close(descriptor)
    box = await sandbox_factory(rps=1000)

    completed = await asyncio.to_thread(
        run_cli, "upload", str(photos), "--json", "--no-progress", env=env_for(box)
    )

    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    report = json_report(completed)
    assert report["images"]["uploaded"] == 4 and report["images"]["failed"] == 1
    (failure,) = report["failures"]
    assert failure["path"].endswith("caf\\xe9.jpg")
    assert "not valid UTF-8" in failure["error"]
    assert len(report["orders"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rps", "inf"], "not a finite number"),
        (["--rps", "nan"], "not a finite number"),
        (["--rps", "1e400"], "not a finite number"),
        (["--upload-rps", "inf"], "not a finite number"),
        (["--concurrency", "300000"], "concurrency must be between 1 and 512"),
        (["--wait-timeout", "inf"], "not a finite number"),
    ],
)
def test_absurd_numbers_are_refused_before_anything_is_sent(
    tmp_path: Path, args: list[str], message: str
) -> None:
    make_tree(tmp_path, folders=1, files=1, size=10)
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": "http://127.0.0.1:9"}

    completed = run_cli("upload", str(tmp_path), *args, env=env)

    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_settings_check_their_values_when_built() -> None:
    with pytest.raises(ConfigurationError, match="option basic_editing must be a boolean"):
        Settings(options={"basic_editing": "yes"})
    with pytest.raises(ConfigurationError, match="rps must be a positive finite number"):
        Settings(rps=float("inf"))
    with pytest.raises(ConfigurationError, match="concurrency"):
        Settings(concurrency=300_000)


def pipe_into_a_reader_that_leaves(
    args: list[str], env: dict[str, str], keep: int
) -> tuple[int, str]:
    """Run the runner into a pipe, read ``keep`` bytes, close the pipe: as ``| head`` does."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STYLDOD_")}
    full_env.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(keep)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    return process.wait(timeout=120), stderr


async def test_a_reader_that_goes_away_ends_the_output_quietly(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    # Enough output to fill a pipe's buffer several times over.
    make_tree(tmp_path / "photos", folders=20, files=100, size=10)
    box = await sandbox_factory(rps=1000)
    env = env_for(box)
    upload = ["upload", str(tmp_path / "photos"), "--no-progress"]
    # Followed to the end, so that status lists every image's output: a long status.
    fast = ("--rps", "1000", "--upload-rps", "0")
    first = await asyncio.to_thread(run_cli, *upload, *fast, "--json", "--wait", env=env)
    assert first.returncode == 0, first.stderr

    for args, keep in (
        ([*upload, "--dry-run"], 100),
        ([*upload, "--dry-run", "--json"], 300),
        (["status"], 100),
    ):
        code, stderr = await asyncio.to_thread(pipe_into_a_reader_that_leaves, args, env, keep)
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, (args, stderr)
        assert code in (0, 141), (args, code, stderr)
