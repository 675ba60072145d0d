"""What a run tells: its report, the caller's callbacks, ``stream()``'s queue, and the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from styldod_batch.logs import event as log_event
from styldod_batch.models import ImageResult, OrderResult, RequestCounters
from styldod_batch.pipeline.ports import SYSTEM_CLOCK, Clock
from styldod_batch.report import Report, peak_rss_mb

ImageCallback = Callable[[ImageResult], None]
OrderCallback = Callable[[OrderResult], None]
ResultQueue = asyncio.Queue[ImageResult | OrderResult]


class Events:
    """Every image and order result of one run, each told once: counted in the report,
    logged, handed to ``on_image``/``on_order`` and to ``stream()``'s bounded queue (a slow
    reader of which slows the run down)."""

    def __init__(
        self,
        counters: RequestCounters,
        *,
        on_image: ImageCallback | None = None,
        on_order: OrderCallback | None = None,
        sink: ResultQueue | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.report = Report(requests=RequestCounters())
        self._counters = counters
        self._counted_from = counters.as_dict()
        self._on_image = on_image
        self._on_order = on_order
        self._sink = sink
        self._clock = clock
        self._started = clock.now()
        self._ended = False

    async def image(self, result: ImageResult) -> None:
        self.report.add_image(result)
        if result.status == "failed":
            log_event(
                logging.WARNING,
                "file_failed",
                f"{result.path}: {result.error}",
                path=result.path,
                reason=result.error,
            )
        elif result.status in ("changed", "late", "moved"):
            log_event(
                logging.INFO,
                f"file_{result.status}",
                f"{result.path}: {result.error}",
                path=result.path,
                order=result.order,
            )
        elif result.status != "skipped":  # (a skipped file is logged where it is met)
            outcome = "already_done" if result.resumed else result.status
            log_event(
                logging.DEBUG,
                "file",
                f"{result.path}: {outcome.replace('_', ' ')}",
                path=result.path,
                outcome=outcome,
                listing=result.group,
                order=result.order,
            )
        if self._on_image is not None:
            self._on_image(result)
        if self._sink is not None:
            await self._sink.put(result)  # a slow reader of ``stream()`` slows the run

    async def order(self, result: OrderResult) -> None:
        self.report.add_order(result)
        if not result.resumed:
            ok = result.status == "created"
            log_event(
                logging.INFO if ok else logging.WARNING,
                "order",
                f"order {result.key}: {result.order_id if ok else result.error}"
                f" ({result.images} image{'' if result.images == 1 else 's'})",
                order=result.key,
                state=result.status,
                order_id=result.order_id,
                images=result.images,
                follow_up=result.follow_up,
                replayed=result.replayed,
                error=result.error,
            )
        if self._on_order is not None:
            self._on_order(result)
        if self._sink is not None:
            await self._sink.put(result)

    def phase(self, phase: str) -> None:
        self.report.phase = phase

    def found(self) -> None:
        """One more input met (an image, a skipped or failed file)."""
        self.report.found += 1

    def scan_complete(self) -> None:
        self.report.scan_complete = True

    def expected(self, count: int) -> None:
        """How many inputs there are, counted ahead."""
        self.report.expected = count

    def snapshot(self) -> Report:
        """The report as it stands (this run's request counts and time brought up to date)."""
        now = self._counters.as_dict()
        counted = self.report.requests
        counted.api, counted.storage, counted.retries, counted.rate_limited = (
            now[name] - self._counted_from[name]
            for name in ("api", "storage", "retries", "rate_limited")
        )
        if not self._ended:  # the upload's time; following and downloading time their own
            self.report.elapsed_s = self._clock.now() - self._started
        self.report.peak_rss_mb = peak_rss_mb()
        return self.report

    def end(self) -> Report:
        """The run is over: its time stops here (the report keeps counting requests)."""
        report = self.snapshot()
        self._ended = True
        return report
