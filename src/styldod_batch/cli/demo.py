"""``styldod-batch demo``: the whole job on the built-in sandbox."""

from __future__ import annotations

import argparse
from pathlib import Path

from styldod_batch.cli.common import (
    positive_int,
)
from styldod_batch.runtime import run_async


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "demo",
        help="the whole job on the built-in sandbox: no account, no network",
        description=(
            "Start the sandbox (Order API + SeaweedFS S3 on loopback), make a small tree of "
            "sample listing photos, upload them, place one order per listing, wait for every "
            "order's webhooks and print the summary."
        ),
    )
    p.add_argument("--listings", type=positive_int, default=4, help="folders to make")
    p.add_argument("--photos", type=positive_int, default=6, help="photos per folder")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="make the sample tree in DIR and keep it (default: a temporary folder)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON report too")
    p.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="where to write the review page of the demo's orders (default: "
        "styldod-demo/review.html in the temporary folder, kept)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from styldod_batch.demo import run_demo

    return run_async(
        run_demo(
            listings=args.listings,
            photos=args.photos,
            keep=args.keep,
            as_json=args.json,
            html=args.html,
        )
    )
