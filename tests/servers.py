"""Real Redis and PostgreSQL servers for the tests, as child processes on 127.0.0.1, and the
worker process of the shared-budget tests.

Like the sandbox's SeaweedFS: each server gets free loopback ports and one temporary folder
(its data, socket and log), starts in a session of its own, is killed with SIGKILL if the
test process dies however it dies (``setpriv --pdeathsig``), and is reaped and its folder removed on
``close()``. ``stop()``, ``start()`` and ``restart()`` keep the port and the folder, so
clients holding the URL see the same server go away and come back, as a real outage.

The binaries come from Debian's ``redis-server`` and ``postgresql`` packages, which
``scripts/_servers.sh`` installs. PostgreSQL refuses to run as root, so as root its processes
run as the ``postgres`` system user the Debian package creates (else ``nobody``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

IPC_RMID = 0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server is missing, or did not start."""


def _as_child(args: list[str], uid: int | None, gid: int | None) -> list[str]:
    """``args`` under ``setpriv``: SIGKILL when the test process dies, and the server's own
    user when asked. A wrapper, not a ``preexec_fn``: without one Python starts the child
    with vfork, where a fork of this large test process would stall the event loop the
    sandbox serves from (its page tables copied, then a copy-on-write fault on each page it
    writes: ~50 ms late arrival stamps were seen right after a Redis restart)."""
    prefix = ["setpriv", "--pdeathsig", "KILL"]
    if uid is not None and gid is not None:
        prefix += ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
    return [*prefix, *args]


class _ChildServer:
    """What both servers share: the folder, the process, start / stop / restart, cleanup."""

    kind = "server"

    def __init__(self) -> None:
        # Here, not at the top: worker processes import this module and need no sandbox.
        from styldod_batch.sandbox.seaweed import free_port

        self.host = HOST
        self.port = free_port(HOST)
        self.root = Path(tempfile.mkdtemp(prefix=f"styldod-{self.kind}-"))
        self.log_path = self.root / f"{self.kind}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None

    # -- to be provided by each server --------------------------------------------------------

    def _args(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Start on the same port and folder; returns once the server answers."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            # From this thread: the death signal follows the thread that started the child.
            self._process = subprocess.Popen(  # noqa: ASYNC220 (vfork: returns at once)
                _as_child(self._args(), self._uid, self._gid),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        # Probed in a thread: a server still loading may hold a probe for its timeout.
        while not await asyncio.to_thread(self._ready):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ServerError(
                    f"{self.kind} exited with status {code} while starting on port"
                    f" {self.port}; the end of its log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                await self.stop()
                raise ServerError(f"{self.kind} did not answer within {READY_TIMEOUT_S} s")
            await asyncio.sleep(0.02)

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the server (``kill``: at once with SIGKILL, as a crash) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL if kill else self._stop_signal())
            # In a thread: the event loop goes on serving while the server shuts down.
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        self._reap(process)

    async def restart(self, *, kill: bool = False) -> None:
        await self.stop(kill=kill)
        await self.start()

    def close(self) -> None:
        """Kill, reap and remove everything (synchronous, for finalizers)."""
        process, self._process = self._process, None
        if process is not None:
            self._reap(process)
        self._remove_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        pass

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        # The whole group: PostgreSQL's postmaster has children of its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGTERM

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    async def __aenter__(self) -> _ChildServer:
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.close()


def _probe(host: str, port: int, payload: bytes, timeout: float = 0.5) -> bytes:
    """Send ``payload`` to a TCP port and return the first bytes of the answer (b"" if none)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(payload)
            return sock.recv(64)
    except OSError:
        return b""


def find_redis_server() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found is None:
        raise ServerError("redis-server not found: run scripts/_servers.sh (Debian redis-server)")
    return found


class RedisServer(_ChildServer):
    """``redis-server`` on a free loopback port, without persistence: a restart loses every
    key, as a cache's crash does. ``url`` is ``redis://127.0.0.1:PORT/0``."""

    kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _args(self) -> list[str]:
        return [
            self.binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.root),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",  # stdout, which is the log file
        ]

    def _ready(self) -> bool:
        return _probe(self.host, self.port, b"PING\r\n").startswith(b"+PONG")


def find_postgres_bindir() -> Path:
    """The newest of Debian's ``/usr/lib/postgresql/*/bin``, else wherever ``initdb`` is."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found is None:
        raise ServerError("PostgreSQL not found: run scripts/_servers.sh (Debian postgresql)")
    return Path(found).parent


class PostgresServer(_ChildServer):
    """A fresh PostgreSQL cluster (``initdb``, trust auth on 127.0.0.1 only) on a free port,
    with a database ``styldod`` owned by user ``styldod``. ``url`` is
    ``postgresql://styldod@127.0.0.1:PORT/styldod``. Durability is off (fsync, synchronous
    commit): a stop keeps the data, a kill may lose the last commits, fine for tests."""

    kind = "postgres"
    user = "styldod"
    database = "styldod"

    def __init__(self) -> None:
        super().__init__()
        self.bindir = find_postgres_bindir()
        self.data = self.root / "data"
        if os.geteuid() == 0:
            account = _unprivileged_account()
            self._uid, self._gid = account.pw_uid, account.pw_gid
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._initialised = False

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _args(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.root),  # its unix socket stays in our folder, not /var/run/postgresql
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=50",
            "-c",
            "shared_buffers=16MB",
        ]

    def _remove_leftovers(self) -> None:
        remove_postgres_leftovers(self.root)

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGINT  # "fast" shutdown: ends sessions, no waiting for clients

    def _ready(self) -> bool:
        # Since PostgreSQL 10 the pid file's 8th line is "ready" once connections are accepted.
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    async def start(self) -> None:
        if not self._initialised:
            await self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
        await super().start()
        if not self._initialised:
            await self.create_database(self.database)
            self._initialised = True

    async def create_database(self, name: str) -> str:
        """Create a database (a fresh one per test keeps tests apart); returns its URL."""
        await self._run(
            str(self.bindir / "createdb"),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.user,
            name,
        )
        return self.url_for(name)

    async def _run(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *_as_child(list(args), self._uid, self._gid),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise ServerError(
                f"{Path(args[0]).name} failed ({process.returncode}):\n"
                + output.decode(errors="replace")[-2000:]
            )


def remove_postgres_leftovers(root: Path) -> None:
    """A killed postmaster leaves its small System V shared-memory segment (its ID is in the
    pid file, which stays too); remove it once nothing is attached. A clean stop removes both."""
    try:
        fields = (root / "data" / "postmaster.pid").read_text().splitlines()[6].split()
        shmid = int(fields[1])
    except (OSError, IndexError, ValueError):
        return
    try:
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return
    for row in table:
        cols = row.split()
        if int(cols[1]) == shmid and int(cols[6]) == 0:  # shmid, nattch
            ctypes.CDLL(None, use_errno=True).shmctl(shmid, IPC_RMID, None)


def _unprivileged_account() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerError("running as root and neither a 'postgres' nor a 'nobody' user exists")


# -- the worker process of the shared-budget tests -------------------------------------------
# Light on imports (no pytest, no sandbox): four of them start at once on two cores.


async def _budget_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Take grants from one shared budget as fast as ``spec["tasks"]`` callers can, each with
    a real GET to ``spec["target"]``, until the end time read from stdin; a 429 slows the
    budget down for its Retry-After. Its connections are opened first (``/warm``, outside
    the budget), so a TCP handshake never sits between a grant and its arrival. Returns
    what it saw: grant times (CLOCK_MONOTONIC, and on the coordinator's clock in µs)."""
    import aiohttp

    from styldod_batch.budget.on_file import FileBudget
    from styldod_batch.budget.shared import SharedBudget

    budget: SharedBudget
    if spec["kind"] == "file":
        budget = FileBudget(spec["path"], spec["rate"], margin_s=spec["margin_s"])
    else:
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from styldod_batch.budget.on_redis import RedisBudget

        # "silent": a client that hides a restart from the budget (retries every connection
        # failure with backoff, for seconds), as an application's own Redis policy might.
        silent = Retry(
            ExponentialBackoff(cap=0.2, base=0.01),
            50,
            supported_errors=(RedisConnectionError, RedisTimeoutError, OSError),
        )
        budget = RedisBudget(
            spec["url"],
            spec["rate"],
            api_key=spec["api_key"],
            margin_s=spec["margin_s"],
            client_retry=silent if spec.get("client_retry") == "silent" else None,
        )
    grants: list[float] = []
    coordinator: list[int] = []
    statuses: list[int] = []
    slowed: list[tuple[float, float]] = []
    through_budget = budget.middleware(low_priority=spec["low"])

    async def take_grant(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if request.url.path == "/warm":  # opens the keep-alive connections, before the clock
            return await handler(request)
        return await through_budget(request, record(handler))

    def record(handler: aiohttp.ClientHandlerType) -> aiohttp.ClientHandlerType:
        async def recorded(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
            # Right after the grant, with no await in between: this request's grant.
            grants.append(time.monotonic())
            coordinator.append(budget.last_grant_us)
            return await handler(request)

        return recorded

    async with budget, aiohttp.ClientSession(middlewares=(take_grant,)) as session:
        warm_url = spec["target"].rsplit("/", 2)[0] + "/warm"

        async def warm() -> None:
            async with session.get(warm_url) as resp:
                await resp.read()

        await asyncio.gather(*(warm() for _ in range(spec["tasks"])))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        end_at = float(line) - spec.get("stop_early_s", 0.0)

        async def loop() -> None:
            while time.monotonic() < end_at:
                async with session.get(spec["target"]) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                    if resp.status == 429:
                        seen = time.monotonic()
                        budget.slow_down(float(resp.headers["Retry-After"]))
                        await budget.flush()
                        slowed.append((seen, time.monotonic()))

        await asyncio.gather(*(loop() for _ in range(spec["tasks"])))
    return {
        "grants": grants,
        "coordinator": coordinator,
        "statuses": statuses,
        "slowed": slowed,
        "coordinator_errors": budget.coordinator_errors,
        "coordinator_restarts": budget.coordinator_restarts,
    }


def budget_worker_main() -> None:
    """``python -c 'from tests.servers import budget_worker_main; budget_worker_main()' SPEC``
    (SPEC in JSON): prints "ready", reads the end time, runs, prints its result (JSON)."""
    result = asyncio.run(_budget_worker(orjson.loads(sys.argv[1])))
    print(orjson.dumps(result).decode(), flush=True)


def server_versions() -> dict[str, str]:
    """The Redis and PostgreSQL the tests start, as their binaries state it ("7.0.15", "15.18");
    "missing" for one that is not installed."""

    def redis_command() -> list[str]:
        return [find_redis_server(), "--version"]

    def postgres_command() -> list[str]:
        return [str(find_postgres_bindir() / "postgres"), "--version"]

    found: dict[str, str] = {}
    for name, command, pattern in (
        ("Redis", redis_command, r"v=(\d+\.\d+\.\d+)"),
        ("PostgreSQL", postgres_command, r"(\d+\.\d+)"),
    ):
        try:
            out = subprocess.run(command(), capture_output=True, text=True, timeout=10).stdout
        except (ServerError, OSError, subprocess.SubprocessError):
            found[name] = "missing"
            continue
        match = re.search(pattern, out)
        found[name] = match.group(1) if match else "unknown"
    return found
