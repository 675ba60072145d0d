"""``styldod-batch webhooks serve``: a long-running receiver of order events."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from styldod_batch.cli.common import (
    EXIT_OK,
    host_port,
)
from styldod_batch.ledger import Ledger, SQLiteLedger, is_postgres_url, open_ledger
from styldod_batch.runtime import run_async
from styldod_batch.settings import from_environment
from styldod_batch.webhook_secret import earlier_secret


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("webhooks", help="a long-running receiver for order events")
    sub = p.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="receive order events into a ledger until Ctrl-C",
        description="Serve the webhook receiver: events arriving at the printed URL (its path "
        "carries a secret token) are recorded in the ledger before the 200, as hints: an "
        "order's final status and outputs are only ever taken from the API (by `upload "
        "--wait` or `download`), never from an event's body.",
    )
    serve.add_argument(
        "--listen",
        type=host_port,
        default=("127.0.0.1", 8765),
        metavar="HOST:PORT",
        help="where to listen (default: 127.0.0.1:8765)",
    )
    serve.add_argument(
        "--state",
        "--journal",
        dest="state",
        required=True,
        metavar="FILE|URL",
        help="the ledger to record events in: a file, or a postgresql:// URL (with "
        "STYLDOD_API_KEY naming the account); --journal is another name for it",
    )
    serve.add_argument(
        "--token",
        help="the secret path token (default: the account's webhook secret, kept in the ledger)",
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    settings = from_environment(state=str(args.state))

    async def serve() -> None:
        if is_postgres_url(str(args.state)):  # many accounts in one: the key picks one
            ledger: Ledger = await open_ledger(settings)
        else:  # the receiver needs no key: it records into the ledger it is given
            ledger = await SQLiteLedger.open(
                Path(args.state), base_url="", api_key=None, force=True
            )
        # The account's secret, kept in the ledger (the one an older version kept in a file,
        # when the ledger has none yet).
        earlier = earlier_secret(settings) if settings.api_key else None
        token = args.token or await ledger.webhook_secret(earlier)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            from styldod_batch.follow import OrderFollower
            from styldod_batch.webhooks import WebhookReceiver

            # The one order tracker, without an API to ask: it records each event in the
            # ledger as a hint (``follow.event_hint``); a run or ``refresh`` asks the API.
            tracker = OrderFollower(None, ledger, poll=False)
            async with WebhookReceiver(
                *args.listen, token=token, on_event=tracker.on_event
            ) as receiver:
                print(f"Webhook URL: {receiver.url}", flush=True)
                await stop.wait()
        finally:
            await ledger.close()

    run_async(serve())
    return EXIT_OK
