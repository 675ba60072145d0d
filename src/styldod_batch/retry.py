"""One retry loop for every request: bounded attempts and time, exponential backoff, jitter."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from styldod_batch.budget import RateBudget
from styldod_batch.errors import RateLimited, is_retryable
from styldod_batch.settings import RetryPolicy

T = TypeVar("T")


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(policy.cap_s, policy.base_s * (2**attempt)))


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    budget: RateBudget | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> T:
    """Run ``call`` until it succeeds, fails permanently, or the policy's bounds run out.

    A 429 pauses and slows ``budget`` for its ``Retry-After`` (every caller then waits, not
    just this one); other retryable failures sleep a jittered exponential backoff.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            attempt += 1
            if not retryable(exc) or attempt >= policy.max_attempts:
                raise
            if isinstance(exc, RateLimited):
                if budget is not None:
                    budget.slow_down(exc.retry_after if exc.retry_after is not None else 1.0)
                    delay = 0.0
                else:
                    delay = exc.retry_after or 1.0
            else:
                delay = backoff_s(policy, attempt)
            if time.monotonic() + delay - started > policy.max_elapsed_s:
                raise
            if on_retry is not None:
                on_retry(exc)
            if delay:
                await asyncio.sleep(delay)
