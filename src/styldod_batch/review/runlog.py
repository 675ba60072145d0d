"""The run log: a small sidecar beside the ledger, one JSON line at a time, that tells the
morning review when each run happened and how fast it went.

The ledger records what an order *is*; it keeps no timeline. ``RunRecorder`` watches one
``Uploader`` from outside (its public request counters, and its ``on_image`` / ``on_order``
callbacks, chained) and appends to ``<ledger>.runs.jsonl``:

* ``{"run": ID, "start": EPOCH, "rps": R, "pid": P}`` when it starts;
* ``{"run": ID, "ticks": [[t_ms, api, storage, r429, files, bytes], ...], "orders": [...]}``
  every ``flush_s`` (10 s), a count per second of what the run sent since the last line, so a
  crash loses at most those seconds;
* ``{"run": ID, "end": EPOCH, ...}`` at the end, with the run's totals.

``t_ms`` is when the second ended, from the run's start; the counts are requests that went on
the wire in it (every attempt, API calls and storage PUTs apart), 429s, files and bytes
uploaded. The file is 0600 and holds no key: listing and order names, order IDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from styldod_batch.ledger.location import account_id, default_state_dir, make_private_folder
from styldod_batch.settings import Settings

if TYPE_CHECKING:
    from styldod_batch.engine import Uploader
    from styldod_batch.models import ImageResult, OrderResult

RUNS_SUFFIX = ".runs.jsonl"
# Lines longer than this are not read back (a damaged file must not cost the report its memory).
_MAX_LINE = 4 * 1024 * 1024


def run_log_path(settings: Settings) -> Path | None:
    """Where the run log of ``settings``' account lives; None when the runs keep no ledger."""
    if not settings.ledger:
        return None
    state = settings.state
    if isinstance(state, str) and state.startswith(("postgresql://", "postgres://")):
        # A server ledger: each machine keeps the log of its own runs.
        return default_state_dir() / (account_id(settings.base_url, settings.api_key) + RUNS_SUFFIX)
    from styldod_batch.ledger import ledger_path

    ledger = ledger_path(settings)
    return ledger.with_name(ledger.name.removesuffix(ledger.suffix) + RUNS_SUFFIX)


def new_run_id(now: float | None = None) -> str:
    """Sortable by start time, unique across processes: ``20261206T043100Z-1a2b3c``."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return stamp.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class RunRecorder:
    """``async with Uploader(settings) as up, RunRecorder(up):`` records that run's timeline.

    It needs nothing from the engine beyond what a library caller has: ``up.counters`` (every
    attempt on the wire, counted once) sampled once a second, and the ``on_image`` /
    ``on_order`` callbacks (chained: the caller's own still run). Writing is best-effort: a
    run never fails because its log could not be written.
    """

    def __init__(
        self,
        uploader: Uploader,
        path: Path | None = None,
        *,
        run_id: str | None = None,
        flush_s: float = 10.0,
    ) -> None:
        self.uploader = uploader
        self.path = path if path is not None else run_log_path(uploader.settings)
        self.run_id = run_id or new_run_id()
        self.flush_s = flush_s
        self.started = 0.0
        self._t0 = 0.0
        self._files = 0
        self._bytes = 0
        self._last = (0, 0, 0, 0, 0)
        self._ticks: list[list[int]] = []
        self._orders: list[list[Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._chained: tuple[Any, Any] = (None, None)

    async def __aenter__(self) -> RunRecorder:
        self.started = time.time()
        self._t0 = time.monotonic()
        up = self.uploader
        self._chained = (up.on_image, up.on_order)
        up.on_image, up.on_order = self._on_image, self._on_order
        self._last = self._totals()
        self._append({"run": self.run_id, "start": self.started, "rps": up.settings.rps})
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._tick()
        self._flush()
        up = self.uploader
        up.on_image, up.on_order = self._chained
        ended = time.time()
        self._append({"run": self.run_id, "end": ended, "files": self._files, "bytes": self._bytes})

    # -- what it watches -----------------------------------------------------------------------

    def _on_image(self, result: ImageResult) -> None:
        if result.status == "uploaded" and not result.resumed:
            self._files += 1
            self._bytes += result.size
        chained = self._chained[0]
        if chained is not None:
            chained(result)

    def _on_order(self, result: OrderResult) -> None:
        self._orders.append(
            [
                self._elapsed_ms(),
                result.key,
                result.order_id,
                result.status,
                result.listing,
                result.idempotency_key,
                result.resumed,
            ]
        )
        chained = self._chained[1]
        if chained is not None:
            chained(result)

    def _totals(self) -> tuple[int, int, int, int, int]:
        c = self.uploader.counters
        return (c.api, c.storage, c.rate_limited, self._files, self._bytes)

    def _elapsed_ms(self) -> int:
        return round((time.monotonic() - self._t0) * 1000)

    async def _sample(self) -> None:
        """One tick per second of the run, on the second (a late wake-up does not drift)."""
        beat = 0
        last_flush = time.monotonic()
        while True:
            beat += 1
            await asyncio.sleep(max(0.0, self._t0 + beat - time.monotonic()))
            self._tick()
            if time.monotonic() - last_flush >= self.flush_s:
                self._flush()
                last_flush = time.monotonic()

    def _tick(self) -> None:
        now = self._totals()
        delta = [b - a for a, b in zip(self._last, now, strict=True)]
        self._last = now
        self._ticks.append([self._elapsed_ms(), *delta])

    def _flush(self) -> None:
        if not self._ticks and not self._orders:
            return
        line: dict[str, Any] = {"run": self.run_id, "ticks": self._ticks}
        if self._orders:
            line["orders"] = self._orders
        self._ticks, self._orders = [], []
        self._append(line)

    def _append(self, line: dict[str, Any]) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            make_private_folder(self.path.parent)
            descriptor = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                0o600,
            )
            try:
                # One write of one line: appends of several processes do not interleave.
                os.write(descriptor, orjson.dumps(line) + b"\n")
            finally:
                os.close(descriptor)


# -- reading it back ---------------------------------------------------------------------------


@dataclass(slots=True)
class PlacedOrder:
    at: float
    key: str
    order_id: str | None
    status: str
    listing: str
    idempotency_key: str | None
    resumed: bool


@dataclass(slots=True)
class RunRecord:
    """One run as its log tells it."""

    run_id: str
    started: float
    rps: float = 20.0
    ended: float | None = None
    # Per second: [t_ms, api, storage, rate_limited, files, bytes].
    ticks: list[list[int]] = field(default_factory=list)
    orders: list[PlacedOrder] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(t[4] for t in self.ticks)

    @property
    def bytes(self) -> int:
        return sum(t[5] for t in self.ticks)

    @property
    def requests(self) -> int:
        return sum(t[1] + t[2] for t in self.ticks)

    @property
    def rate_limited(self) -> int:
        return sum(t[3] for t in self.ticks)

    @property
    def duration_s(self) -> float:
        if self.ended is not None:
            return max(0.0, self.ended - self.started)
        return self.ticks[-1][0] / 1000 if self.ticks else 0.0


def read_runs(path: Path | None) -> list[RunRecord]:
    """Every run in the log, oldest first; damaged lines are skipped."""
    runs: dict[str, RunRecord] = {}
    if path is None:
        return []
    for line in _lines(path):
        try:
            entry = orjson.loads(line)
            run_id = str(entry["run"])
            run = runs.get(run_id)
            if "start" in entry:
                run = runs[run_id] = RunRecord(run_id, float(entry["start"]))
                run.rps = float(entry.get("rps") or 20.0)
            if run is None:
                continue
            if "end" in entry:
                run.ended = float(entry["end"])
            run.ticks.extend([int(x) for x in tick[:6]] for tick in entry.get("ticks", ()))
            run.orders.extend(
                PlacedOrder(
                    run.started + o[0] / 1000,
                    str(o[1]),
                    o[2],
                    str(o[3]),
                    str(o[4] or ""),
                    o[5],
                    bool(o[6]),
                )
                for o in entry.get("orders", ())
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            continue
    return sorted(runs.values(), key=lambda r: r.started)


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as source:
            for line in source:
                if len(line) <= _MAX_LINE and line.strip():
                    yield line
    except OSError:
        return
