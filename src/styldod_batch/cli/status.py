"""``styldod-batch status``: what the account's ledger knows."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from styldod_batch.cli.common import (
    EXIT_OK,
    add_connection_args,
    add_state_args,
    existing_ledger,
)
from styldod_batch.ledger import Ledger, OrderRecord, open_ledger
from styldod_batch.runtime import run_async
from styldod_batch.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "status",
        help="what the account's ledger knows: listings, orders, images, failures",
        description="Show the account's ledger: per listing its orders (state, status, ID), "
        "its images by state, and any late or changed images; then the failures. "
        "Sends nothing.",
    )
    add_state_args(p)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)


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


async def _read_status(settings: Settings) -> dict[str, Any]:
    ledger = await open_ledger(settings, read_only=True)
    try:
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
    finally:
        await ledger.close()
    return {
        "ledger": ledger.location,
        "images": counts,
        "orders": list(orders.values()),
        "listings": shown_listings,
        "failures": failures,
    }


def _run(args: argparse.Namespace) -> int:
    body = run_async(_read_status(existing_ledger(args)))
    if args.json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    counts = body["images"]
    print(f"Ledger: {body['ledger']}")
    print("Images: " + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"))
    print(f"Listings: {len(body['listings'])}, orders: {len(body['orders'])}")
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
    if body["failures"]:
        print("Failures:")
        for f in body["failures"]:
            print(f"  {f['path']}: {f['error']}")
    return EXIT_OK
