"""After a run: following its orders to ``completed`` or ``error``, and fetching the outputs.

What ``Uploader.follow`` and ``Uploader.download`` do, and the runner with them: by polling
(low priority in the rate budget) or by the events of a receiver the caller runs; the final
status and the service's image list land in the report's orders, and an image the service
marked as an error is a failure of the report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from styldod_batch.budget import Budget, ByteBucket, StoragePause, local_budget
from styldod_batch.download import OutputDownloader, check_download_folder, open_download_session
from styldod_batch.follow import OrderFollower
from styldod_batch.ledger import Ledger
from styldod_batch.output_policy import OutputHostPolicy
from styldod_batch.report import Report
from styldod_batch.settings import Settings
from styldod_batch.status import is_final_status


async def follow_report(
    ledger: Ledger | None, follower: OrderFollower, report: Report, *, timeout_s: float
) -> bool:
    """Wait until every order of ``report`` is final (True), or ``timeout_s`` runs out."""
    report.phase = "waiting for orders"
    started = time.monotonic()
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
    orders = follower.orders
    report.step_progress = lambda: (sum(o.final for o in orders.values()), len(orders))
    try:
        finished = await follower.wait(timeout_s)
    finally:
        report.step_progress = None
        report.step_s["wait"] = report.step_s.get("wait", 0.0) + time.monotonic() - started
        report.phase = "done"
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


OrderOutputs = tuple[str, str, list[dict[str, Any]]]


async def download_report(
    settings: Settings,
    ledger: Ledger | None,
    budget: Budget | None,
    report: Report,
    directory: Path,
    *,
    orders: list[OrderOutputs] | None = None,
) -> None:
    """The one download path: a run's ``--download`` (``Uploader.download``) and the
    ``download`` command alike. Fetches the outputs of ``orders`` (folder name, order ID,
    image list), by default the report's finished orders, into ``DIR/<listing>/<image id>``,
    paced by ``budget`` (the run's download budget; None: ``download_budget``, the cap of
    ``--download-rps``) and ``--bwlimit``."""
    check_download_folder(directory)
    report.phase = "downloading"
    started = time.monotonic()
    finished = (
        orders
        if orders is not None
        else [
            (order.label or order.key, order.order_id, order.outputs)
            for order in report.orders
            if order.order_id and is_final_status(order.order_status)
        ]
    )
    before = sum(report.outputs.values())
    total = sum(len(outputs) for _, _, outputs in finished)
    report.step_progress = lambda: (sum(report.outputs.values()) - before, total)
    try:
        await download_orders(
            settings,
            directory,
            finished,
            report,
            budget=budget,
            # Without a durable ledger, a file of the announced size counts as done.
            ledger=ledger if ledger is not None and ledger.durable else None,
        )
    finally:
        report.step_progress = None
        report.step_s["download"] = report.step_s.get("download", 0.0) + time.monotonic() - started
        report.phase = "done"


async def download_orders(
    settings: Settings,
    directory: Path,
    orders: Iterable[tuple[str, str, list[dict[str, Any]]]],
    report: Report,
    *,
    budget: Budget | None,
    ledger: Ledger | None,
) -> None:
    """Under ``download_report`` (the one download path): each order's (folder name, order
    ID, image list) into ``DIR/<folder>/<image id>``, every output URL through the account's
    ``OutputHostPolicy``.

    The image lists are the API's own answers: the follower takes them from GET
    /v2/orders/{id}, never from a webhook's body, and the ledger records nothing else as an
    order's final list (``follow.event_hint``)."""
    policy = OutputHostPolicy.for_settings(settings)
    if budget is None:  # no cap unless --download-rps; storage's SlowDown still pauses
        budget = download_budget(settings)
    async with open_download_session(connections=settings.concurrency, policy=policy) as session:
        downloader = OutputDownloader(
            session,
            directory,
            budget=budget,
            bandwidth=ByteBucket(settings.bwlimit) if settings.bwlimit else None,
            ledger=ledger,
            retry=settings.retry,
            concurrency=settings.concurrency,
            policy=policy,
        )
        for folder, order_id, image_list in orders:
            for outcome in await downloader.fetch_order(folder, order_id, image_list):
                report.add_output(outcome.status, outcome.path, outcome.error, outcome.size)
    report.requests.retries += downloader.retries


def download_budget(settings: Settings) -> Budget:
    """The downloads' own budget, outside a run's (the ``download`` command): a cap of
    ``download_rps`` requests/s, or none but storage's 429/SlowDown pauses."""
    if settings.download_rps:
        return local_budget(
            settings.download_rps, margin_s=settings.window_margin_s, name="download"
        )
    return StoragePause(name="download", max_pause_s=settings.retry.max_server_wait_s)
