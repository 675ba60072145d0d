"""Who holds a claim: one owner per run, and whether a recorded owner is still alive.

A claim carries a lease that its holder renews. A holder on another machine is judged by its
lease alone. A holder on this machine (same host, boot and PID namespace) is also judged by
its process: when that process is gone (or its PID now names another process), its claims are
free at once, so a re-run after a crash or a ``kill -9`` never waits for a lease to run out.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from functools import cache

import orjson


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


@cache
def _machine() -> tuple[str, str, str]:
    """(host name, boot ID, PID namespace): together they say "the same process table"."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), namespace


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None when it does not exist.

    Field 22 of ``/proc/PID/stat``; the command name (field 2) may hold spaces and
    parentheses, so the fields are counted from its closing parenthesis.
    """
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Owner:
    """One run that may hold claims. ``token`` tells apart two runs of one process."""

    token: str
    host: str
    boot_id: str
    pid_namespace: str
    pid: int
    started: int

    @classmethod
    def for_this_run(cls) -> Owner:
        host, boot_id, namespace = _machine()
        pid = os.getpid()
        return cls(
            token=secrets.token_hex(8),
            host=host,
            boot_id=boot_id,
            pid_namespace=namespace,
            pid=pid,
            started=_start_ticks(pid) or 0,
        )

    def encode(self) -> str:
        return orjson.dumps(
            [self.token, self.host, self.boot_id, self.pid_namespace, self.pid, self.started]
        ).decode()

    @classmethod
    def decode(cls, text: str) -> Owner | None:
        try:
            token, host, boot_id, namespace, pid, started = orjson.loads(text)
            return cls(str(token), str(host), str(boot_id), str(namespace), int(pid), int(started))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"

    def certainly_dead(self) -> bool:
        """True only when this machine can tell that the owner's process is gone."""
        if (self.host, self.boot_id, self.pid_namespace) != _machine() or not self.boot_id:
            return False  # another machine, or unknown: only its lease can tell
        started = _start_ticks(self.pid)
        return started is None or (self.started != 0 and started != self.started)
