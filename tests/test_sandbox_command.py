"""The ``styldod-batch sandbox`` command, run as a real child process on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

COMMAND = [sys.executable, "-m", "styldod_batch", "sandbox"]
OPTIONS = (
    "--host",
    "--port",
    "--api-key",
    "--rps",
    "--url-ttl",
    "--global-config",
    "--fault-api-5xx",
    "--fault-storage-5xx",
    "--fault-429",
    "--fault-reset",
    "--latency-ms",
    "--log",
)
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
FIRST_LINE = re.compile(r"Order API: http://127\.0\.0\.1:(\d+)")


def test_help_names_every_option() -> None:
    result = subprocess.run(
        [*COMMAND, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for option in OPTIONS:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout), option


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--rps", "0"], "--rps"),
        (["--fault-reset", "2"], "--fault-reset"),
        (["--fault-api-5xx", "-0.1"], "--fault-api-5xx"),
        (["--url-ttl", "soon"], "--url-ttl"),
    ],
)
def test_invalid_option_exits_2_naming_it(args: list[str], option: str) -> None:
    result = subprocess.run(
        [*COMMAND, "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert option in result.stderr
    assert "Order API" not in result.stdout


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    start_time: str
    comm: str


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, start time, command name) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # Fields after the name: state ppid pgrp session ... starttime is the 22nd of stat.
    return int(fields[1]), fields[19], comm


def descendants(root: int) -> list[Proc]:
    """Every live process below ``root``."""
    children: dict[int, list[Proc]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None:
            children.setdefault(stat[0], []).append(Proc(int(entry), stat[1], stat[2]))
    found: list[Proc] = []
    queue = [root]
    while queue:
        for proc in children.get(queue.pop(), []):
            found.append(proc)
            queue.append(proc.pid)
    return found


def alive(proc: Proc) -> bool:
    stat = _stat(proc.pid)
    # The same pid with another start time is a new process that reused the number.
    return stat is not None and stat[1] == proc.start_time


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sandbox_command_serves_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    log_path = tmp_path / "requests.jsonl"
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "--port",
        "0",
        "--log",
        str(log_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    children: list[Proc] = []
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        first = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
        match = FIRST_LINE.fullmatch(first.decode().rstrip("\n"))
        assert match, (first, await process.stderr.read())
        base_url = f"http://127.0.0.1:{match.group(1)}"
        # A fresh key each start, printed second.
        second = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        key_line = re.fullmatch(r"API key: (sandbox-[0-9a-f]{16})\n", second)
        assert key_line, second
        key = key_line.group(1)

        # SeaweedFS runs as a child of the command while it serves.
        children = descendants(process.pid)
        assert any(p.comm == "weed" for p in children), children

        url = base_url + "/v2/upload-urls"
        body = {
            "files": [{"file_name": "a.jpg", "content_type": "image/jpeg", "content_length": 3}]
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body) as resp:
                assert resp.status == 401
            async with http.post(url, json=body, headers={"api-key": key}) as resp:
                assert resp.status == 200
                (slot,) = (await resp.json())["upload_urls"]
            assert slot["upload_url"].startswith("http://127.0.0.1:")
            async with http.put(
                slot["upload_url"], data=b"abc", headers={"Content-Type": "image/jpeg"}
            ) as resp:
                assert resp.status == 200

        process.send_signal(stop_signal)
        code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        stderr = (await process.stderr.read()).decode()
        assert code == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        leftover = [p for p in children if alive(p)]
        for proc in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    assert leftover == []

    logged = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert [(e["kind"], e["method"], e["status"]) for e in logged] == [
        ("api", "POST", 401),
        ("api", "POST", 200),
        ("storage", "PUT", 200),
    ]
