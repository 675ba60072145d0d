"""A rate budget shared by every process of one API key: the common part, and its backend
for one machine (a small state file under ``flock``). ``budget_redis`` is the backend for
many machines; both keep the promise of ``budget.RateBudget`` across processes: at most
``rate`` grants in any sliding window of 1 s + margin, in a steady drip (``budget.py``).

How a grant is made (``step`` below; the Redis backend runs the same steps in Lua). The
shared state holds a log of recent grant and reservation times, the time of the latest one
(``last``), a pause, a slowed rate and an ``epoch``; every step reads the coordinator's own
clock, so the workers' clocks never matter.

1. **Reserve.** The caller gets the next free slot ``t = max(now, pause end, last + drip,
   the rate-th latest entry + window)``, written to the log at once. Slots are handed out
   in arrival order, so workers queue first come, first served, and each then sleeps until
   its own slot: no polling, no thundering herd. A slot that is ``now`` is a grant at once.
2. **Claim.** Woken at its slot, the caller asks again. The window is checked once more on
   the actual times (fewer than ``rate`` others in the window ending now: an earlier
   caller's late claim can make it wait a little longer) and the entry is re-stamped with
   the actual time: that is the grant. So the promise holds on the coordinator's clock for
   the whole window + margin, and the margin is left for the trip to the API. A claim more
   than ``tolerance`` after its slot (a stalled event loop) gives the slot up and queues
   again, which keeps the drip steady.
3. A reservation never claimed (its worker died, or lost the answer) stays in the log as
   if it had been sent: it costs a slot, never the promise. Dropping an unclaimed one is
   always safe, since nothing was sent for it: a cancelled caller gives its slot back.

Each process keeps at most one reservation at a time (an ``asyncio.Lock``, first come, first
served, inside the process), so processes that all want more than their share take turns:
N busy workers get ``rate / N`` each.

A 429 seen by any worker pauses everyone: the pause and the halved rate go into the shared
state, the epoch moves on (so reservations made before the 429 are cancelled at their claim)
and future reservations are dropped. The rate recovers linearly over ``recovery_s``. 429s that
arrive during a pause (one burst answered together) extend it without halving again.

Low priority (order polling): a low-priority caller waits while its own process has normal
callers waiting, and reserves nothing while another worker has (each worker registers itself
in the shared state, with an expiry, while it has normal callers waiting).

Fail closed: when the coordinator cannot be reached, nothing is granted; the caller waits,
retrying with backoff, and goes on once it answers. A coordinator that lost its state (a
restarted Redis) cannot know what was granted just before, so the first grant after that
waits one window.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import functools
import hashlib
import itertools
import logging
import math
import os
import random
import secrets
import stat
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

import orjson

from styldod_batch.budget import WINDOW_MARGIN_S, BudgetMiddleware, Grant, drip_interval
from styldod_batch.errors import ConfigurationError

if TYPE_CHECKING:  # aiohttp only for the middleware's types: the upload path never loads it
    pass

log = logging.getLogger("styldod_batch.budget")

# What a step answers.
WAIT = 0  # a slot is reserved: sleep ``wait_us``, then claim it
GRANTED = 1  # send now
DEFER = 2  # low priority and normal callers are waiting elsewhere: ask again in ``wait_us``

# What a step does.
RESERVE = "reserve"
CLAIM = "claim"
RELEASE = "release"
RESTAMP = "restamp"
SLOW_DOWN = "slow"

US = 1_000_000


def key_fingerprint(api_key: str | None) -> str:
    """What the shared state is keyed by instead of the key (the journal's fingerprint)."""
    if not api_key:
        return "anonymous"
    return hashlib.sha256(b"styldod-batch:" + api_key.encode()).hexdigest()[:16]


def budget_scope(base_url: str, api_key: str | None, name: str) -> str:
    """``<base URL hash>-<key fingerprint>-<budget name>``: one shared budget per API key and
    service; the API's and storage's budgets (``name``) apart."""
    url = base_url.strip().rstrip("/").lower()
    url_hash = hashlib.sha256(url.encode()).hexdigest()[:12]
    return f"{url_hash}-{key_fingerprint(api_key)}-{name}"


class Reply(NamedTuple):
    status: int  # WAIT, GRANTED or DEFER
    wait_us: int
    slot_us: int
    epoch: int
    rate: float  # the shared current rate
    # The coordinator found its state lost or written by another server (a restart, a
    # failover) and started over with one window's pause: decided on the coordinator's side,
    # whatever the client library did with the connection.
    cold: bool = False


@dataclass(frozen=True, slots=True)
class Params:
    """The constants of one budget, sent with every step."""

    rate: float
    window_us: int  # the window plus the margin
    recovery_us: int
    tolerance_us: int
    cold_pause_us: int  # after the state was lost
    defer_us: int
    normal_ttl_us: int = US

    @property
    def cap(self) -> int:
        return max(1, int(self.rate))


@dataclass(slots=True)
class SharedState:
    """The shared state, as the file backend stores it (the Redis backend keeps the same in
    a hash and two sorted sets). Times are microseconds of the coordinator's clock."""

    boot: str = ""
    epoch: int = 0
    last: int = 0
    paused: int = 0
    slowed: float = 0.0
    slowed_at: int = 0
    limited: int = 0
    grants: dict[str, int] = field(default_factory=dict)  # member: time (sent or reserved)
    normal: dict[str, int] = field(default_factory=dict)  # worker: expiry

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "boot": self.boot,
                "epoch": self.epoch,
                "last": self.last,
                "paused": self.paused,
                "slowed": self.slowed,
                "slowed_at": self.slowed_at,
                "limited": self.limited,
                "grants": self.grants,
                "normal": self.normal,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> SharedState:
        raw = orjson.loads(data)
        return cls(
            boot=str(raw["boot"]),
            epoch=int(raw["epoch"]),
            last=int(raw["last"]),
            paused=int(raw["paused"]),
            slowed=float(raw["slowed"]),
            slowed_at=int(raw["slowed_at"]),
            limited=int(raw["limited"]),
            grants={str(k): int(v) for k, v in raw["grants"].items()},
            normal={str(k): int(v) for k, v in raw["normal"].items()},
        )


def current_rate(state: SharedState, now: int, p: Params) -> float:
    if state.slowed <= 0 or state.slowed >= p.rate:
        return p.rate
    regained = (p.rate - state.slowed) * (now - state.slowed_at) / p.recovery_us
    return min(p.rate, state.slowed + regained)


def step(
    state: SharedState,
    now: int,
    boot: str,
    p: Params,
    op: str,
    *,
    worker: str,
    member: str,
    epoch: int = 0,
    low: bool = False,
    others_waiting: bool = False,
    retry_after_us: int = 0,
) -> Reply:
    """One atomic step on the shared state (the module docstring tells the algorithm).

    ``others_waiting``: the worker still has normal callers waiting after this one. The
    reply is ``cold`` when the step found the state lost or foreign and started it over.
    """
    cold = state.boot != boot and p.cold_pause_us > 0
    reply = _step(
        state,
        now,
        boot,
        p,
        op,
        worker=worker,
        member=member,
        epoch=epoch,
        low=low,
        others_waiting=others_waiting,
        retry_after_us=retry_after_us,
    )
    return reply._replace(cold=True) if cold else reply


def _step(
    state: SharedState,
    now: int,
    boot: str,
    p: Params,
    op: str,
    *,
    worker: str,
    member: str,
    epoch: int = 0,
    low: bool = False,
    others_waiting: bool = False,
    retry_after_us: int = 0,
) -> Reply:
    if state.boot != boot:
        # Unknown or lost state: whatever was granted just before is unknown, so wait.
        state.grants.clear()
        state.normal.clear()
        state.boot, state.epoch, state.last = boot, now, 0
        state.paused, state.slowed, state.slowed_at = now + p.cold_pause_us, 0.0, 0
    cutoff = now - p.window_us
    state.grants = {m: t for m, t in state.grants.items() if t > cutoff}
    state.normal = {w: e for w, e in state.normal.items() if e > now}
    rate = current_rate(state, now, p)

    if op == SLOW_DOWN:
        if now >= state.paused:
            state.slowed = max(rate / 2, min(1.0, p.rate))
            state.slowed_at = now
        state.paused = max(state.paused, now + retry_after_us)
        state.epoch += 1
        state.limited += 1
        state.grants = {m: t for m, t in state.grants.items() if t <= now}
        state.last = max(state.grants.values(), default=0)
        return Reply(GRANTED, 0, 0, state.epoch, current_rate(state, now, p))
    if op == RELEASE:
        state.grants.pop(member, None)
        return Reply(GRANTED, 0, 0, state.epoch, rate)
    if op == RESTAMP:
        # Its request left late: count it from now, never earlier than it was.
        if member in state.grants:
            state.grants[member] = max(state.grants[member], now)
        return Reply(GRANTED, 0, now, state.epoch, rate)
    if op == CLAIM:
        reserved = state.grants.get(member)
        if epoch == state.epoch and reserved is not None:
            if now < reserved:
                return Reply(WAIT, reserved - now, reserved, epoch, rate)
            if now - reserved <= p.tolerance_us:
                # The promise, checked on the actual times: fewer than the cap others in the
                # window ending now. (An earlier caller's late claim can make this wait.)
                recent = sorted(
                    (
                        t
                        for m, t in state.grants.items()
                        if m != member and now - p.window_us < t <= now
                    ),
                    reverse=True,
                )
                if len(recent) >= p.cap:
                    later = recent[p.cap - 1] + p.window_us
                    state.grants[member] = later  # moved: its lateness counts from there
                    state.last = max(state.last, later)
                    return Reply(WAIT, later - now, later, epoch, rate)
                # The log gets the actual time (the window counts it); the drip goes on
                # from the slot, so latency does not add up from grant to grant.
                state.grants[member] = now
                _granted(state, now, p, worker, others_waiting)
                return Reply(GRANTED, 0, now, epoch, rate)
        # Cancelled by a 429, lost, or too late: never sent, so dropping it is safe.
        state.grants.pop(member, None)

    # RESERVE (or a claim that must queue again).
    if low and any(w != worker for w in state.normal):
        return Reply(DEFER, p.defer_us, 0, state.epoch, rate)
    t = max(now, state.paused, state.last + math.ceil(US * drip_interval(rate, p.rate)))
    if state.grants:
        # Never before a logged time (a late claim, at high rates), and never the cap-th
        # within one window: then no window ending at t or later holds more than the cap.
        times = sorted(state.grants.values())
        t = max(t, times[-1])
        if len(times) >= p.cap:
            t = max(t, times[-p.cap] + p.window_us)
    state.grants[member] = t
    state.last = t
    if t <= now:
        _granted(state, now, p, worker, others_waiting)
        return Reply(GRANTED, 0, t, state.epoch, rate)
    if not low:
        state.normal[worker] = max(state.normal.get(worker, 0), t + p.normal_ttl_us)
    return Reply(WAIT, t - now, t, state.epoch, rate)


def _granted(state: SharedState, now: int, p: Params, worker: str, others_waiting: bool) -> None:
    if others_waiting:
        state.normal[worker] = max(state.normal.get(worker, 0), now + p.normal_ttl_us)
    else:
        state.normal.pop(worker, None)


def _backoff_s(failures: int) -> float:
    ceiling: float = min(2.0, 0.05 * 2.0 ** min(failures, 10))
    return random.uniform(0.5, 1.0) * ceiling


class SharedBudget(abc.ABC):
    """The worker's side of a shared budget: the same interface as ``RateBudget``, plus
    ``open()`` / ``close()`` (or ``async with``). A backend supplies ``_call`` (one atomic
    step on the shared state) and the errors that mean the coordinator is unreachable."""

    _transient: tuple[type[BaseException], ...] = (OSError,)

    def __init__(
        self,
        rate: float,
        *,
        window_s: float = 1.0,
        margin_s: float = WINDOW_MARGIN_S,
        recovery_s: float = 10.0,
        tolerance_s: float | None = None,
        cold_pause: bool = True,
        name: str = "budget",
        max_pause_s: float = 20.0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.name = name
        # No server-given pause lasts longer (``RetryPolicy.max_server_wait_s``).
        self.max_pause_s = max_pause_s
        self.nominal_rate = float(rate)
        self.window_s = window_s + margin_s
        self.recovery_s = recovery_s
        # How late a claim may come and keep its slot: the window is checked on actual times
        # anyway, so this only keeps the drip steady; half of ``1 / rate`` (25 ms at 20/s)
        # lets a busy event loop keep its turn.
        if tolerance_s is None:
            tolerance_s = max(margin_s / 2, 0.5 / self.nominal_rate)
        self.params = Params(
            rate=self.nominal_rate,
            window_us=round(self.window_s * US),
            recovery_us=max(1, round(recovery_s * US)),
            tolerance_us=round(tolerance_s * US),
            cold_pause_us=round(self.window_s * US) if cold_pause else 0,
            defer_us=round(min(1.0, max(0.1, 2.0 / self.nominal_rate)) * US),
        )
        self.granted = 0
        self.restamped = 0  # grants whose request left late (``budget.LATE_SEND_S``)
        self.rate_limited = 0
        self.coordinator_errors = 0
        # Times the coordinator itself found its state lost (a restart, a failover): counted
        # from its answers, so no client library's reconnects or retries can hide one.
        self.coordinator_restarts = 0
        # When the last grant was made, on the coordinator's clock (microseconds): what the
        # promise is kept on, for diagnostics and tests.
        self.last_grant_us = 0
        self.worker = secrets.token_hex(8)
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._rate = self.nominal_rate
        self._local_pause_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = False
        self._closing = False
        self._down_since: float | None = None

    # -- backend ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Reach the coordinator, or raise ``ConfigurationError``."""

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    async def _call(
        self,
        op: str,
        member: str,
        *,
        epoch: int = 0,
        low: bool = False,
        others_waiting: bool = False,
        retry_after_us: int = 0,
    ) -> Reply: ...

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> Self:
        if not self._opened:
            await self._connect()
            self._opened = True
            self._closing = False
        return self

    async def close(self) -> None:
        """Let a pending 429 reach the coordinator (briefly), then disconnect."""
        if not self._opened:
            return
        self._closing = True
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._opened = False
        await self._disconnect()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the RateBudget interface -------------------------------------------------------------

    @property
    def current_rate(self) -> float:
        """The shared rate as the coordinator last told it (slowed by a 429, recovering)."""
        return self._rate

    async def acquire(self, *, low_priority: bool = False) -> Grant:
        """Wait for a grant. A low-priority caller lets every normal caller go first, in this
        process and (as far as the shared state tells) in every other."""
        if not self._opened:
            raise RuntimeError(f"the {self.name} budget is not open: call open() first")
        if low_priority:
            while True:
                while self._waiting:
                    await self._idle.wait()
                async with self._lock:
                    if self._waiting:
                        continue
                    got = await self._obtain(low=True)
                if isinstance(got, Grant):
                    return got
                await asyncio.sleep(got)
        self._waiting += 1
        self._idle.clear()
        try:
            async with self._lock:
                got = await self._obtain(low=False)
                assert isinstance(got, Grant)  # only a low-priority caller is deferred
                return got
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._idle.set()

    def slow_down(self, retry_after_s: float) -> None:
        """A 429 arrived: this process stops at once; every other one as soon as the shared
        state has the pause (a task, since the caller may not wait)."""
        retry_after_s = min(max(retry_after_s, 0.0), self.max_pause_s)
        self.rate_limited += 1
        self._local_pause_until = max(self._local_pause_until, time.monotonic() + retry_after_s)
        self._rate = max(self._rate / 2, min(1.0, self.nominal_rate))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: the local pause only
            return
        self._spawn(loop, self._publish_slow_down(round(retry_after_s * US)))

    def pause_remaining_s(self) -> float:
        """How long this process stays paused by a 429 (0 when it is not)."""
        return max(0.0, self._local_pause_until - time.monotonic())

    async def flush(self) -> None:
        """Wait until what ``slow_down`` sent has reached the shared state."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def middleware(self, *, low_priority: bool = False) -> BudgetMiddleware:
        return BudgetMiddleware(self, low_priority=low_priority)

    # -- internals ----------------------------------------------------------------------------

    async def _obtain(self, *, low: bool) -> Grant | float:
        """Reserve, sleep, claim: returns the grant, or (low priority only) how long to wait
        before asking again."""
        member = f"{self.worker}:{next(self._seq)}"
        op, epoch = RESERVE, 0
        failures = 0
        try:
            while True:
                pause = self._local_pause_until - time.monotonic()
                if pause > 0:  # our own 429, whether or not the coordinator has it yet
                    await asyncio.sleep(pause)
                # Normal callers of this process still waiting after this one.
                others = self._waiting > (0 if low else 1)
                asked_at = time.monotonic()
                try:
                    reply = await self._call(
                        op, member, epoch=epoch, low=low, others_waiting=others
                    )
                except self._transient as exc:
                    if not self._opened:
                        raise RuntimeError(f"the {self.name} budget was closed") from exc
                    # Fail closed: nothing is granted without the coordinator's word.
                    failures += 1
                    self._coordinator_down(exc)
                    await asyncio.sleep(_backoff_s(failures))
                    # A reservation the failed call may have made stays as a spent slot.
                    member = f"{self.worker}:{next(self._seq)}"
                    op, epoch = RESERVE, 0
                    continue
                self._coordinator_up()
                self._note(reply)
                failures = 0
                if reply.status == GRANTED:
                    self.granted += 1
                    self.last_grant_us = reply.slot_us
                    return Grant(asked_at, functools.partial(self._restamp, member))
                if reply.status == DEFER:
                    return reply.wait_us / US
                op, epoch = CLAIM, reply.epoch
                # The claim arrives a little after the slot (half a round trip, the timer's
                # lateness), well within the tolerance; an early one is told to wait again.
                await asyncio.sleep(reply.wait_us / US)
        except asyncio.CancelledError:
            if op == CLAIM:  # give the slot back: nothing was sent for it
                self._spawn(asyncio.get_running_loop(), self._release(member))
            raise

    async def _release(self, member: str) -> None:
        with contextlib.suppress(*self._transient):
            self._note(await self._call(RELEASE, member))

    def _note(self, reply: Reply) -> None:
        self._rate = reply.rate
        if reply.cold:
            self.coordinator_restarts += 1
            log.warning(
                "%s budget: %s had lost what it granted (restarted?); the next grant waits "
                "one window",
                self.name,
                self.describe(),
            )

    def _restamp(self, member: str) -> None:
        """The grant's request left late: its record takes the coordinator's time now (a
        task: the request goes on meanwhile)."""
        self.restamped += 1
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to correct
            self._spawn(asyncio.get_running_loop(), self._send_restamp(member))

    async def _send_restamp(self, member: str) -> None:
        # Once: a record moved a window later no longer counts anyway.
        with contextlib.suppress(*self._transient):
            self._note(await self._call(RESTAMP, member))

    async def _publish_slow_down(self, retry_after_us: int) -> None:
        failures = 0
        member = f"{self.worker}:slow"
        while True:
            try:
                reply = await self._call(SLOW_DOWN, member, retry_after_us=retry_after_us)
            except self._transient as exc:
                if self._closing:
                    return
                failures += 1
                self._coordinator_down(exc)
                await asyncio.sleep(_backoff_s(failures))
                continue
            self._note(reply)
            return

    def _spawn(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[object, object, None]
    ) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _coordinator_down(self, exc: BaseException) -> None:
        self.coordinator_errors += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "%s budget: %s unreachable (%s); sending nothing until it answers",
                self.name,
                self.describe(),
                type(exc).__name__,
            )

    def _coordinator_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "%s budget: %s answers again after %.1f s",
                self.name,
                self.describe(),
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def describe(self) -> str:
        """The coordinator, for messages (never a password or a key)."""
        return type(self).__name__


def _boot_id() -> str:
    """Changes at every boot: CLOCK_MONOTONIC times in the file mean nothing after one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "no-boot-id"


def default_budget_folder() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "styldod-batch"
    return Path.home() / ".cache" / "styldod-batch" / "budgets"


class FileBudget(SharedBudget):
    """One machine, no server: the processes of one key share a budget through a small file
    (JSON state), read and rewritten under ``flock`` in a thread, never on the event loop.

    Times are ``CLOCK_MONOTONIC``, one clock for every process of the machine; the boot id in
    the file tells a state from before a reboot. The file is 0600 in a 0700 folder that no
    other user may write (another user could otherwise replace it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rate: float,
        *,
        window_s: float = 1.0,
        margin_s: float = WINDOW_MARGIN_S,
        recovery_s: float = 10.0,
        tolerance_s: float | None = None,
        name: str = "budget",
    ) -> None:
        # One machine loses no state behind the workers' backs: no pause at first use.
        super().__init__(
            rate,
            window_s=window_s,
            margin_s=margin_s,
            recovery_s=recovery_s,
            tolerance_s=tolerance_s,
            cold_pause=False,
            name=name,
        )
        self.path = Path(path)
        self._fd: int | None = None
        self._boot = _boot_id()
        self._size = 0

    @classmethod
    def for_key(
        cls,
        base_url: str,
        api_key: str | None,
        rate: float,
        *,
        name: str = "api",
        folder: str | os.PathLike[str] | None = None,
        margin_s: float = WINDOW_MARGIN_S,
    ) -> FileBudget:
        """The budget file of one key and service, in ``folder`` (default: a private folder
        under ``$XDG_RUNTIME_DIR`` or ``~/.cache``); named by fingerprint, never by the key."""
        where = Path(folder) if folder is not None else default_budget_folder()
        path = where / f"{budget_scope(base_url, api_key, name)}.budget"
        return cls(path, rate, name=name, margin_s=margin_s)

    def describe(self) -> str:
        return f"budget file {self.path}"

    async def _connect(self) -> None:
        self._fd = await asyncio.to_thread(self._open_file)

    def _open_file(self) -> int:
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = folder.stat()
        except OSError as exc:
            raise ConfigurationError(f"cannot create the budget folder {folder}: {exc}") from exc
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid not in (0, os.geteuid()):
            raise ConfigurationError(
                f"the budget folder {folder} is writable by others or not yours: use a private "
                "folder (mode 0700)"
            )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigurationError(f"cannot open the budget file {self.path}: {exc}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            raise ConfigurationError(f"the budget file {self.path} is not a file of yours")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        return fd

    async def _disconnect(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def _call(
        self,
        op: str,
        member: str,
        *,
        epoch: int = 0,
        low: bool = False,
        others_waiting: bool = False,
        retry_after_us: int = 0,
    ) -> Reply:
        return await asyncio.to_thread(
            self._locked_step, op, member, epoch, low, others_waiting, retry_after_us
        )

    def _locked_step(
        self,
        op: str,
        member: str,
        epoch: int,
        low: bool,
        others_waiting: bool,
        retry_after_us: int,
    ) -> Reply:
        fd = self._fd
        if fd is None:
            raise OSError("the budget file is closed")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic_ns() // 1000
            state = self._read(fd, now)
            reply = step(
                state,
                now,
                self._boot,
                self.params,
                op,
                worker=self.worker,
                member=member,
                epoch=epoch,
                low=low,
                others_waiting=others_waiting,
                retry_after_us=retry_after_us,
            )
            self._write(fd, state.to_json())
            return reply
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _read(self, fd: int, now: int) -> SharedState:
        size = os.fstat(fd).st_size
        self._size = size
        data = os.pread(fd, size, 0) if size else b""
        if not data.strip():
            return SharedState(boot=self._boot)  # a new file: nothing granted yet
        try:
            return SharedState.from_json(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            # Unreadable: what was granted is unknown, so wait one window.
            return SharedState(boot=self._boot, epoch=now, paused=now + self.params.window_us)

    def _write(self, fd: int, data: bytes) -> None:
        # One pwrite, padded with spaces (valid JSON) over the old content: a process killed
        # here leaves the old state or the new one, never a mix.
        if len(data) < self._size:
            data += b" " * (self._size - len(data))
        os.pwrite(fd, data, 0)
        stripped = len(data.rstrip(b" "))
        if self._size > 4096 and stripped < self._size // 2:
            os.ftruncate(fd, stripped)
