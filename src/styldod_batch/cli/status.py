"""``styldod-batch status``: what the account's ledger knows."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import orjson

from styldod_batch.cli.common import (
    EXIT_OK,
    add_connection_args,
    add_state_args,
    existing_ledger,
)
from styldod_batch.cli.report import since_time
from styldod_batch.ledger import Ledger, OrderRecord, open_ledger
from styldod_batch.ledger.records import LIVE_ORDER_STATES
from styldod_batch.review import IMAGE_STATES, ReviewFilter, run_log_path
from styldod_batch.review.model import Review, read_review
from styldod_batch.review.runlog import read_runs
from styldod_batch.runtime import run_async
from styldod_batch.settings import Settings
from styldod_batch.status import is_final_status

# The default view's failures: this many, then a count (--all lists them all).
SHOWN_FAILURES = 5


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "status",
        help="what the account's ledger knows: listings, orders, images, failures",
        description="Show the account's ledger: by default one screen of counts (images and "
        "orders by state, listings, failures); with --all, per listing its orders (state, "
        "status, ID), their images, and any late or changed images; then the failures. "
        "Sends nothing.",
    )
    add_state_args(p)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--all",
        "--list",
        dest="all",
        action="store_true",
        help="list every listing, order and image (by default: the counts only)",
    )
    p.add_argument(
        "--listing",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only this listing (its name, identity or folder; shell patterns like "
        "'listing-1*'); repeatable",
    )
    p.add_argument(
        "--image-state",
        dest="image_states",
        action="append",
        default=[],
        choices=IMAGE_STATES,
        metavar="STATE",
        help="only images in this state (" + ", ".join(IMAGE_STATES) + "); repeatable",
    )
    p.add_argument(
        "--since",
        type=since_time,
        metavar="WHEN",
        help="only the orders of runs since WHEN: a time ago (12h, 2d) or a date and time",
    )
    p.add_argument(
        "--open",
        dest="open_only",
        action="store_true",
        help="only open orders: placed, and not yet completed or in error",
    )
    p.set_defaults(func=_run)


def is_open(order: dict[str, Any]) -> bool:
    """An order placed (or maybe placed) that the service has not finished."""
    return order["state"] in LIVE_ORDER_STATES and not is_final_status(order["status"])


async def _image_outcome(ledger: Ledger, order_id: str, image: dict[str, Any]) -> dict[str, Any]:
    outcome = {
        "client_image_id": image.get("client_image_id"),
        "image_status": image.get("image_status"),
        "output_url": image.get("output_url"),
    }
    done = await ledger.output(order_id, str(image.get("client_image_id")))
    if done is not None:
        outcome["downloaded_to"] = done[0]
    return outcome


async def _order_status(ledger: Ledger, order: OrderRecord, events: list[str]) -> dict[str, Any]:
    order_id = order.order_id
    return {
        "key": order.name,
        "orderID": order.order_id,
        "images": order.images,
        "state": order.state,
        "status": order.status,
        "error": order.error,
        "follow_up": order.batch > 1 and order.listing_id is not None,
        "events": events,
        "outputs": [await _image_outcome(ledger, order_id, image) for image in order.image_list]
        if order_id
        else [],
    }


async def _read(settings: Settings, filters: ReviewFilter) -> tuple[dict[str, Any], Review]:
    """The ledger's whole status, and the review's view of it (image states, filters)."""
    runs = await asyncio.to_thread(read_runs, run_log_path(settings))
    ledger = await open_ledger(settings, read_only=True)
    try:
        body = await _read_status(ledger)
        review = await read_review(ledger, runs, filters, now=time.time())
    finally:
        await ledger.close()
    return body, review


async def _read_status(ledger: Ledger) -> dict[str, Any]:
    listings = await ledger.listings()
    orders = {}
    for order in await ledger.orders():
        events = await ledger.events(order.order_id) if order.order_id else []
        orders[order.ref] = await _order_status(ledger, order, events)
    counts: dict[str, int] = {}
    shown_listings = []
    for view in listings:
        states: dict[str, int] = {}
        for image in view.images.values():
            states[image.state] = states.get(image.state, 0) + 1
            counts[image.state] = counts.get(image.state, 0) + 1
        shown_listings.append(
            {
                "name": view.listing.name,
                "identity": view.listing.identity,
                "download_folder": view.label,
                "images": states,
                "orders": [orders[ref] for ref in sorted(view.orders) if ref in orders],
                "late": sorted(i.path for i in view.images.values() if i.state == "late"),
                "changed": sorted(i.path for i in view.images.values() if i.state == "changed"),
            }
        )
    failures = [{"path": p, "error": e} for p, e in await ledger.failures()]
    return {
        "ledger": ledger.location,
        "images": counts,
        "orders": list(orders.values()),
        "listings": shown_listings,
        "failures": failures,
    }


def _select(body: dict[str, Any], review: Review, open_only: bool) -> dict[str, Any]:
    """``body`` narrowed to what the filters keep: the review's listings and orders (by
    ``--listing``, ``--image-state``, ``--since``), then open orders only (``--open``)."""
    kept = {section.identity: section for section in review.listings}
    listings = []
    for listing in body["listings"]:
        section = kept.get(listing["identity"])
        if section is None:
            continue
        names = {order.name for order in section.orders}
        orders = [o for o in listing["orders"] if o["key"] in names]
        if open_only:
            orders = [o for o in orders if is_open(o)]
            if not orders:
                continue
        states = {image.path for image in section.images}
        listings.append(
            {
                **listing,
                "orders": orders,
                "late": [path for path in listing["late"] if path in states],
                "changed": [path for path in listing["changed"] if path in states],
            }
        )
    chosen = [o for listing in listings for o in listing["orders"]]
    counts: dict[str, int] = {}
    for listing in listings:
        for state, n in listing["images"].items():
            counts[state] = counts.get(state, 0) + n
    failures = body["failures"] if not open_only else []
    if review.filters.listings or review.filters.by_run or review.filters.states:
        shown = {image.path for section in review.listings for image in section.images}
        failures = [f for f in failures if f["path"] in shown] + [
            {"path": path, "error": error} for path, error in review.failures
        ]
    return {
        **body,
        "images": counts,
        "orders": chosen,
        "listings": listings,
        "failures": failures,
        "filters": review.filters.describe() + (["open orders"] if open_only else []),
    }


def _run(args: argparse.Namespace) -> int:
    filters = ReviewFilter(
        since=args.since, listings=tuple(args.listing), states=frozenset(args.image_states)
    )
    full, review = run_async(_read(existing_ledger(args), filters))
    if "://" not in full["ledger"]:  # a file: said as an absolute path
        full["ledger"] = os.path.abspath(full["ledger"])
    filtered = filters.by_run or filters.listings or filters.states or args.open_only
    body = _select(full, review, args.open_only) if filtered else full
    if args.json:
        body = {**body, "image_states": review.counts()}
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    print(f"Ledger: {body['ledger']}")
    if body.get("filters"):
        print("Only: " + "; ".join(body["filters"]))
    states = review.counts()
    print("Images: " + (", ".join(f"{n} {state}" for state, n in states.items()) or "none"))
    by_state: dict[str, int] = {}
    for order in body["orders"]:
        state = order["status"] or order["state"]
        by_state[state] = by_state.get(state, 0) + 1
    still_open = sum(is_open(o) for o in body["orders"])
    shown = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
    print(f"Orders: {len(body['orders'])}" + (f" ({shown}); {still_open} open" if shown else ""))
    print(f"Listings: {len(body['listings'])}")
    if args.all:
        _print_all(body, review)
    elif body["failures"]:
        failures = body["failures"]
        print(f"Failures: {len(failures)}")
        for f in failures[:SHOWN_FAILURES]:
            print(f"  {f['path']}: {f['error']}")
        if len(failures) > SHOWN_FAILURES:
            print(f"  ... and {len(failures) - SHOWN_FAILURES} more (--all lists them)")
    if not args.all and body["listings"]:
        print("(--all lists every listing, order and image)")
    return EXIT_OK


def _print_all(body: dict[str, Any], review: Review) -> None:
    wanted = review.filters.states
    images = {s.identity: s.images for s in review.listings}
    for listing in body["listings"]:
        print(f"  {listing['name']}  ({listing['identity']})")
        for o in listing["orders"]:
            detail = o["orderID"] or o["error"] or ""
            state = o["status"] or o["state"]
            print(f"    {o['key']:<38} {o['images']:>4} images  {state:<16} {detail}")
            for image in o["outputs"]:
                where = image.get("downloaded_to") or image.get("output_url") or ""
                print(f"        {image['client_image_id']:<42} {image['image_status']:<10} {where}")
        for kind in ("late", "changed"):
            if listing[kind]:
                print(f"    {kind}: " + ", ".join(listing[kind]))
        if wanted:  # the images the filter asked for, each with its path
            for image in images.get(listing["identity"], []):
                note = f": {image.note}" if image.note else ""
                print(f"    {image.state:<10} {image.path}{note}")
    if body["failures"]:
        print("Failures:")
        for f in body["failures"]:
            print(f"  {f['path']}: {f['error']}")
