"""The retry loop on virtual time: bounded attempts, bounded time with the server's waits
counted (the budget's pause included), capped and garbage ``Retry-After``."""

from __future__ import annotations

import pytest

from styldod_batch.budget import RateBudget
from styldod_batch.errors import (
    NetworkError,
    ProtocolError,
    RateLimited,
    ServerError,
    StorageRateLimited,
    api_error,
    storage_error,
)
from styldod_batch.retry import retrying
from styldod_batch.settings import RetryPolicy
from tests.virtual_clock import VirtualClock


class Failing:
    """A call that raises ``errors`` in turn (then succeeds); each attempt first takes a
    grant, as every request on the wire does, and may take ``attempt_s`` of virtual time."""

    def __init__(
        self,
        clock: VirtualClock,
        errors: list[Exception],
        *,
        budget: RateBudget | None = None,
        attempt_s: float = 0.0,
    ) -> None:
        self.clock = clock
        self.errors = errors
        self.budget = budget
        self.attempt_s = attempt_s
        self.attempts: list[float] = []

    async def __call__(self) -> str:
        if self.budget is not None:
            await self.budget.acquire()
        self.attempts.append(self.clock.now())
        self.clock.advance(self.attempt_s)
        if len(self.attempts) <= len(self.errors):
            raise self.errors[len(self.attempts) - 1]
        return "done"


async def test_success_after_retryable_failures_with_jittered_backoff() -> None:
    clock = VirtualClock()
    call = Failing(clock, [NetworkError("reset"), ServerError("502")] * 2)
    retried: list[BaseException] = []
    policy = RetryPolicy(base_s=0.1, cap_s=5.0)
    assert await retrying(call, policy, on_retry=retried.append, clock=clock) == "done"
    assert len(call.attempts) == 5
    assert retried == call.errors
    for attempt, slept in enumerate(clock.sleeps, start=1):
        assert 0.0 <= slept <= min(policy.cap_s, policy.base_s * 2**attempt)


async def test_attempts_are_bounded() -> None:
    clock = VirtualClock()
    call = Failing(clock, [NetworkError("reset")] * 100)
    with pytest.raises(NetworkError):
        await retrying(call, RetryPolicy(max_attempts=4), clock=clock)
    assert len(call.attempts) == 4
    assert len(clock.sleeps) == 3


async def test_a_permanent_failure_is_not_retried() -> None:
    clock = VirtualClock()
    call = Failing(clock, [ProtocolError("not JSON")])
    with pytest.raises(ProtocolError):
        await retrying(call, RetryPolicy(), clock=clock)
    assert len(call.attempts) == 1


async def test_time_is_bounded_slow_attempts_included() -> None:
    clock = VirtualClock()
    call = Failing(clock, [NetworkError("timeout")] * 100, attempt_s=30.0)
    policy = RetryPolicy(max_attempts=100, max_elapsed_s=100.0)
    with pytest.raises(NetworkError):
        await retrying(call, policy, clock=clock)
    assert len(call.attempts) == 4  # a fifth could not start within 100 s
    assert clock.now() - call.attempts[0] <= 100.0 + 30.0


@pytest.mark.parametrize("retry_after", ["1e9", "86400", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_huge_retry_after_on_a_5xx_is_capped(retry_after: str) -> None:
    clock = VirtualClock()
    unavailable = api_error(503, b"", {"Retry-After": retry_after}, context="GET /x")
    call = Failing(clock, [unavailable] * 2)
    policy = RetryPolicy(max_server_wait_s=20.0)
    assert await retrying(call, policy, clock=clock) == "done"
    assert clock.sleeps == [20.0, 20.0]


async def test_server_waits_count_against_the_time_bound() -> None:
    clock = VirtualClock()
    unavailable = api_error(503, b"", {"Retry-After": "86400"}, context="GET /x")
    call = Failing(clock, [unavailable] * 100)
    policy = RetryPolicy(max_attempts=100, max_elapsed_s=50.0, max_server_wait_s=20.0)
    with pytest.raises(ServerError):
        await retrying(call, policy, clock=clock)
    assert clock.sleeps == [20.0, 20.0]  # a third wait would end past 50 s
    assert len(call.attempts) == 3


@pytest.mark.parametrize("retry_after", ["86400", "1e9"])
async def test_a_429_pauses_the_budget_for_a_capped_wait(retry_after: str) -> None:
    clock = VirtualClock()
    budget = RateBudget(20, clock=clock)
    limited = api_error(429, b"", {"Retry-After": retry_after}, context="POST /x")
    call = Failing(clock, [limited] * 2, budget=budget)
    policy = RetryPolicy(max_server_wait_s=20.0)
    assert await retrying(call, policy, budget=budget, clock=clock) == "done"
    assert budget.rate_limited == 2
    first, second, third = call.attempts
    # The loop itself does not sleep: the budget's pause holds every caller, this one too.
    assert second - first == pytest.approx(20.0, abs=0.1)
    assert third - second == pytest.approx(20.0, abs=0.1)


async def test_the_budgets_pause_counts_against_the_time_bound() -> None:
    clock = VirtualClock()
    budget = RateBudget(20, clock=clock)
    limited = storage_error(429, b"<Error><Code>SlowDown</Code></Error>", "86400")
    assert isinstance(limited, StorageRateLimited)
    call = Failing(clock, [limited] * 100, budget=budget)
    policy = RetryPolicy(max_attempts=100, max_elapsed_s=30.0, max_server_wait_s=20.0)
    with pytest.raises(StorageRateLimited):
        await retrying(call, policy, budget=budget, clock=clock)
    assert len(call.attempts) == 2  # after one 20 s pause, a second would end past 30 s
    assert clock.now() - call.attempts[0] <= 30.0


@pytest.mark.parametrize("retry_after", ["soon", "nan", "inf", "-3", ""])
async def test_a_garbage_retry_after_is_absent(retry_after: str) -> None:
    clock = VirtualClock()
    budget = RateBudget(20, clock=clock)
    limited = api_error(429, b"", {"Retry-After": retry_after}, context="POST /x")
    call = Failing(clock, [limited], budget=budget)
    policy = RetryPolicy(rate_limited_wait_s=1.5)
    assert await retrying(call, policy, budget=budget, clock=clock) == "done"
    assert call.attempts[1] - call.attempts[0] == pytest.approx(1.5, abs=0.1)


async def test_a_429_without_a_budget_sleeps_its_capped_wait() -> None:
    clock = VirtualClock()
    calls = Failing(clock, [RateLimited("x", retry_after=7.0), RateLimited("x", retry_after=1e6)])
    assert await retrying(calls, RetryPolicy(max_server_wait_s=20.0), clock=clock) == "done"
    assert clock.sleeps == [7.0, 20.0]
