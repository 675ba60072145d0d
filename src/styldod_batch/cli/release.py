"""``styldod-batch release ORDER``: free the images of an order whose outcome is unknown.

A run never gives up such an order by itself: once an attempt with its Idempotency-Key may
have reached the service, even a 4xx is no proof that the order was not created, so every
later run sends the same key and body again. When the user knows better (the service says
the order does not exist), this command frees its images for a new order under a new key.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from styldod_batch.cli.common import EXIT_OK, add_connection_args, add_state_args, existing_ledger
from styldod_batch.ledger import OrderRecord, open_ledger
from styldod_batch.runtime import run_async
from styldod_batch.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "release",
        help="free the images of an order whose outcome is unknown, for a new order",
        description="Give up an order that the ledger keeps as sent (its outcome unknown): "
        "its images go into a new order, under a new Idempotency-Key, at the next run. Only "
        "when the service confirms that it never created the order: otherwise the images "
        "would be ordered twice. Sends nothing.",
    )
    p.add_argument("order", metavar="KEY_OR_NAME", help="the order's Idempotency-Key or name")
    add_state_args(p)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)


async def _release(settings: Settings, which: str) -> tuple[OrderRecord, str]:
    ledger = await open_ledger(settings)
    try:
        return await ledger.release_order(which), ledger.location
    finally:
        await ledger.close()


def _run(args: argparse.Namespace) -> int:
    order, location = run_async(_release(existing_ledger(args), args.order))
    if args.json:
        body = {"released": order.name, "idempotency_key": order.idempotency_key,
                "images": order.images, "ledger": location}  # fmt: skip
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(
            f"Released order {order.name} (Idempotency-Key {order.idempotency_key}): its "
            f"{order.images} images go into a new order at the next run"
        )
    return EXIT_OK
