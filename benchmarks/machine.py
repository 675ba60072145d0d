"""The machine and the versions of everything measured, for the results' header."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.contenders import s5cmd_binary
from benchmarks.proc import clean_env
from benchmarks.targets import find_nginx
from styldod_batch.sandbox.seaweed import find_weed


def _first_line(argv: list[str], *, stderr: bool = False) -> str | None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, env=clean_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stderr if stderr else done.stdout) or done.stdout or done.stderr
    return text.strip().splitlines()[0] if text.strip() else None


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _git_commit(root: Path) -> str | None:
    line = _first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    if line is None:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return line + ("+dirty" if dirty else "")  # uncommitted changes under src/


def source_fingerprint(root: Path) -> str:
    """A hash of every file under src/: tells whether the engine changed during a run."""
    digest = hashlib.sha256()
    for path in sorted((root / "src").rglob("*.py")):
        digest.update(path.as_posix().encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _version_of(pattern: str, line: str | None) -> str | None:
    if line is None:
        return None
    found = re.search(pattern, line)
    return found.group(1) if found else line


def describe(root: Path) -> dict[str, Any]:
    weed = None
    with contextlib.suppress(Exception):
        weed = find_weed()
    s5cmd = s5cmd_binary()
    nginx = find_nginx()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "versions": {
            "styldod-batch": _package("styldod-batch"),
            "styldod-batch commit": _git_commit(root),
            "styldod-batch source": source_fingerprint(root),
            "aiohttp": _package("aiohttp"),
            "uvloop": _package("uvloop"),
            "aiolimiter": _package("aiolimiter"),
            "aiofiles": _package("aiofiles"),
            "curl": _version_of(r"curl (\S+)", _first_line(["curl", "--version"])),
            "s5cmd": _first_line([s5cmd, "version"]) if s5cmd else None,
            "rclone": _version_of(r"rclone (\S+)", _first_line(["rclone", "version"])),
            "nginx": _version_of(r"nginx/(\S+)", _first_line([nginx, "-v"], stderr=True))
            if nginx
            else None,
            "seaweedfs": _version_of(r"version (\S+ \S+)", _first_line([weed, "version"]))
            if weed
            else None,
        },
    }
