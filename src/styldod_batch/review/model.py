"""What the review page shows, read from the ledger (its public read methods only) and the run
log: listings, their orders and images, each image with the state a reviewer cares about."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
from collections.abc import Iterable
from typing import Any

import orjson

from styldod_batch.ledger import ImageRecord, Ledger, ListingView, OrderRecord
from styldod_batch.review.runlog import PlacedOrder, RunRecord
from styldod_batch.review.views import (
    IMAGE_STATES,
    PROBLEM_STATES,
    ImageView,
    ListingSection,
    OrderView,
    Review,
    ReviewFilter,
)

# The page's content types live in ``views``; these names stay importable from here.
__all__ = [
    "IMAGE_STATES",
    "PROBLEM_STATES",
    "ImageView",
    "ListingSection",
    "OrderView",
    "Review",
    "ReviewFilter",
    "read_review",
]


async def read_review(
    ledger: Ledger,
    runs: list[RunRecord],
    filters: ReviewFilter,
    *,
    now: float,
    known_outputs: dict[str, list[Any]] | None = None,
) -> Review:
    """The page's content: every listing the filters keep, with its orders and images.

    ``known_outputs`` (``"<order ID> <image ID>"``: path, size, MD5) are outputs an earlier
    report found in the ledger: an output, once recorded, stays; the ones found now are
    added to it.
    """
    known = {} if known_outputs is None else known_outputs
    lookups: list[tuple[str, ImageView]] = []
    review = Review(generated=now, ledger=ledger.location, filters=filters)
    chosen_runs = _choose_runs(runs, filters)
    review.runs = chosen_runs if filters.by_run else runs
    placed = _placed_orders(runs)
    wanted_keys: set[str] | None = None
    if filters.by_run:
        wanted_keys = {_order_key(o) for run in chosen_runs for o in run.orders}
    failure_reasons = dict(await ledger.failures(limit=100_000))
    listed_paths: set[str] = set()
    sections: list[ListingSection] = []
    for view in await ledger.listings():
        if filters.listings and not _matches(view, filters.listings):
            continue
        section = await _section(ledger, view, placed, wanted_keys, failure_reasons, lookups)
        if wanted_keys is not None and not section.orders:
            continue
        listed_paths.update(image.path for image in section.images)
        sections.append(section)
    await _find_outputs(ledger, lookups, known)
    unplaced = _place_failures(sections, failure_reasons, listed_paths)
    for section in sections:
        if filters.states:
            section.images = [i for i in section.images if i.state in filters.states]
            if not section.images:
                continue
        review.listings.append(section)
    if (
        not filters.by_run
        and not filters.listings
        and (not filters.states or "failed" in filters.states)
    ):
        review.failures = unplaced
    return review


def _place_failures(
    sections: list[ListingSection], reasons: dict[str, str], listed: set[str]
) -> list[tuple[str, str]]:
    """A file that failed before it had a listing (empty, unreadable...) goes to the listing of
    its folder; the others are returned."""
    by_folder = {
        s.identity.removeprefix("folder:"): s for s in sections if s.identity.startswith("folder:")
    }
    left = []
    for path, reason in reasons.items():
        if path in listed:
            continue
        folder = os.path.dirname(path)
        section = by_folder.get(folder) or by_folder.get(os.path.realpath(folder))
        if section is None:
            left.append((path, reason))
            continue
        section.images.append(
            ImageView(os.path.basename(path), path, "failed", note=reason, size=None)
        )
    return left


def _choose_runs(runs: list[RunRecord], filters: ReviewFilter) -> list[RunRecord]:
    chosen = runs
    if filters.run is not None:
        if filters.run == "last":
            chosen = runs[-1:]
        else:
            chosen = [r for r in runs if r.run_id.startswith(filters.run)]
    if filters.since is not None:
        since = filters.since
        chosen = [r for r in chosen if r.started >= since or (r.ended or r.started) >= since]
    return chosen


def _order_key(order: PlacedOrder) -> str:
    return order.idempotency_key or order.order_id or order.key


def _placed_orders(runs: Iterable[RunRecord]) -> dict[str, tuple[PlacedOrder, str]]:
    """Each order's first placement the run log knows of (a re-run's resumed one is not it)."""
    placed: dict[str, tuple[PlacedOrder, str]] = {}
    for run in runs:
        for order in run.orders:
            key = _order_key(order)
            if key not in placed or (placed[key][0].resumed and not order.resumed):
                placed[key] = (order, run.run_id)
    return placed


def _matches(view: ListingView, patterns: tuple[str, ...]) -> bool:
    names = (view.listing.name, view.listing.identity, view.label)
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


async def _section(
    ledger: Ledger,
    view: ListingView,
    placed: dict[str, tuple[PlacedOrder, str]],
    wanted_keys: set[str] | None,
    failure_reasons: dict[str, str],
    lookups: list[tuple[str, ImageView]],
) -> ListingSection:
    section = ListingSection(view.listing.name, view.listing.identity, view.label)
    kept_refs: set[int] = set()
    refused_images: dict[str, OrderRecord] = {}
    for ref in sorted(view.orders):
        order = view.orders[ref]
        key = order.idempotency_key
        if wanted_keys is not None and not ({key, order.order_id or ""} & wanted_keys):
            continue
        kept_refs.add(ref)
        seen = placed.get(key) or placed.get(order.order_id or "")
        section.orders.append(
            OrderView(
                name=order.name,
                order_id=order.order_id,
                state=order.state,
                status=order.status,
                images=order.images,
                error=order.error,
                follow_up=order.batch > 1 and order.listing_id is not None,
                placed=seen[0] if seen else None,
                run_id=seen[1] if seen else None,
                events=await ledger.events(order.order_id) if order.order_id else [],
            )
        )
        if order.state in ("refused", "conflict"):
            for client_image_id in _body_images(order.body):
                refused_images.setdefault(client_image_id, order)
    results = {
        ref: {str(i.get("client_image_id")): i for i in view.orders[ref].image_list}
        for ref in kept_refs
    }
    for client_image_id in sorted(view.images, key=_natural):
        record = view.images[client_image_id]
        if wanted_keys is not None and record.order_ref is not None:
            if record.order_ref not in kept_refs:
                continue
        elif (
            wanted_keys is not None
            and client_image_id not in refused_images
            and record.state not in PROBLEM_STATES
        ):
            continue
        image = _image(view, record, results, refused_images, failure_reasons, lookups)
        section.images.append(image)
    return section


def _image(
    view: ListingView,
    record: ImageRecord,
    results: dict[int, dict[str, dict[str, Any]]],
    refused: dict[str, OrderRecord],
    failure_reasons: dict[str, str],
    lookups: list[tuple[str, ImageView]],
) -> ImageView:
    image = ImageView(
        record.client_image_id,
        record.path,
        "uploaded",
        original_key=record.md5 or _file_key(record),
        size=record.size,
        mtime_ns=record.mtime_ns,
    )
    order = view.orders.get(record.order_ref) if record.order_ref is not None else None
    if order is not None:
        image.order = order.name
    if record.state == "failed":
        image.state = "failed"
        image.note = failure_reasons.get(record.path, "could not be uploaded")
    elif record.state == "changed":
        image.state = "changed"
        image.note = (
            "its content changed after it was ordered"
            + (f" in {order.name}" if order is not None else "")
            + "; not ordered again (--reorder-changed orders it)"
        )
    elif record.state == "late":
        image.state = "late"
        image.note = "new in a listing ordered before; not ordered (follow-up orders are off)"
    elif order is not None and order.state in ("refused", "conflict"):
        image.state = "refused"
        image.note = f"order {order.name} refused: {order.error or order.state}"
    elif order is not None:
        entry = results.get(order.ref, {}).get(record.client_image_id, {})
        status = str(entry.get("image_status") or "")
        if status == "error" or (order.status == "error" and not entry.get("output_url")):
            image.state = "error"
            reason = entry.get("error") or entry.get("message")
            image.note = f"the service marked it as an error in order {order.order_id}" + (
                f": {reason}" if reason else ""
            )
        elif entry.get("output_url") or status == "completed":
            image.state = "completed"
            if order.order_id:  # downloaded? (asked of the ledger for all images at once)
                lookups.append((order.order_id, image))
        else:
            image.state = "processing"
    elif record.client_image_id in refused:
        rejected = refused[record.client_image_id]
        image.state = "refused"
        image.order = rejected.name
        image.note = f"order {rejected.name} refused: {rejected.error or rejected.state}"
    return image


async def _find_outputs(
    ledger: Ledger, lookups: list[tuple[str, ImageView]], known: dict[str, list[Any]]
) -> None:
    """Which completed images were downloaded, and where: from ``known`` first, then from the
    ledger, many questions in flight at once (each is a round trip to its thread)."""
    missing = []
    for order_id, image in lookups:
        saved = known.get(f"{order_id} {image.client_image_id}")
        if saved is not None:
            _downloaded(image, saved)
        else:
            missing.append((order_id, image))
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        answers = await asyncio.gather(*(ledger.output(o, i.client_image_id) for o, i in chunk))
        for (order_id, image), answer in zip(chunk, answers, strict=True):
            if answer is not None:
                known[f"{order_id} {image.client_image_id}"] = list(answer)
                _downloaded(image, list(answer))


def _downloaded(image: ImageView, saved: list[Any]) -> None:
    image.state = "downloaded"
    image.output_path, image.output_key = str(saved[0]), str(saved[2] or "") or None


def _file_key(record: ImageRecord) -> str | None:
    """A file the run never hashed (a late one, not sent): known by its path, size and mtime,
    so a thumbnail of it is made again when it changes."""
    if not record.size:
        return None
    identity = f"{record.path}\0{record.size}\0{record.mtime_ns}"
    return hashlib.md5(identity.encode(), usedforsecurity=False).hexdigest()


def _body_images(body: bytes) -> list[str]:
    try:
        payload = orjson.loads(body)
        return [str(i["client_image_id"]) for i in payload.get("image_list", ())]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return []


def _natural(text: str) -> list[Any]:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
