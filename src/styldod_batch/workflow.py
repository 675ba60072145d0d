"""The whole job as the runner drives it: upload and place orders, then (optionally) follow
the orders to their end by webhooks or polling, and download the edited outputs."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from styldod_batch.budget import Budget
from styldod_batch.engine import Source, Uploader
from styldod_batch.errors import RunAborted
from styldod_batch.follow import OrderFollower
from styldod_batch.ledger import Ledger, open_ledger
from styldod_batch.metrics import MetricsFile
from styldod_batch.outcomes import download_report
from styldod_batch.progress import ProgressShow
from styldod_batch.report import Report, peak_rss_mb
from styldod_batch.review.runlog import RunRecorder
from styldod_batch.settings import Settings

if TYPE_CHECKING:  # the receiver (and aiohttp.web) only when a run listens
    from styldod_batch.webhooks import WebhookReceiver


@dataclass(frozen=True, slots=True)
class FollowOptions:
    # Poll GET /v2/orders/{id} until every order is completed or error.
    wait: bool = False
    # Receive webhook events on this address (and wait for the final ones).
    listen: tuple[str, int] | None = None
    # How the service reaches the receiver (default: http://LISTEN).
    public_url: str | None = None
    download_dir: Path | None = None
    timeout_s: float = 3600.0
    poll_interval_s: float = 2.0

    @property
    def follows(self) -> bool:
        return self.wait or self.listen is not None or self.download_dir is not None


async def run_job(
    settings: Settings,
    paths: Source,
    follow: FollowOptions,
    *,
    progress: str,
    metrics: MetricsFile | None = None,
) -> Report | RunAborted:
    """Run the job; SIGINT/SIGTERM stop it gracefully, a second one at once. ``metrics``:
    written every few seconds while it runs (the caller writes the final one)."""
    if follow.listen is None:
        return await _run_job(settings, paths, follow, None, progress=progress, metrics=metrics)
    from styldod_batch.webhook_secret import webhook_secret
    from styldod_batch.webhooks import WebhookReceiver

    host, port = follow.listen
    # It listens before the run is ready to record events: until then it answers 503, and
    # the service delivers again (an acknowledged event is never lost).
    token = await webhook_secret(settings)
    receiver = WebhookReceiver(host, port, token=token, hold_until_handled=True)
    async with receiver:
        base = (follow.public_url or f"http://{host}:{receiver.port}").rstrip("/")
        settings = settings.with_changes(webhook_url=base + receiver.path)
        return await _run_job(settings, paths, follow, receiver, progress=progress, metrics=metrics)


async def _run_job(
    settings: Settings,
    paths: Source,
    follow: FollowOptions,
    receiver: WebhookReceiver | None,
    *,
    progress: str,
    metrics: MetricsFile | None = None,
) -> Report | RunAborted:
    """``progress``: "terminal" (a live line), "log" (a log line now and then) or "none"."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    async with (
        Uploader(settings.with_changes(poll_interval_s=follow.poll_interval_s)) as uploader,
        RunRecorder(uploader),  # the run's timeline, beside the ledger, for the review page
    ):
        show = None
        if metrics is not None:
            metrics.start(lambda: uploader.current_report)
        if progress != "none":
            show = ProgressShow(
                lambda: uploader.current_report,
                budget=uploader.api_budget,
                terminal=progress == "terminal",
            )
            show.start()

        def on_signal(signum: int) -> None:
            if uploader.stopping.is_set():
                main.cancel()  # the second signal: stop now
                return
            print(
                f"\nstyldod-batch: {signal.Signals(signum).name}: finishing what is in "
                f"flight (up to {settings.stop_grace_s:.0f} s); again to stop at once",
                file=sys.stderr,
                flush=True,
            )
            uploader.request_stop()  # the library ends the run after the grace

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            if receiver is not None:  # with --wait, its orders are polled too
                uploader.listen(receiver, poll=follow.wait)
            result: Report | RunAborted = await _upload_and_follow(uploader, paths, follow)
        except asyncio.CancelledError:
            report = uploader.current_report
            assert report is not None
            report.interrupted = True
            result = report
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            if show is not None:
                await show.close()
            if metrics is not None:
                await metrics.stop()
    return result


async def _upload_and_follow(
    uploader: Uploader, paths: Source, follow: FollowOptions
) -> Report | RunAborted:
    try:
        report = await uploader.run(paths)
    except RunAborted as aborted:
        return aborted
    if not follow.follows or report.interrupted:
        return report
    await uploader.follow(report, timeout_s=follow.timeout_s)
    if follow.download_dir is not None:
        await uploader.download(report, follow.download_dir)
    return report


async def download_from_ledger(settings: Settings, directory: Path) -> Report:
    """The ``download`` command: the outputs of every finished order the ledger knows.

    With the account's key, the orders the ledger does not know as finished are asked about
    first (a webhook receiver records events as hints only): those the API says are
    finished download too."""
    started = time.monotonic()
    report = Report(download_only=True, phase="downloading")
    if settings.api_key:
        async with Uploader(settings) as uploader:
            assert uploader.ledger is not None
            await _ask_unfinished(uploader, uploader.ledger)
            await _download_finished(
                settings, uploader.ledger, directory, report, uploader.download_budget
            )
    else:
        ledger: Ledger = await open_ledger(settings)
        try:
            await _download_finished(settings, ledger, directory, report, None)
        finally:
            await ledger.close()
    report.elapsed_s = time.monotonic() - started
    report.peak_rss_mb = peak_rss_mb()
    report.phase = "done"
    return report


async def refresh_open_orders(settings: Settings) -> tuple[int, dict[str, int]]:
    """The ``refresh`` command: ask the API about every order of the ledger that is not
    final; returns how many were asked about, and the orders by status afterwards."""
    async with Uploader(settings) as uploader:
        assert uploader.ledger is not None
        asked = await _ask_unfinished(uploader, uploader.ledger)
        states: dict[str, int] = {}
        for row in await uploader.ledger.orders():
            if row.order_id:
                states[row.status or "unknown"] = states.get(row.status or "unknown", 0) + 1
    return asked, states


async def _ask_unfinished(uploader: Uploader, ledger: Ledger) -> int:
    follower = OrderFollower(uploader.api, ledger, poll=True)
    asked = 0
    for row in await ledger.orders():
        if row.order_id and not row.final:
            follower.watch(row.label, row.order_id, row.status)
            asked += 1
    await follower.refresh()
    await ledger.flush()
    return asked


async def _download_finished(
    settings: Settings, ledger: Ledger, directory: Path, report: Report, budget: Budget | None
) -> None:
    """Through the run's own download path, at the same pace (``budget``: the run's download
    budget; None: ``--download-rps``'s cap alone), with ``--bwlimit``."""
    # A final row's image list is the API's answer (a webhook only ever records a hint).
    finished = [
        (row.label, row.order_id, row.image_list)
        for row in await ledger.orders()
        if row.order_id and row.final
    ]
    await download_report(settings, ledger, budget, report, directory, orders=finished)
