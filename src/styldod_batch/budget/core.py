"""The rate budget's common parts: what a budget is (``Budget``), a grant, the clock, and the
aiohttp middleware through which every attempt on the wire takes its grant.

How many requests may leave, and when.

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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

# Added to the one-second window: delivery jitter between a grant and the server's clock.
# Late sends are re-stamped (``LATE_SEND_S``), so this covers at most 5 ms on the client
# and the rest of the trip, which the client cannot see: the server's own wait for a CPU
# before it stamps the arrival. On 2 cores shared by 4 workers, Redis, PostgreSQL,
# SeaweedFS and the sandbox, a first request was stamped at least 27 ms later than the one
# a window after it (15 ms let 21 into one second). 50 ms costs 3.5 % of the pace at the
# full rate; a 429 costs a pause of a second or more and halves the rate.
WINDOW_MARGIN_S = 0.05

# A request that leaves later than this after its grant was asked for is re-stamped: the
# margin is then left whole for the trip (a grant's usual lateness is 1 to 2 ms).
LATE_SEND_S = 0.005

# A grant older than this when its request is about to go (a process stopped right after
# its grant) is not used: a new one is taken.
STALE_GRANT_S = 0.1

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

    __slots__ = ("_restamp", "_stamped_at", "asked_at", "body_started", "granted_at", "restamped")

    def __init__(self, asked_at: float, restamp: Callable[[], None]) -> None:
        self.asked_at = asked_at
        self.granted_at = time.monotonic()
        self.restamped = False
        self.body_started = False
        self._restamp = restamp
        self._stamped_at = asked_at

    def sent(self, at: float) -> None:
        """The request is going on the wire at ``at`` (``time.monotonic``). A request with a
        body is told twice: when its headers are written (aiohttp holds them back) and when
        they leave with the body's first chunk. Each time it is late against its record, the
        record moves there (a re-stamp never moves it back), so a late first signal does not
        hide a later departure."""
        if at - self._stamped_at > LATE_SEND_S:
            self._stamped_at = at
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
        while time.monotonic() - grant.granted_at > STALE_GRANT_S:
            # This process was held up (stopped, starved) between the grant and its send:
            # the grant's place in the window is long gone, so take a new one. The old one
            # stays logged as a spent slot, which only makes the budget stricter.
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
