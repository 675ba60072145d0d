"""A run's counters as a Prometheus text file (``--metrics-file``), for node_exporter's
textfile collector: images by outcome, orders by state, outputs, requests, retries and 429s,
bytes, durations, and when the job last succeeded.

The file is replaced atomically (a temporary file in the same folder, fsync, rename), every
few seconds during the run and once at its end, so a scrape never reads half of it. The
temporary file's name does not end in ``.prom``: the collector never reads it.
``styldod_batch_last_success_timestamp_seconds`` is carried over from the previous file
until a run succeeds, so an alert can fire on "no success for 26 hours".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from styldod_batch.logs import event
from styldod_batch.report import Report

# Written this often during a run (node_exporter reads the file at each scrape).
INTERVAL_S = 5.0
LAST_SUCCESS = "styldod_batch_last_success_timestamp_seconds"


def escape_label(value: str) -> str:
    """A label value as the exposition format wants it: ``\\``, ``"`` and newlines escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(
                f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}"
            )

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.metric(name, kind, help_text, [({}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(
    report: Report,
    *,
    started: float,
    now: float,
    running: bool,
    success: bool | None,
    last_success: float | None,
) -> str:
    """The exposition text of ``report``. ``started`` and ``now``: wall-clock seconds;
    ``success``: None while the run goes on."""
    out = _Exposition()
    images = {
        "uploaded": report.uploaded,
        "skipped": report.skipped,
        "failed": report.failed,
        "already_done": report.already_done,
        "changed": len(report.changed),
        "moved": len(report.moved),
        "late": len(report.late),
        "not_reached": report.not_reached,
    }
    if report.dry_run:
        images["planned"] = report.planned
    out.metric(
        "styldod_batch_images",
        "gauge",
        "Images of the run by outcome.",
        (({"outcome": k}, v) for k, v in images.items()),
    )
    states = Counter(o.order_status or o.status for o in report.orders)
    out.metric(
        "styldod_batch_orders",
        "gauge",
        "Orders of the run by state.",
        (({"state": k}, v) for k, v in sorted(states.items())),
    )
    out.metric(
        "styldod_batch_outputs",
        "gauge",
        "Edited outputs by state.",
        (({"state": k}, v) for k, v in sorted(report.outputs.items())),
    )
    out.one(
        "styldod_batch_processing_failed",
        "gauge",
        "Images the service marked as errors, or orders that never finished.",
        report.processing_failed,
    )
    r = report.requests
    out.metric(
        "styldod_batch_requests_total",
        "counter",
        "Requests sent (every attempt on the wire), by kind.",
        [({"kind": "api"}, r.api), ({"kind": "storage"}, r.storage)],
    )
    out.one("styldod_batch_retries_total", "counter", "Requests retried.", r.retries)
    out.one(
        "styldod_batch_rate_limited_total", "counter", "Answers 429 (rate-limited).", r.rate_limited
    )
    out.one(
        "styldod_batch_uploaded_bytes_total", "counter", "Bytes uploaded.", report.bytes_uploaded
    )
    out.one(
        "styldod_batch_downloaded_bytes_total",
        "counter",
        "Bytes of outputs downloaded.",
        report.bytes_downloaded,
    )
    out.one(
        "styldod_batch_upload_duration_seconds",
        "gauge",
        "How long the upload and ordering took (0 until it ended).",
        round(report.elapsed_s, 3),
    )
    out.metric(
        "styldod_batch_step_duration_seconds",
        "gauge",
        "How long each step took: upload (and ordering), waiting for orders, download.",
        [({"step": "upload"}, round(report.elapsed_s, 3))]
        + [({"step": k}, round(v, 3)) for k, v in sorted(report.step_s.items())],
    )
    out.one(
        "styldod_batch_run_duration_seconds",
        "gauge",
        "How long the whole run has taken so far (following and downloading included).",
        round(max(0.0, now - started), 3),
    )
    out.one(
        "styldod_batch_run_start_timestamp_seconds",
        "gauge",
        "When the run started (Unix time).",
        round(started, 3),
    )
    out.one(
        "styldod_batch_last_update_timestamp_seconds",
        "gauge",
        "When this file was written (Unix time).",
        round(now, 3),
    )
    out.one("styldod_batch_running", "gauge", "1 while the run goes on, 0 once it ended.", running)
    out.metric(
        "styldod_batch_phase",
        "gauge",
        "What the run is doing (1 for the current phase).",
        [({"phase": report.phase}, 1)],
    )
    out.one(
        "styldod_batch_peak_memory_bytes",
        "gauge",
        "Peak resident memory.",
        int(report.peak_rss_mb * 1024 * 1024),
    )
    if success is not None:
        out.one("styldod_batch_success", "gauge", "1 when the run ended in success.", success)
    if last_success is not None:
        out.one(
            LAST_SUCCESS,
            "gauge",
            "When a run last ended in success (Unix time).",
            round(last_success, 3),
        )
    return out.text()


def previous_last_success(path: Path) -> float | None:
    """The last-success time a previous file holds (None: no file, or none in it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == LAST_SUCCESS:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text``: a temporary file in the same folder, fsync, rename (a
    reader sees the old file or the new one, never part of one)."""
    folder = path.parent
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (not on every platform)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class MetricsFile:
    """The run's metrics file: ``start()`` writes it every ``interval_s`` from the live
    report, ``finish()`` writes the final one."""

    def __init__(
        self,
        path: Path,
        current: Callable[[], Report | None] | None = None,
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self.current = current or (lambda: None)
        self.interval_s = interval_s
        self.started = time.time()
        self.last_success = previous_last_success(self.path)
        self._task: asyncio.Task[None] | None = None
        self._last: Report | None = None

    def render(self, report: Report, *, success: bool | None = None) -> str:
        self._last = report
        now = time.time()
        if success:
            self.last_success = now
        return render(
            report,
            started=self.started,
            now=now,
            running=success is None,
            success=success,
            last_success=self.last_success,
        )

    def write(self, report: Report, *, success: bool | None = None) -> None:
        write_atomically(self.path, self.render(report, success=success))

    def start(self, current: Callable[[], Report | None] | None = None) -> None:
        """Write every ``interval_s`` from ``current()`` (the live report) until ``stop``."""
        if current is not None:
            self.current = current
        self._task = asyncio.create_task(self._every_few_seconds())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def finish(self, report: Report | None, *, success: bool) -> None:
        """The final file; ``report`` None (the run ended in an error): the last one seen."""
        self.write(report or self._last or self.current() or Report(), success=success)

    async def _every_few_seconds(self) -> None:
        while True:
            report = self.current()
            if report is not None:
                text = self.render(report)  # on the loop: the report is not read mid-change
                try:
                    await asyncio.to_thread(write_atomically, self.path, text)
                except OSError as exc:  # a full disk must not end the run
                    event(
                        logging.WARNING,
                        "metrics_failed",
                        f"{self.path}: cannot write the metrics: {exc}",
                    )
            await asyncio.sleep(self.interval_s)
