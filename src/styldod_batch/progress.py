"""How a long run shows its progress: a live line on a terminal, log lines elsewhere.

Both read the run's live report a few times a second, so the engine pays nothing for them:
the phase, how far along (out of the scan's total once the scan knows it), the elapsed time,
an ETA, files/s and MB/s of what this run uploaded (files done by an earlier run, skipped or
failed never inflate the rate), what was already done, and whether the rate budget is what
sets the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len

from styldod_batch.logs import event
from styldod_batch.report import Report

if TYPE_CHECKING:
    from styldod_batch.budget import Budget

# Rates are measured over this many recent seconds.
RATE_WINDOW_S = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a progress display shows, worked out from the report and the budget."""

    phase: str
    done: int
    total: int | None
    uploaded: int
    already_done: int
    files_per_s: float
    mb_per_s: float
    eta_s: float | None
    elapsed_s: float
    # The budget's nominal rate when it is what sets the pace, else None.
    paced_by: float | None
    # What ``done`` and ``total`` count: files, then orders finished, then outputs fetched.
    unit: str = "files"
    # Megabytes of outputs fetched so far (while outputs download).
    mb_done: float = 0.0

    def describe(self) -> str:
        """One line of text (the log's progress line)."""
        total = f"/{self.total}" if self.total is not None else " (scan going on)"
        eta = f", ETA {format_duration(self.eta_s)}" if self.eta_s is not None else ""
        parts = [f"{self.phase}: {self.done}{total} {self.unit}"]
        if self.unit == "files":
            parts.append(f"{self.files_per_s:.1f} files/s, {self.mb_per_s:.1f} MB/s{eta}")
        elif self.unit == "outputs":
            parts.append(f"{self.mb_done:.1f} MB, {self.mb_per_s:.1f} MB/s")
        if self.already_done:
            parts.append(f"{self.already_done} done by an earlier run")
        if self.paced_by is not None:
            parts.append(f"paced by the {self.paced_by:g} requests/s limit")
        return "; ".join(parts)


class Meter:
    """Turns successive reports into a ``Snapshot`` (rates over the last few seconds)."""

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget
        self.started = time.monotonic()
        self._samples: deque[tuple[float, int, int, int, int]] = deque()

    def read(self, report: Report) -> Snapshot:
        now = time.monotonic()
        granted = self.budget.granted if self.budget is not None else 0
        self._samples.append(
            (now, report.uploaded, report.bytes_uploaded, granted, report.bytes_downloaded)
        )
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        first = self._samples[0]
        span = max(now - first[0], 1e-6)
        files_per_s = (report.uploaded - first[1]) / span
        mb_per_s = (report.bytes_uploaded - first[2]) / span / 1e6
        total = None
        if report.scan_complete or report.expected is not None:
            total = max(report.found, report.total, report.expected or 0)
        eta = None
        if total is not None and files_per_s > 0:
            eta = max(0.0, (total - report.total) / files_per_s)
        paced_by = None
        # Grants arriving at (nearly) the nominal rate: the budget, not the work, is what
        # decides how fast the run goes.
        if (
            self.budget is not None
            and span >= 1.0
            and (granted - first[3]) / span >= 0.9 * self.budget.nominal_rate
        ):
            paced_by = self.budget.nominal_rate
        step = report.step_progress
        if step is not None:  # orders awaited, or outputs downloaded: count those
            done, step_total = step()
            unit = "orders" if report.phase == "waiting for orders" else "outputs"
            fetched = (report.bytes_downloaded - first[4]) / span / 1e6
            return Snapshot(
                phase=report.phase,
                done=done,
                total=step_total,
                uploaded=report.uploaded,
                already_done=report.already_done,
                files_per_s=0.0,
                mb_per_s=fetched if unit == "outputs" else 0.0,
                eta_s=None,
                elapsed_s=now - self.started,
                paced_by=None,
                unit=unit,
                mb_done=report.bytes_downloaded / 1e6,
            )
        return Snapshot(
            phase=report.phase,
            done=report.total,
            total=total,
            uploaded=report.uploaded,
            already_done=report.already_done,
            files_per_s=files_per_s,
            mb_per_s=mb_per_s,
            eta_s=eta,
            elapsed_s=now - self.started,
            paced_by=paced_by,
        )


def format_duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressShow:
    """Shows the progress of the report ``read()`` returns, until ``close()``: a live line on
    a terminal (``terminal``), else a log line every ``log_every_s``."""

    def __init__(
        self,
        read: Callable[[], Report | None],
        *,
        budget: Budget | None = None,
        terminal: bool,
        log_every_s: float = 10.0,
    ) -> None:
        self.read = read
        self.meter = Meter(budget)
        self.terminal = terminal
        self.log_every_s = log_every_s
        self._task: asyncio.Task[None] | None = None
        self._live: Any = None

    def start(self) -> None:
        if self.terminal:
            self._live = _TerminalLine()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(0.25 if self.terminal else 1.0)
            report = self.read()
            if report is None:
                continue
            snapshot = self.meter.read(report)
            if self._live is not None:
                self._live.show(snapshot)
            elif time.monotonic() - last_log >= self.log_every_s:
                last_log = time.monotonic()
                event(
                    logging.INFO,
                    "progress",
                    snapshot.describe(),
                    phase=snapshot.phase,
                    done=snapshot.done,
                    total=snapshot.total,
                    files_per_s=round(snapshot.files_per_s, 2),
                    mb_per_s=round(snapshot.mb_per_s, 3),
                    eta_s=None if snapshot.eta_s is None else round(snapshot.eta_s, 1),
                )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        report = self.read()
        if self._live is not None:
            if report is not None:
                self._live.show(self.meter.read(report))
            self._live.stop()


def fit_parts(parts: list[str], width: int, separator: str = "  ") -> str:
    """Those of ``parts`` that fit in ``width`` cells, in their order, each whole (never cut
    mid-word): one too long is left out, a shorter one after it may still fit."""
    shown: list[str] = []
    used = 0
    for part in parts:
        extra = cell_len(part) + (len(separator) if shown else 0)
        if used + extra > width:
            continue
        shown.append(part)
        used += extra
    return separator.join(shown)


class _TerminalLine:
    """The live line, drawn by rich (it keeps log records above the line), fitted to the
    terminal's width: the bar narrows, then the least useful details go, each whole."""

    BAR = 24

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.console = console or Console(stderr=True)
        self.bar = BarColumn(bar_width=self.BAR)
        self.progress = Progress(
            TextColumn("{task.description}"),
            self.bar,
            TextColumn("{task.fields[count]}"),
            # The run's own clock, not the task's: rich's stops when the bar is full.
            TextColumn("{task.fields[clock]}"),
            TextColumn("{task.fields[rest]}"),
            console=self.console,
            transient=False,
            auto_refresh=False,
            expand=False,
        )
        self._all_columns = tuple(self.progress.columns)
        self.task = self.progress.add_task("scanning", total=None, count="", clock="", rest="")
        self.progress.start()

    def show(self, snapshot: Snapshot) -> None:
        unit = snapshot.unit
        if snapshot.total:
            percent = min(100, snapshot.done * 100 // snapshot.total)
            named = "" if unit == "files" else f" {unit}"  # (files: what the line is about)
            count = f"{snapshot.done}/{snapshot.total}{named} {percent}%"
        elif snapshot.total is None and unit == "files":
            count = f"{snapshot.done} files (scan going on)"
        else:
            count = f"{snapshot.done} {unit}"
        rest = []
        if unit == "files" and snapshot.phase != "done":
            rest.append(f"{snapshot.files_per_s:.1f} files/s {snapshot.mb_per_s:.1f} MB/s")
        elif unit == "outputs":
            rest.append(f"{snapshot.mb_done:.1f} MB {snapshot.mb_per_s:.1f} MB/s")
        if snapshot.eta_s is not None:
            rest.append(f"ETA {format_duration(snapshot.eta_s)}")
        if snapshot.already_done:
            rest.append(f"{snapshot.already_done} already done")
        if snapshot.paced_by is not None:
            rest.append(f"paced by the {snapshot.paced_by:g} req/s limit")
        clock = format_duration(snapshot.elapsed_s)
        # One cell is kept free: a line that fills the last column wraps on some terminals.
        width = self.console.width - 1
        fixed = cell_len(snapshot.phase) + 1 + cell_len(count) + 1 + cell_len(clock)
        if fixed + 2 > width:  # a narrow terminal: the bare count
            count = f"{snapshot.done}/{snapshot.total}" if snapshot.total else str(snapshot.done)
            fixed = cell_len(snapshot.phase) + 1 + cell_len(count) + 1 + cell_len(clock)
        room = width - fixed
        # The bar takes what the details leave, narrowing to 10 cells before any goes.
        wanted = cell_len("  ".join(rest)) + 1 if rest else 0
        bar = max(min(self.BAR, room - 1 - wanted), min(10, room - 1))
        if bar < 6:
            bar = 0
        self.bar.bar_width = bar or None
        room -= bar + 1 if bar else 0
        details = fit_parts(rest, room - 1) if room > 1 else ""
        self.progress.columns = tuple(c for c in self._all_columns if c is not self.bar or bar)
        self.progress.update(
            self.task,
            description=snapshot.phase,
            total=snapshot.total,
            completed=snapshot.done,
            count=count,
            clock=clock,
            rest=details,
        )
        self.progress.refresh()

    def stop(self) -> None:
        self.progress.stop()
