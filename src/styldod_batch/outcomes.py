"""After a run: following its orders to ``completed`` or ``error``, and fetching the outputs.

What ``Uploader.follow`` and ``Uploader.download`` do, and the runner with them: by polling
(low priority in the rate budget) or by the events of a receiver the caller runs; the final
status and the service's image list land in the report's orders, and an image the service
marked as an error is a failure of the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from styldod_batch.download import OutputDownloader, check_download_folder, open_download_session
from styldod_batch.follow import OrderFollower
from styldod_batch.report import Report
from styldod_batch.status import is_final_status

if TYPE_CHECKING:
    from styldod_batch.engine import Uploader


async def follow_report(
    uploader: Uploader, follower: OrderFollower, report: Report, *, timeout_s: float
) -> bool:
    """Wait until every order of ``report`` is final (True), or ``timeout_s`` runs out."""
    report.phase = "waiting for orders"
    ledger = uploader.ledger
    for order in report.orders:
        if order.order_id:
            row = await ledger.order_by_id(order.order_id) if ledger is not None else None
            # Outputs go to DIR/<listing>/: a listing's follow-up orders land beside its first.
            follower.watch(
                order.label or order.key,
                order.order_id,
                row.status if row else order.order_status,
                row.image_list if row else None,
            )
    finished = await follower.wait(timeout_s)
    apply_outcomes(report, follower, finished=finished)
    return finished


def apply_outcomes(report: Report, follower: OrderFollower, *, finished: bool) -> None:
    """Each order's final status and image list into the report; an image the service
    failed is a failure."""
    by_id = {o.order_id: o for o in report.orders if o.order_id}
    for followed in follower.orders.values():
        result = by_id.get(followed.order_id)
        if result is None:
            continue
        result.order_status = followed.status or result.order_status
        result.outputs = list(followed.image_list)
        for client_image_id in followed.image_errors:
            report.processing_failed += 1
            report.failures.append(
                {
                    "path": f"{followed.key}/{client_image_id}",
                    "error": f"order {followed.order_id}: "
                    "the service marked this image as an error",
                }
            )
    if not finished:
        waiting = [o.key for o in follower.orders.values() if not o.final]
        report.failures.append(
            {
                "path": ", ".join(waiting[:10]),
                "error": "timed out waiting for these orders to finish",
            }
        )
        report.processing_failed += len(waiting)


async def download_report(uploader: Uploader, report: Report, directory: Path) -> None:
    """Fetch the outputs of the report's finished orders into ``DIR/<listing>/<image id>``."""
    check_download_folder(directory)
    report.phase = "downloading"
    ledger = uploader.ledger
    settings = uploader.settings
    async with open_download_session(connections=settings.concurrency) as session:
        downloader = OutputDownloader(
            session,
            directory,
            budget=uploader.storage_budget,
            # Without a durable ledger, a file of the announced size counts as done.
            ledger=ledger if ledger is not None and ledger.durable else None,
            retry=settings.retry,
            concurrency=settings.concurrency,
        )
        for order in report.orders:
            if not order.order_id or not is_final_status(order.order_status):
                continue
            for outcome in await downloader.fetch_order(
                order.label or order.key, order.order_id, order.outputs
            ):
                report.add_output(outcome.status, outcome.path, outcome.error, outcome.size)
    report.requests.retries += downloader.retries
