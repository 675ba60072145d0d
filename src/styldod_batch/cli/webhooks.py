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
from styldod_batch.ledger import SQLiteLedger
from styldod_batch.runtime import run_async
from styldod_batch.webhooks import WebhookReceiver


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("webhooks", help="a long-running receiver for order events")
    sub = p.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="receive order events into a ledger until Ctrl-C",
        description="Serve the webhook receiver: events arriving at the printed URL (its path "
        "carries a secret token) are recorded in the ledger before the 200.",
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
        type=Path,
        required=True,
        metavar="FILE",
        help="the ledger file to record events in (--journal is another name for it)",
    )
    serve.add_argument("--token", help="the secret path token (default: a new random one)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    async def serve() -> None:
        # The receiver needs no key: it records into whichever account's ledger it is given.
        ledger = await SQLiteLedger.open(args.state, base_url="", api_key=None, force=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with WebhookReceiver(
                *args.listen, token=args.token, on_event=ledger.record_event
            ) as receiver:
                print(f"Webhook URL: {receiver.url}", flush=True)
                await stop.wait()
        finally:
            await ledger.close()

    run_async(serve())
    return EXIT_OK
