"""Shared helpers for the engine's tests: sample trees and reading the sandbox's log."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from styldod_batch.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]

_FRAMES = {
    # What the content check looks at: the magic number, and the end marker of a whole file.
    ".jpg": (b"\xff\xd8\xff\xe0", b"\xff\xd9"),
    ".jpeg": (b"\xff\xd8\xff\xe0", b"\xff\xd9"),
    ".png": (b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"),
}


def image_bytes(size: int, suffix: str = ".jpg") -> bytes:
    """``size`` random bytes framed as an image of ``suffix`` (a JPEG's or PNG's magic number
    and end marker), so the content check takes them for one."""
    head, tail = _FRAMES.get(suffix.lower(), (b"", b""))
    if size < len(head) + len(tail):
        return os.urandom(size)
    return head + os.urandom(size - len(head) - len(tail)) + tail


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
            path.write_bytes(image_bytes(size, suffix))
            made.append(path)
    return made


def stored_puts(sandbox: Sandbox) -> collections.Counter[str]:
    """How many PUTs storage acknowledged (200) per object path."""
    return collections.Counter(
        e.path for e in sandbox.log.select(kind="storage", method="PUT", status=200)
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> Ran:
    """The runner in this process (``tests.runner_inprocess``): no interpreter start. A test
    about processes (a kill, a signal, memory, a closed pipe, a terminal, several runs at
    once, the working folder) takes ``run_cli_process``."""
    from tests.runner_inprocess import run_main_sync

    return run_main_sync(*args, env=env)


def run_cli_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The runner in a process of its own; by default in a fresh working folder."""
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


class Ran(Protocol):
    """A finished runner: a process of its own (``run_cli``) or one in this process
    (``tests.runner_inprocess.run_main``)."""

    @property
    def returncode(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


def json_report(completed: Ran) -> dict[str, Any]:
    report = orjson.loads(completed.stdout)
    assert isinstance(report, dict)
    return report


async def ordered_contents(sandbox: Sandbox) -> collections.Counter[str]:
    """How many of the sandbox's orders hold each content (the MD5 that storage reports for
    each ordered image): what an order holds, whatever it names it."""
    assert sandbox.api is not None
    presigner = sandbox.api.presigner
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as http:
        for order in sandbox.api.orders.values():
            for image in order.images:
                for key in image.object_keys:
                    async with http.head(presigner.direct_url("HEAD", key)) as answer:
                        assert answer.status == 200, key
                        counts[answer.headers["ETag"].strip('"')] += 1
    return counts


async def assert_each_file_in_one_order(sandbox: Sandbox, files: list[Path]) -> None:
    """Every file's content is in exactly one order, and no order holds anything else."""
    counts = await ordered_contents(sandbox)
    by_content = await asyncio.to_thread(
        lambda: {hashlib.md5(f.read_bytes(), usedforsecurity=False).hexdigest(): f for f in files}
    )
    twice = [str(by_content.get(md5, md5)) for md5, n in counts.items() if n > 1]
    assert not twice, f"in more than one order: {twice[:5]}"
    missing = sorted(str(f) for md5, f in by_content.items() if md5 not in counts)
    unexpected = sorted(set(counts) - set(by_content))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"


def assert_one_key_per_order(sandbox: Sandbox) -> None:
    """Every order POST that reached the server used its order's one key: a key never names
    two orders, and no order was asked for under a second key."""
    assert sandbox.api is not None
    keys: dict[str | None, set[str]] = collections.defaultdict(set)
    for entry in sandbox.log.select(kind="api", method="POST", path_prefix="/v2/orders"):
        keys[entry.idempotency_key].update([entry.order_id] if entry.order_id else [])
    assert None not in keys
    created = [ids for ids in keys.values() if ids]
    assert all(len(ids) == 1 for ids in created), "a key named two orders"
    assert len(created) == len(sandbox.api.orders), "an order was created under a second key"
