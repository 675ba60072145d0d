"""The rate budget on virtual time: the strict window, the drip, the 429 pause, priorities."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from styldod_batch.budget import RateBudget
from styldod_batch.budget.core import Grant
from tests.virtual_clock import VirtualClock


async def grant_times(budget: RateBudget, clock: VirtualClock, count: int) -> list[float]:
    times = []
    for _ in range(count):
        await budget.acquire()
        times.append(clock.now())
    return times


async def test_never_more_than_rate_in_any_window_and_grants_drip() -> None:
    clock = VirtualClock()
    budget = RateBudget(20, margin_s=0.015, clock=clock)
    times = await grant_times(budget, clock, 100)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # At the full rate the drip spreads a window's grants over its first half.
    assert min(gaps) >= 1 / 40 - 1e-9, "one grant per 1/(2 rate) at most"
    # The 21st grant comes a full window (plus the margin) after the 1st, and so on.
    assert min(times[i + 20] - times[i] for i in range(len(times) - 20)) >= 1.015 - 1e-9
    assert max(sum(1 for t in times if start <= t < start + 1.0) for start in times) == 20
    # ... and the budget does give the rate: 100 grants in five windows, the last one
    # spread over half of it.
    assert times[-1] - times[0] == pytest.approx(4 * 1.015 + 19 / 40)
    assert budget.granted == 100


async def test_a_grant_whose_request_left_late_counts_from_when_it_left() -> None:
    clock = VirtualClock()
    budget = RateBudget(20, margin_s=0.015, clock=clock)
    first = await budget.acquire()
    first.sent(first.asked_at + 0.001)  # on time: its record stays
    assert not first.restamped
    clock.advance(0.04)  # it leaves 40 ms after its grant
    first.sent(first.asked_at + 0.04)
    assert first.restamped
    times = [t - 1000.0 for t in await grant_times(budget, clock, 20)]
    assert times[:2] == pytest.approx([0.04, 0.065])  # the drip goes on from the grant
    # The 21st grant waits a window after the first request really left, not after its
    # grant (which would be 1.015).
    assert times[-1] == pytest.approx(0.04 + 1.015)


def test_a_late_body_moves_the_record_again_after_late_headers() -> None:
    """A request with a body is told twice: its headers written, then its body's first chunk
    going out with them. Late headers re-stamp it; a body later still re-stamps it again (it
    was re-stamped once only: a run slowed by coverage left a request 55 ms after its
    record)."""
    stamps: list[float] = []
    grant = Grant(100.0, lambda: stamps.append(len(stamps)))
    grant.sent(100.006)  # the headers, late
    grant.sent(100.008)  # the body's first chunk, within LATE_SEND_S of that: no new stamp
    grant.sent(100.060)  # a body that took 60 ms to read
    assert (grant.restamped, len(stamps)) == (True, 2)


async def test_concurrent_callers_are_served_first_come_first_served() -> None:
    clock = VirtualClock()
    budget = RateBudget(10, clock=clock)
    order: list[int] = []

    async def caller(index: int) -> None:
        await budget.acquire()
        order.append(index)

    await asyncio.gather(*(caller(index) for index in range(25)))
    assert order == list(range(25))
    assert clock.now() - 1000.0 >= 2 * 1.015  # 25 grants at 10 per window: three windows


async def test_a_429_pauses_every_caller_halves_the_rate_and_it_recovers() -> None:
    clock = VirtualClock()
    budget = RateBudget(20, recovery_s=10.0, clock=clock)
    await budget.acquire()
    budget.slow_down(3.0)
    assert budget.rate_limited == 1
    assert budget.pause_remaining_s() == pytest.approx(3.0)
    assert budget.current_rate == pytest.approx(10.0)
    paused_at = clock.now()
    times = await grant_times(budget, clock, 3)
    assert times[0] == pytest.approx(paused_at + 3.0)
    # The drip follows the slowed rate, 13/s three seconds into its ten-second recovery.
    assert times[1] - times[0] == pytest.approx(1 / 13, rel=0.01)
    clock.advance(paused_at + 5.0 - clock.now())
    assert budget.current_rate == pytest.approx(15.0)
    clock.advance(5.0)
    assert budget.current_rate == 20.0


@pytest.mark.parametrize(
    ("asked", "paused"),
    [(86400.0, 20.0), (1e9, 20.0), (math.inf, 20.0), (math.nan, 0.0), (-5.0, 0.0), (0.0, 0.0)],
)
async def test_the_pause_a_server_asks_for_is_capped_and_garbage_is_no_pause(
    asked: float, paused: float
) -> None:
    clock = VirtualClock()
    budget = RateBudget(20, max_pause_s=20.0, clock=clock)
    budget.slow_down(asked)
    assert budget.pause_remaining_s() == pytest.approx(paused)
    before = clock.now()
    await budget.acquire()
    assert clock.now() - before == pytest.approx(paused)


async def test_a_burst_of_429s_halves_the_rate_once() -> None:
    """The 429s of one burst arrive together: one halving per pause, as every shared budget
    does (one step function); before, this process's budget halved on each (20 -> 1)."""
    clock = VirtualClock()
    budget = RateBudget(20, clock=clock)
    for _ in range(10):
        budget.slow_down(1.0)
    assert budget.rate_limited == 10
    assert budget.current_rate == pytest.approx(10.0)
    assert budget.pause_remaining_s() == pytest.approx(1.0)


async def test_repeated_429s_never_stop_the_budget() -> None:
    clock = VirtualClock()
    budget = RateBudget(20, recovery_s=1000.0, clock=clock)
    for _ in range(10):  # one 429 per pause, each after the last pause ended
        budget.slow_down(1.0)
        clock.advance(1.0)
    assert budget.current_rate == pytest.approx(1.0, abs=0.1)  # the floor
    budget.slow_down(1.0)
    assert budget.pause_remaining_s() == pytest.approx(1.0)
    before = clock.now()
    await budget.acquire()
    assert clock.now() - before == pytest.approx(1.0)


async def test_a_low_priority_caller_lets_every_waiting_caller_go_first() -> None:
    clock = VirtualClock()
    budget = RateBudget(5, clock=clock)
    order: list[str] = []

    async def caller(name: str, *, low_priority: bool = False) -> None:
        await budget.acquire(low_priority=low_priority)
        order.append(name)

    # Tasks start in the order they are made: the poll arrives while n* wait, m* after it.
    first = [asyncio.create_task(caller(f"n{index}")) for index in range(3)]
    poll = asyncio.create_task(caller("poll", low_priority=True))
    later = [asyncio.create_task(caller(f"m{index}")) for index in range(3)]
    await asyncio.gather(*first, poll, *later)
    assert order[-1] == "poll"
    assert sorted(order[:-1]) == ["m0", "m1", "m2", "n0", "n1", "n2"]


async def test_a_low_priority_caller_goes_at_once_when_nobody_waits() -> None:
    clock = VirtualClock()
    budget = RateBudget(5, clock=clock)
    await budget.acquire(low_priority=True)
    assert (budget.granted, clock.sleeps) == (1, [])


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateBudget(0)
