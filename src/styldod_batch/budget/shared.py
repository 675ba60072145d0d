"""The worker's side of every budget: reserve, sleep until the slot, claim (``step``), with
one ``asyncio.Lock`` per process so its callers queue first come, first served; 429s,
low priority and failures of the coordinator handled the same way for every backend.

Each process keeps at most one reservation at a time, so processes that all want more than
their share take turns: N busy workers get ``rate / N`` each.

Fail closed: when the coordinator cannot be reached, nothing is granted; the caller waits,
retrying with backoff, and goes on once it answers. Whether the coordinator lost what it
granted is the coordinator's to say (``Reply.cold``), never inferred from an error here.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import itertools
import logging
import random
import secrets
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Self

from styldod_batch.budget.core import (
    SYSTEM_CLOCK,
    WINDOW_MARGIN_S,
    BudgetMiddleware,
    Clock,
    Grant,
)
from styldod_batch.budget.step import (
    CLAIM,
    DEFER,
    GRANTED,
    RELEASE,
    RESERVE,
    RESTAMP,
    SLOW_DOWN,
    US,
    Params,
    Reply,
)

log = logging.getLogger("styldod_batch.budget")


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.name = name
        self._clock = clock
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
                await self._clock.sleep(got)
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
        # Capped; NaN, negative or zero: no pause (the 429 still halves the rate).
        retry_after_s = min(retry_after_s, self.max_pause_s) if retry_after_s > 0 else 0.0
        self.rate_limited += 1
        self._local_pause_until = max(self._local_pause_until, self._clock.now() + retry_after_s)
        self._rate = max(self._rate / 2, min(1.0, self.nominal_rate))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: the local pause only
            return
        self._spawn(loop, self._publish_slow_down(round(retry_after_s * US)))

    def pause_remaining_s(self) -> float:
        """How long this process stays paused by a 429 (0 when it is not)."""
        return max(0.0, self._local_pause_until - self._clock.now())

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
                pause = self._local_pause_until - self._clock.now()
                if pause > 0:  # our own 429, whether or not the coordinator has it yet
                    await self._clock.sleep(pause)
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
                    await self._clock.sleep(_backoff_s(failures))
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
                await self._clock.sleep(reply.wait_us / US)
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
                await self._clock.sleep(_backoff_s(failures))
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
            # The reason without the traceback: the class, and a server's own words if any.
            said = str(exc).split("\n", 1)[0][:120]
            log.warning(
                "%s budget: %s unreachable or not ready (%s%s); sending nothing until it answers",
                self.name,
                self.describe(),
                type(exc).__name__,
                f": {said}" if said and not isinstance(exc, OSError) else "",
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
