"""Budgets of this process alone.

``RateBudget`` is the shared algorithm (``step``) on a state in memory: the same strict
window, drip, claim, 429 pause (one halving per pause) and low priority as the budgets that
processes and machines share, on an injectable ``Clock`` so that tests run it on virtual
time. Its log holds up to ``rate`` entries, each step reads all of them: meant for rates an
API allows (``SHARED_MAX_RATE`` and below).

``ThroughputCap`` is for rates beyond that (``--upload-rps 1000``): a token bucket
(``aiolimiter``) that caps throughput on average. It is not a sliding-window promise, and
never the API's budget.

``StoragePause`` caps nothing: it only pauses its callers when storage answers 429 or
SlowDown (storage traffic's default, which the API's limit does not count).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiolimiter import AsyncLimiter

from styldod_batch.budget.core import (
    SYSTEM_CLOCK,
    WINDOW_MARGIN_S,
    BudgetMiddleware,
    Clock,
    Grant,
)
from styldod_batch.budget.shared import SharedBudget
from styldod_batch.budget.step import (
    RESTAMP,
    SLOW_DOWN,
    US,
    Reply,
    SharedState,
    current_rate,
    step,
)

if TYPE_CHECKING:
    from styldod_batch.budget.core import Budget

# A shared budget keeps a log of its last ``rate`` grants: beyond what any API allows, that
# log would cost more than it is worth, and a rate is a throughput cap.
SHARED_MAX_RATE = 200.0

_BOOT = "memory"  # one state, one coordinator: never cold


class RateBudget(SharedBudget):
    """At most ``rate`` grants in any sliding window of ``window_s`` (+ margin) seconds, for
    the callers of this process (``step`` on a state in memory)."""

    def __init__(
        self,
        rate: float,
        *,
        window_s: float = 1.0,
        margin_s: float = WINDOW_MARGIN_S,
        recovery_s: float = 10.0,
        max_pause_s: float = 20.0,
        name: str = "budget",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(
            rate,
            window_s=window_s,
            margin_s=margin_s,
            recovery_s=recovery_s,
            cold_pause=False,
            name=name,
            max_pause_s=max_pause_s,
            clock=clock,
        )
        self._state = SharedState(boot=_BOOT)
        self._opened = True  # nothing to reach: open from the start, and never closed

    async def open(self) -> RateBudget:
        return self

    async def close(self) -> None:
        return None

    async def _connect(self) -> None:
        return None

    async def _disconnect(self) -> None:
        return None

    def _apply(
        self,
        op: str,
        member: str,
        *,
        epoch: int = 0,
        low: bool = False,
        others_waiting: bool = False,
        retry_after_us: int = 0,
    ) -> Reply:
        """One step, at once: the state is this process's, so no lock or thread is needed."""
        return step(
            self._state,
            round(self._clock.now() * US),
            _BOOT,
            self.params,
            op,
            worker=self.worker,
            member=member,
            epoch=epoch,
            low=low,
            others_waiting=others_waiting,
            retry_after_us=retry_after_us,
        )

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
        return self._apply(
            op,
            member,
            epoch=epoch,
            low=low,
            others_waiting=others_waiting,
            retry_after_us=retry_after_us,
        )

    @property
    def current_rate(self) -> float:
        return current_rate(self._state, round(self._clock.now() * US), self.params)

    def pause_remaining_s(self) -> float:
        return max(0.0, (self._state.paused - self._clock.now() * US) / US)

    def slow_down(self, retry_after_s: float) -> None:
        """A 429 arrived: pause every caller for ``retry_after_s`` (capped at ``max_pause_s``;
        NaN or negative: no pause) and halve the rate, once per pause."""
        pause = min(retry_after_s, self.max_pause_s) if retry_after_s > 0 else 0.0
        self.rate_limited += 1
        self._note(self._apply(SLOW_DOWN, f"{self.worker}:slow", retry_after_us=round(pause * US)))

    def _restamp(self, member: str) -> None:
        self.restamped += 1
        self._apply(RESTAMP, member)

    def describe(self) -> str:
        return "this process"


class ThroughputCap:
    """A throughput cap of ``rate`` requests a second on average (a token bucket): for the
    rates a user sets on storage traffic, far above any API's limit."""

    def __init__(self, rate: float, *, name: str = "budget", max_pause_s: float = 20.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.name = name
        self.nominal_rate = float(rate)
        self.max_pause_s = max_pause_s
        self.granted = 0
        self.rate_limited = 0
        # Small buckets: at most a tenth of a second's worth at once.
        self._limiter = AsyncLimiter(max(1.0, rate / 10), 0.1)
        self._paused_until = 0.0

    @property
    def current_rate(self) -> float:
        return self.nominal_rate

    async def acquire(self, *, low_priority: bool = False) -> Grant:
        pause = self.pause_remaining_s()
        if pause > 0:
            await SYSTEM_CLOCK.sleep(pause)
        await self._limiter.acquire()
        self.granted += 1
        return Grant(time.monotonic(), _nothing)

    def slow_down(self, retry_after_s: float) -> None:
        pause = min(retry_after_s, self.max_pause_s) if retry_after_s > 0 else 0.0
        self.rate_limited += 1
        self._paused_until = max(self._paused_until, time.monotonic() + pause)

    def pause_remaining_s(self) -> float:
        return max(0.0, self._paused_until - time.monotonic())

    def middleware(self, *, low_priority: bool = False) -> BudgetMiddleware:
        return BudgetMiddleware(self, low_priority=low_priority)


class StoragePause:
    """No cap at all, only storage's own word: a 429 or SlowDown pauses every caller of this
    budget for its (capped) ``Retry-After``, as a rate budget's pause does, and then traffic
    goes on at full speed. The default for PUTs and downloads, which the API's limit does
    not count: concurrency bounds them."""

    def __init__(
        self, *, name: str = "storage", max_pause_s: float = 20.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.name = name
        self.nominal_rate = 0.0  # no cap
        self.max_pause_s = max_pause_s
        self.granted = 0
        self.rate_limited = 0
        self._clock = clock
        self._paused_until = 0.0

    @property
    def current_rate(self) -> float:
        return self.nominal_rate

    async def acquire(self, *, low_priority: bool = False) -> Grant:
        while (pause := self.pause_remaining_s()) > 0:
            await self._clock.sleep(pause)
        self.granted += 1
        return Grant(time.monotonic(), _nothing)

    def slow_down(self, retry_after_s: float) -> None:
        pause = min(retry_after_s, self.max_pause_s) if retry_after_s > 0 else 0.0
        self.rate_limited += 1
        self._paused_until = max(self._paused_until, self._clock.now() + pause)

    def pause_remaining_s(self) -> float:
        return max(0.0, self._paused_until - self._clock.now())

    def middleware(self, *, low_priority: bool = False) -> BudgetMiddleware:
        return BudgetMiddleware(self, low_priority=low_priority)


def _nothing() -> None:
    """A cap keeps no log: a late request has nothing to re-stamp."""


def local_budget(
    rate: float, *, name: str, margin_s: float = WINDOW_MARGIN_S, max_pause_s: float = 20.0
) -> Budget:
    """This process's budget for ``rate``: the strict window up to ``SHARED_MAX_RATE``, a
    throughput cap above it."""
    if rate > SHARED_MAX_RATE:
        return ThroughputCap(rate, name=name, max_pause_s=max_pause_s)
    return RateBudget(rate, margin_s=margin_s, max_pause_s=max_pause_s, name=name)
