"""A bandwidth cap (``--bwlimit``): bytes per second across every concurrent transfer.

``ByteBucket`` is a shared async byte bucket that each body consults chunk by chunk before
the chunk goes on the wire (or, for a download, once it has arrived): each chunk reserves
its share of the line in turn, and may leave ``burst_s`` before the line is free for it, so
the bytes sent in any ``T`` seconds stay within ``rate * (T + burst_s)`` plus one chunk.
"""

from __future__ import annotations

import math
import re

from styldod_batch.budget.core import SYSTEM_CLOCK, Clock

# rclone's suffixes: binary multiples (K = 1024), with an optional trailing B (or iB).
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
# How far ahead of the line a chunk may leave (a tenth of a second's bytes).
BURST_S = 0.1


def parse_bytes_rate(text: str) -> int | None:
    """``--bwlimit``'s value in bytes per second: a number with an optional rclone-style
    suffix (``500K``, ``10M``, ``1.5G``; K = 1024; a trailing ``B``/``iB`` is allowed), or
    ``off`` (no cap: None). Raises ``ValueError`` with a reason."""
    folded = text.strip().lower()
    if folded in ("off", "none"):
        return None
    found = _RATE.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a rate in bytes/s (e.g. 500K, 10M, 1G or off)")
    number, unit = found.groups()
    value = float(number) * _UNITS[unit.upper()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{text!r} is less than 1 byte/s (use off for no cap)")
    return int(value)


def format_bytes_rate(rate: int | None) -> str:
    """The inverse of ``parse_bytes_rate``, for messages: ``10M``, ``500K``, ``off``."""
    if rate is None:
        return "off"
    for unit in ("T", "G", "M", "K"):
        size = _UNITS[unit]
        if rate >= size and rate % size == 0:
            return f"{rate // size}{unit}"
    return str(rate)


class ByteBucket:
    """At most ``rate`` bytes a second, on average, across every caller of ``take``."""

    def __init__(self, rate: float, *, burst_s: float = BURST_S, clock: Clock = SYSTEM_CLOCK):
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst_s = burst_s
        self.taken = 0
        self.waited_s = 0.0
        self._clock = clock
        # When the bytes reserved so far will have been sent at the full rate.
        self._free_at = 0.0

    async def take(self, size: int) -> None:
        """Reserve ``size`` bytes of the line; returns once they may go."""
        if size <= 0:
            return
        now = self._clock.now()
        self._free_at = max(self._free_at, now) + size / self.rate
        self.taken += size
        wait = self._free_at - self.burst_s - now
        if wait > 0:
            self.waited_s += wait
            await self._clock.sleep(wait)
