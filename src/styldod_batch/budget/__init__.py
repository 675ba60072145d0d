"""The rate budget: how many requests of a key may leave, and when.

One algorithm (``step``), three places to keep its state: this process (``memory``), the
processes of one machine (``on_file``), every machine (``on_redis``, the same step in Lua).
``core`` holds what every budget shares with the engine: the ``Budget`` protocol, grants,
the clock and the aiohttp middleware; ``choose`` opens the one a run asks for.
"""

from styldod_batch.budget.bandwidth import ByteBucket, parse_bytes_rate
from styldod_batch.budget.choose import open_budget
from styldod_batch.budget.core import (
    LATE_SEND_S,
    SYSTEM_CLOCK,
    WINDOW_MARGIN_S,
    Budget,
    BudgetMiddleware,
    Clock,
    Grant,
    MonotonicClock,
    drip_interval,
    sent_trace,
)
from styldod_batch.budget.memory import (
    SHARED_MAX_RATE,
    RateBudget,
    StoragePause,
    ThroughputCap,
    local_budget,
)

__all__ = [
    "LATE_SEND_S",
    "SHARED_MAX_RATE",
    "SYSTEM_CLOCK",
    "WINDOW_MARGIN_S",
    "Budget",
    "BudgetMiddleware",
    "ByteBucket",
    "Clock",
    "Grant",
    "MonotonicClock",
    "RateBudget",
    "StoragePause",
    "ThroughputCap",
    "drip_interval",
    "local_budget",
    "open_budget",
    "parse_bytes_rate",
    "sent_trace",
]
