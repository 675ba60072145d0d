"""The whole job as the runner drives it: upload and place orders, then (optionally) follow
the orders to their end by webhooks or polling, and download the edited outputs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from styldod_batch.download import OutputDownloader, open_download_session
from styldod_batch.engine import Source, Uploader
from styldod_batch.errors import RunAborted
from styldod_batch.ledger import Ledger, open_ledger
from styldod_batch.progress import ProgressShow
from styldod_batch.report import Report, peak_rss_mb
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


def webhook_token(settings: Settings) -> str:
    """Stable across runs of one account (so orders placed earlier still reach us, whatever
    port or public URL a later run listens on), and not guessable without the API key."""
    secret = (settings.api_key or "").encode()
    account = settings.base_url.rstrip("/").encode()
    return hmac.new(secret, b"webhook|" + account, hashlib.sha256).hexdigest()[:32]


async def run_job(
    settings: Settings, paths: Source, follow: FollowOptions, *, progress: str
) -> Report | RunAborted:
    """Run the job; SIGINT/SIGTERM stop it gracefully, a second one at once."""
    if follow.listen is None:
        return await _run_job(settings, paths, follow, None, progress=progress)
    from styldod_batch.webhooks import WebhookReceiver

    host, port = follow.listen
    # It listens before the run is ready to record events: until then it answers 503, and
    # the service delivers again (an acknowledged event is never lost).
    receiver = WebhookReceiver(host, port, token=webhook_token(settings), hold_until_handled=True)
    async with receiver:
        base = (follow.public_url or f"http://{host}:{receiver.port}").rstrip("/")
        settings = settings.with_changes(webhook_url=base + receiver.path)
        return await _run_job(settings, paths, follow, receiver, progress=progress)


async def _run_job(
    settings: Settings,
    paths: Source,
    follow: FollowOptions,
    receiver: WebhookReceiver | None,
    *,
    progress: str,
) -> Report | RunAborted:
    """``progress``: "terminal" (a live line), "log" (a log line now and then) or "none"."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    async with Uploader(settings.with_changes(poll_interval_s=follow.poll_interval_s)) as uploader:
        show = None
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
    """The ``download`` command: the outputs of every finished order the ledger knows."""
    started = time.monotonic()
    ledger: Ledger = await open_ledger(settings)
    report = Report(download_only=True, phase="downloading")
    try:
        async with open_download_session(connections=settings.concurrency) as session:
            downloader = OutputDownloader(
                session,
                directory,
                budget=None,
                ledger=ledger,
                retry=settings.retry,
                concurrency=settings.concurrency,
            )
            for row in await ledger.orders():
                if row.order_id and row.final:
                    for outcome in await downloader.fetch_order(
                        row.label, row.order_id, row.image_list
                    ):
                        report.add_output(outcome.status, outcome.path, outcome.error, outcome.size)
        report.requests.retries += downloader.retries
    finally:
        await ledger.close()
    report.elapsed_s = time.monotonic() - started
    report.peak_rss_mb = peak_rss_mb()
    report.phase = "done"
    return report
