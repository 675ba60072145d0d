"""Child processes: measured contender runs, long-lived servers, and their clean-up.

Every child starts in its own session (its own process group), so stopping it stops whatever
it started too, and a Ctrl-C in the terminal reaches only this process, whose ``finally``
blocks then stop the children. A contender's CPU time and peak memory come from ``wait4``
(the kernel's account of that process and every descendant it waited for), read by a small
launcher process (``drivers/spawn.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: no proxies, CA bundles, credentials or STYLDOD_* settings leak in.

    (``AWS_CA_BUNDLE`` alone makes rclone refuse to start, and a proxy variable would send
    curl's loopback traffic elsewhere.)
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": tempfile.gettempdir(),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if extra:
        env.update(extra)
    return env


def start_sandbox(
    *options: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``styldod-batch sandbox --port 0 OPTIONS`` in a session of its own (``env``: its whole
    environment, else this process's); returns the process and its Order API URL once the
    sandbox says it is ready (its first line). Stop it with ``terminate()`` and ``wait()``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", "sandbox", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=None if env is None else dict(env),
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.match(r"Order API: (http://\S+)", first)
    if not match:
        process.kill()
        process.wait()
        raise RuntimeError(f"the sandbox did not start: {first!r}")
    return process, match.group(1)


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished contender process."""

    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool

    def describe_failure(self) -> str:
        """One line: the command, why it failed, and the last lines it printed."""
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = " | ".join(line.strip() for line in lines[-3:])[-500:]
        reason = "timed out" if self.timed_out else f"exit status {self.returncode}"
        return f"{Path(self.argv[0]).name}: {reason}: {tail}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


SPAWN = Path(__file__).resolve().parent / "drivers" / "spawn.py"


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout_s: float = 900.0,
) -> Measured:
    """Run ``argv`` to its end: wall time, user+sys CPU and peak RSS of it and its children.

    The figures come from ``drivers/spawn.py``, a small launcher that forks the command and
    reads its ``wait4`` rusage (see there for why peak RSS needs a small parent).
    """
    timed_out = threading.Event()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rusage") as figures,
    ):
        launcher = [sys.executable, "-I", "-S", str(SPAWN), figures.name, *argv]
        began = time.perf_counter()
        process = subprocess.Popen(
            launcher,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )

        def expire() -> None:
            timed_out.set()
            _signal_group(process.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            process.wait()
        finally:
            watchdog.cancel()
            # Whatever is left of its process group (all of it, on Ctrl-C) goes now.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        outer_wall_s = time.perf_counter() - began
        fields = figures.read().split()
        if len(fields) == 5:
            wall_s, user_s, sys_s = float(fields[0]), float(fields[1]), float(fields[2])
            peak_kb, returncode = int(fields[3]), int(fields[4])
        else:  # killed before it could report
            wall_s, user_s, sys_s, peak_kb = outer_wall_s, 0.0, 0.0, 0
            returncode = process.returncode
        out.seek(0)
        err.seek(0)
        return Measured(
            argv=tuple(argv),
            returncode=returncode,
            wall_s=wall_s,
            cpu_s=user_s + sys_s,
            peak_rss_mb=peak_kb / 1024,  # Linux reports kilobytes
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out.is_set(),
        )


class Service:
    """A long-lived child (a server) in its own process group; ``stop()`` is idempotent."""

    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.process = process

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        stdout_pipe: bool = False,
    ) -> Service:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                env=dict(env),
                start_new_session=True,
            )
        return cls(name, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Helpers it left behind in its group (nginx workers, for one).
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


def children_of(pid: int) -> list[tuple[int, str]]:
    """Direct children of ``pid`` as (pid, start time): enough to recognise them later."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, session, ..., starttime is field 22.
        if int(fields[1]) == pid:
            found.append((int(entry.name), fields[19]))
    return found


def stop_if_same(pid: int, started: str) -> None:
    """SIGKILL the process group of ``pid`` if that pid still names the same process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return
    if fields[19] == started:
        _signal_group(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
