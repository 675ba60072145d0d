"""One retry loop for every request: bounded attempts and time, exponential backoff, jitter."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from styldod_batch.budget import SYSTEM_CLOCK, Budget, Clock
from styldod_batch.errors import is_rate_limited, is_retryable, server_wait_s
from styldod_batch.logs import event as log_event
from styldod_batch.settings import RetryPolicy

T = TypeVar("T")


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(policy.cap_s, policy.base_s * (2**attempt)))


def capped_server_wait_s(exc: BaseException, policy: RetryPolicy) -> float | None:
    """The server's ``Retry-After`` for ``exc``, at most ``policy.max_server_wait_s``."""
    wait = server_wait_s(exc)
    if wait is None or not wait >= 0:  # NaN included: the parser's caller may be careless
        return None
    return min(wait, policy.max_server_wait_s)


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    budget: Budget | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    retryable: Callable[[BaseException], bool] = is_retryable,
    clock: Clock = SYSTEM_CLOCK,
) -> T:
    """Run ``call`` until it succeeds, fails permanently, or the policy's bounds run out.

    A 429 pauses and slows ``budget`` for its capped ``Retry-After`` (every caller then
    waits, not just this one); another retryable failure waits its capped ``Retry-After``
    if it has one, else a jittered exponential backoff. The next attempt is not made when
    its wait, or the budget's pause, would end past ``policy.max_elapsed_s``: the failure
    is raised instead.
    """
    started = clock.now()
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            attempt += 1
            if not retryable(exc) or attempt >= policy.max_attempts:
                raise
            asked = capped_server_wait_s(exc, policy)
            delay = backoff_s(policy, attempt) if asked is None else asked
            if is_rate_limited(exc):
                wait = policy.rate_limited_wait_s if asked is None else asked
                if budget is not None:
                    budget.slow_down(wait)
                    delay = 0.0  # the budget's pause is the wait
                else:
                    delay = wait
            pending = max(delay, budget.pause_remaining_s() if budget is not None else 0.0)
            if clock.now() - started + pending > policy.max_elapsed_s:
                raise
            rate_limited = is_rate_limited(exc)
            log_event(
                logging.INFO,
                "rate_limited" if rate_limited else "retry",
                f"{'429, pausing' if rate_limited else 'retrying'} after {exc} "
                f"(attempt {attempt + 1} in {pending:.2f} s)",
                reason=str(exc),
                attempt=attempt + 1,
                wait_s=round(pending, 3),
            )
            if on_retry is not None:
                on_retry(exc)
            if delay:
                await clock.sleep(delay)
