"""Virtual time for the budget and the retry loop: ``sleep`` moves the clock at once.

Sound as long as one sleeper at a time decides what happens next: the budget sleeps only
while it holds its lock, and a retry test runs one call. ``sleeps`` records every wait.
"""

from __future__ import annotations

import asyncio


class VirtualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += max(0.0, seconds)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is

    def advance(self, seconds: float) -> None:
        self.time += seconds
