"""Shared helpers for the engine's tests: sample trees and reading the sandbox's log."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def make_tree(
    root: Path,
    folders: int,
    files: int,
    size: int,
    *,
    prefix: str = "listing",
    suffix: str = ".jpg",
) -> list[Path]:
    """``folders`` folders of ``files`` random files each; returns the files."""
    made = []
    for folder in range(1, folders + 1):
        directory = root / f"{prefix}-{folder:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(1, files + 1):
            path = directory / f"photo-{index}{suffix}"
            path.write_bytes(os.urandom(size))
            made.append(path)
    return made


def stored_puts(sandbox: Sandbox) -> collections.Counter[str]:
    """How many PUTs storage acknowledged (200) per object path."""
    return collections.Counter(
        e.path for e in sandbox.log.select(kind="storage", method="PUT", status=200)
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The runner in a process of its own; by default in a fresh folder (its journal goes
    to the working folder)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STYLDOD_")}
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="styldod-cwd-") as scratch:
        return subprocess.run(
            [sys.executable, "-m", "styldod_batch", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
            cwd=cwd or scratch,
        )


def json_report(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report = orjson.loads(completed.stdout)
    assert isinstance(report, dict)
    return report
