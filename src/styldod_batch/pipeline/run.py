"""One run, wired: intake -> presign -> put -> settle -> place, in one task group; leases
kept, inputs counted ahead, a stop given its grace; an API that refuses the key (or cannot
be reached) ends the run with ``RunAborted`` carrying the report so far."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from styldod_batch.budget import Budget
from styldod_batch.errors import (
    AuthenticationError,
    LedgerError,
    PermissionDenied,
    RunAborted,
    ServiceUnreachable,
    StyldodError,
)
from styldod_batch.ledger import Ledger, Owner
from styldod_batch.models import RequestCounters
from styldod_batch.pipeline.claims import Claims
from styldod_batch.pipeline.events import Events, ImageCallback, OrderCallback, ResultQueue
from styldod_batch.pipeline.feed import Feed, count_ahead
from styldod_batch.pipeline.intake import Intake
from styldod_batch.pipeline.place import Placer, order_namer
from styldod_batch.pipeline.ports import (
    SYSTEM_CLOCK,
    Clock,
    ObjectStore,
    OrderSink,
    UploadURLSource,
)
from styldod_batch.pipeline.presign import DONE, PRESIGN_WORKERS, Planned, Presigner, Ready
from styldod_batch.pipeline.put import Putter
from styldod_batch.pipeline.route import ContentBefore
from styldod_batch.pipeline.settle import Settler
from styldod_batch.report import Report
from styldod_batch.settings import Settings


@dataclass(slots=True)
class Services:
    """What a run needs of the world (the ``Uploader`` provides it)."""

    settings: Settings
    urls: UploadURLSource
    store: ObjectStore
    # ``POST /v2/orders`` with one try per call: the order stage retries itself.
    orders: OrderSink
    api_budget: Budget | None
    storage_budget: Budget | None
    counters: RequestCounters
    stopping: asyncio.Event
    on_image: ImageCallback | None = None
    on_order: OrderCallback | None = None
    # Told how many order tasks wait at once, each time one more does.
    on_backlog: Callable[[int], None] | None = None
    clock: Clock = SYSTEM_CLOCK


class PipelineRun:
    """The stages of one run and the task group they share."""

    def __init__(self, services: Services, ledger: Ledger, sink: ResultQueue | None = None) -> None:
        settings = self.settings = services.settings
        self.stopping = stopping = services.stopping
        self.clock = services.clock
        self.ledger = ledger
        self.owner = owner = Owner.for_this_run()
        self.events = Events(
            services.counters,
            on_image=services.on_image,
            on_order=services.on_order,
            sink=sink,
            clock=services.clock,
        )
        self.claims = Claims(
            ledger, owner, lease_s=settings.lease_s, stopping=stopping, clock=services.clock
        )
        max_files = settings.contract.max_files_per_upload_call
        lookahead = max(settings.presign_lookahead, max_files)
        self.planned: asyncio.Queue[Planned | object] = asyncio.Queue(maxsize=lookahead)
        self.ready: asyncio.Queue[Ready | object] = asyncio.Queue(
            maxsize=max(settings.concurrency, lookahead)
        )
        self.placer = Placer(
            ledger,
            owner,
            self.claims,
            services.orders,
            order_events=self.events.order,
            budget=services.api_budget,
            counters=services.counters,
            retry=settings.retry,
            options=settings.options,
            webhook_url=settings.webhook_url,
            stopping=stopping,
            spawn=self._spawn,
            on_backlog=services.on_backlog,
            clock=services.clock,
            namer=order_namer(settings),
        )
        self.claims.wire(self._spawn, self.placer.resend_later)
        self.settler = Settler(self.events, self.placer)
        self.intake = Intake(
            settings,
            self.claims,
            self.events,
            self.settler,
            self.planned,
            stopping=stopping,
            content=ContentBefore(ledger),
        )
        self.presigner = Presigner(
            services.urls,
            self.planned,
            self.ready,
            self.settler,
            max_files=max_files,
            base_url=settings.base_url,
            stopping=stopping,
            clock=services.clock,
        )
        self.putter = Putter(
            services.store,
            self.ready,
            refresh=self.presigner.refresh,
            record=self.claims,
            settler=self.settler,
            retry=settings.retry,
            budget=services.storage_budget,
            counters=services.counters,
            stopping=stopping,
            clock=services.clock,
        )
        self.group: asyncio.TaskGroup | None = None
        self._grace_over = False

    def _spawn(self, work: Coroutine[Any, Any, None], name: str | None = None) -> object:
        assert self.group is not None
        return self.group.create_task(work, name=name)

    def snapshot(self) -> Report:
        """The report as it stands (counts and time brought up to date)."""
        return self.events.snapshot()

    async def execute(self, feed: Feed) -> Report:
        keeper = asyncio.create_task(self.claims.keep())
        counting = count_ahead(feed, self.events.expected)
        me = asyncio.current_task()
        assert me is not None
        grace = asyncio.create_task(self._end_after_grace(me))
        report = self.events.report
        try:
            await self._stages(feed)
            report.phase = "done"
        except asyncio.CancelledError:
            if not self._grace_over:
                raise
            me.uncancel()  # the library's own deadline: the run ends with its report
        finally:
            counting.set()
            for helper in (keeper, grace):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            await self.presigner.close()
            report.interrupted = self.stopping.is_set()
            if report.interrupted:
                report.phase = "stopped"
            with contextlib.suppress(StyldodError):
                await self.claims.release_all()
                await self.ledger.flush()
        return self.events.end()

    async def _stages(self, feed: Feed) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self.group = group
                group.create_task(self.intake.run(feed))
                presigners = [
                    group.create_task(self.presigner.worker()) for _ in range(PRESIGN_WORKERS)
                ]
                workers = [
                    group.create_task(self.putter.worker())
                    for _ in range(self.settings.concurrency)
                ]
                group.create_task(self._finish_stages(presigners, workers))
                # Order tasks join the group as their images settle; it ends with the last.
        except* (AuthenticationError, PermissionDenied, ServiceUnreachable) as fatal:
            self.events.snapshot()
            cause = fatal.exceptions[0]
            assert isinstance(cause, StyldodError)
            raise RunAborted(cause, self.events.report) from None
        except* LedgerError as broken:
            raise broken.exceptions[0] from None

    async def _end_after_grace(self, run: asyncio.Task[Any]) -> None:
        """After a stop is asked for, what is in flight gets ``stop_grace_s``; then the run
        is cut short (its report says so, and a re-run finishes the job)."""
        await self.stopping.wait()
        await self.clock.sleep(self.settings.stop_grace_s)
        self._grace_over = True
        run.cancel()

    async def _finish_stages(
        self, presigners: list[asyncio.Task[None]], workers: list[asyncio.Task[None]]
    ) -> None:
        await asyncio.gather(*presigners)
        for _ in workers:
            await self.ready.put(DONE)
        await asyncio.gather(*workers)
        self.events.phase("placing orders")
