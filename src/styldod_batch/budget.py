"""The rate budget: how many requests may leave, and when.

The API counts arrivals strictly: no more than ``rate`` in any sliding one-second window.
``aiolimiter.AsyncLimiter(rate, 1)`` cannot promise that (its bucket starts full and then
drips, so twice the rate fits in one window), so the budget combines two rules:

* a drip that keeps traffic smooth (``drip_interval``): at the full rate, grants at least
  ``1 / (2 * rate)`` apart, so a window's grants spread over its first half; while a 429
  slows the budget, ``1 / rate`` at the slowed rate, which then sets the pace; and
* a record of the last ``rate`` grants: the next one waits until the oldest is more than
  ``window + margin`` old, which makes the sliding-window promise hold outright, with the
  margin absorbing delivery jitter between the grant and the server's clock.

At the full rate the window, not the drip, sets the pace; a drip of ``1 / rate`` would
spread the run's last window over 0.95 s (at 20/s) instead of 0.475.

A 429 pauses the whole budget for ``Retry-After`` (at most ``max_pause_s``: a server cannot
park the run) and halves its rate; the rate then recovers linearly to the nominal one over
``recovery_s``.

The budget is enforced in an aiohttp client middleware, which aiohttp runs for every
attempt it makes, including the silent re-send of an idempotent request on a dead
keep-alive connection, so no request reaches the wire without a grant.

A grant is recorded at the time it is given, and the margin covers the usual few
milliseconds until the request is on the wire. A request that leaves later than
``LATE_SEND_S`` after its grant was asked for (a new connection opened while other processes
start and crowd the CPU: 7 to 11 ms were measured, 20 ms at the server) has its grant
re-stamped with the time it left (``sent_trace``: aiohttp's signals for the headers and the
body's first chunk), so the next grants count from when it really went out and the margin
stays whole.

Time comes from a ``Clock`` (``time.monotonic`` and ``asyncio.sleep`` by default), so tests
can run the budget and the retry loop on virtual time without sleeping.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from styldod_batch.errors import ConfigurationError

# Added to the one-second window: delivery jitter between a grant and the server's clock.
# Late sends are re-stamped (``LATE_SEND_S``), so this covers at most 5 ms on the client
# and the trip; 4 workers starting at once on 2 cores used 3 to 7 ms of it. (Before late
# sends were re-stamped, a worker's first request, on a new connection while the others
# still started, used 21 ms.)
WINDOW_MARGIN_S = 0.015

# A request that leaves later than this after its grant was asked for is re-stamped: the
# margin is then left whole for the trip (a grant's usual lateness is 1 to 2 ms).
LATE_SEND_S = 0.005

if TYPE_CHECKING:  # aiohttp only for the middleware's types
    from aiohttp import (
        ClientHandlerType,
        ClientMiddlewareType,
        ClientRequest,
        ClientResponse,
        TraceConfig,
    )


def drip_interval(rate: float, nominal_rate: float) -> float:
    """The least time between two grants at ``rate``, the current (maybe slowed) rate."""
    if rate >= nominal_rate:
        return 0.5 / nominal_rate
    return 1.0 / rate


class Grant:
    """One grant: when it was asked for (``time.monotonic``), and how to move its record to
    the time its request really left, if that was late."""

    __slots__ = ("_restamp", "asked_at", "body_started", "restamped")

    def __init__(self, asked_at: float, restamp: Callable[[], None]) -> None:
        self.asked_at = asked_at
        self.restamped = False
        self.body_started = False
        self._restamp = restamp

    def sent(self, at: float) -> None:
        """The request is going on the wire at ``at`` (``time.monotonic``)."""
        if not self.restamped and at - self.asked_at > LATE_SEND_S:
            self.restamped = True
            self._restamp()


# The grant of the request this task is sending: the middleware sets it, the headers-sent
# signal (same task) reads it.
_SENDING: contextvars.ContextVar[Grant | None] = contextvars.ContextVar(
    "styldod_batch_sending", default=None
)


class Clock(Protocol):
    """Where the budget and the retry loop read the time and wait."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = MonotonicClock()


class RateBudget:
    """At most ``rate`` grants in any sliding window of ``window_s`` (+ margin) seconds."""

    __slots__ = (
        "_clock",
        "_grants",
        "_idle",
        "_last_grant",
        "_last_slowdown",
        "_lock",
        "_paused_until",
        "_restamped",
        "_slowed_rate",
        "_waiting",
        "granted",
        "max_pause_s",
        "name",
        "nominal_rate",
        "rate_limited",
        "recovery_s",
        "window_s",
    )

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
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.name = name
        self.nominal_rate = float(rate)
        self.window_s = window_s + margin_s
        self.recovery_s = recovery_s
        self.max_pause_s = max_pause_s
        self._clock = clock
        self._grants: deque[float] = deque(maxlen=max(1, int(rate)))
        self._restamped = 0
        self._lock = asyncio.Lock()
        self._paused_until = float("-inf")
        self._last_grant = float("-inf")
        self._slowed_rate = self.nominal_rate
        self._last_slowdown = 0.0
        self.granted = 0
        self.rate_limited = 0
        self._waiting = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def current_rate(self) -> float:
        if self._slowed_rate >= self.nominal_rate:
            return self.nominal_rate
        elapsed = self._clock.now() - self._last_slowdown
        regained = (self.nominal_rate - self._slowed_rate) * elapsed / self.recovery_s
        return min(self.nominal_rate, self._slowed_rate + regained)

    def pause_remaining_s(self) -> float:
        """How long the budget stays paused by a 429 (0 when it is not)."""
        return max(0.0, self._paused_until - self._clock.now())

    async def acquire(self, *, low_priority: bool = False) -> Grant:
        """Wait for a grant. A low-priority caller (order polling) lets every normal
        caller that is waiting go first, so it never crowds uploads out."""
        if low_priority:
            while self._waiting:
                await self._idle.wait()
            return await self._acquire()
        self._waiting += 1
        self._idle.clear()
        try:
            return await self._acquire()
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._idle.set()

    async def _acquire(self) -> Grant:
        # asyncio.Lock wakes waiters in FIFO order, so grants are first come, first served.
        async with self._lock:
            clock = self._clock
            while True:
                now = clock.now()
                # The rate is read again after every wait: a 429 meanwhile slows it.
                drip = drip_interval(self.current_rate, self.nominal_rate)
                ready = max(self._paused_until, self._last_grant + drip)
                if len(self._grants) == self._grants.maxlen:
                    # The earliest record: the first one, unless a late send moved it.
                    oldest = min(self._grants) if self._restamped else self._grants[0]
                    ready = max(ready, oldest + self.window_s)
                if ready <= now:
                    break
                await clock.sleep(ready - now)
            self._last_grant = now
            self._grants.append(now)
            self.granted += 1
            index = self.granted
            return Grant(time.monotonic(), functools.partial(self._restamp, index, now))

    def _restamp(self, index: int, granted_at: float) -> None:
        """Grant number ``index`` left late: its record takes the time now."""
        position = len(self._grants) - 1 - (self.granted - index)
        if position >= 0 and self._grants[position] == granted_at:
            self._grants[position] = max(granted_at, self._clock.now())
            self._restamped += 1

    def slow_down(self, retry_after_s: float) -> None:
        """A 429 arrived: pause everything for ``retry_after_s`` (at most ``max_pause_s``;
        NaN or negative: no pause) and halve the rate."""
        now = self._clock.now()
        self.rate_limited += 1
        pause = min(retry_after_s, self.max_pause_s) if retry_after_s > 0 else 0.0
        self._paused_until = max(self._paused_until, now + pause)
        self._slowed_rate = max(self.current_rate / 2, min(1.0, self.nominal_rate))
        self._last_slowdown = now

    def middleware(self, *, low_priority: bool = False) -> BudgetMiddleware:
        return BudgetMiddleware(self, low_priority=low_priority)


class Budget(Protocol):
    """What the engine needs of a budget: ``RateBudget`` (this process), ``FileBudget`` (the
    processes of one machine) and ``RedisBudget`` (every machine)."""

    name: str
    nominal_rate: float
    granted: int
    rate_limited: int

    @property
    def current_rate(self) -> float: ...

    async def acquire(self, *, low_priority: bool = False) -> Grant: ...

    def slow_down(self, retry_after_s: float) -> None: ...

    def pause_remaining_s(self) -> float: ...

    def middleware(self, *, low_priority: bool = False) -> ClientMiddlewareType: ...


class BudgetMiddleware:
    """aiohttp client middleware: every attempt on the wire first takes a grant."""

    __slots__ = ("budget", "low_priority")

    def __init__(self, budget: Budget, *, low_priority: bool = False) -> None:
        self.budget = budget
        self.low_priority = low_priority

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        grant = await self.budget.acquire(low_priority=self.low_priority)
        token = _SENDING.set(grant)
        try:
            return await handler(request)
        finally:
            _SENDING.reset(token)


async def _headers_sent(*_: object) -> None:
    grant = _SENDING.get()
    if grant is not None:
        grant.sent(time.monotonic())


async def _chunk_sent(*_: object) -> None:
    # aiohttp holds the headers back until the body's first chunk (a file's first read):
    # that write is when a request with a body leaves. (The writer task that sends the body
    # was made inside the middleware's context, so it sees the grant.)
    grant = _SENDING.get()
    if grant is not None and not grant.body_started:
        grant.body_started = True
        grant.sent(time.monotonic())


def sent_trace() -> TraceConfig:
    """The trace config a session with a budget middleware needs: it tells each grant when
    its request left (``Grant.sent``)."""
    from aiohttp import TraceConfig

    trace = TraceConfig()
    trace.on_request_headers_sent.append(_headers_sent)
    trace.on_request_chunk_sent.append(_chunk_sent)
    return trace


# A shared budget keeps a log of its last ``rate`` grants: beyond what any API allows, that
# log would cost more than sharing saves, and such a budget stays this process's own.
SHARED_MAX_RATE = 200.0


async def open_budget(
    choice: str | None,
    rate: float,
    *,
    name: str,
    base_url: str,
    api_key: str | None,
    margin_s: float,
    max_pause_s: float,
    folder: str | None,
) -> Budget:
    """The budget ``choice`` names, open: "process" (this process alone), "file:[DIR]" (every
    process of this machine; DIR defaults to ``folder``, the ledger's), "redis://..." (every
    machine). None picks "file:" when there is a ``folder`` to share, else "process"."""
    if choice is None:
        choice = "file:" if folder is not None else "process"
    if choice == "process" or rate > SHARED_MAX_RATE:
        return RateBudget(rate, margin_s=margin_s, max_pause_s=max_pause_s, name=name)
    if choice.startswith("file:"):
        from styldod_batch.budget_file import FileBudget

        shared: Any = FileBudget.for_key(
            base_url,
            api_key,
            rate,
            name=name,
            folder=choice.removeprefix("file:") or folder,
            margin_s=margin_s,
        )
    else:
        try:
            from styldod_batch.budget_redis import RedisBudget
        except ImportError as exc:  # the optional extra
            raise ConfigurationError(
                "--budget redis://... needs redis: pip install 'styldod-batch[shared]'"
            ) from exc
        shared = RedisBudget(
            choice, rate, base_url=base_url, api_key=api_key, name=name, margin_s=margin_s
        )
    shared.max_pause_s = max_pause_s
    await shared.open()
    budget: Budget = shared
    return budget
