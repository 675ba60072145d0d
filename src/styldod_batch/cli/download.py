"""``styldod-batch download``: the outputs of the account's finished orders."""

from __future__ import annotations

import argparse
from pathlib import Path

from styldod_batch.cli.common import (
    add_connection_args,
    add_state_args,
    existing_ledger,
    finish,
)
from styldod_batch.cli.report import add_html_arg, write_page
from styldod_batch.download import check_download_folder
from styldod_batch.option_registry import add_flags
from styldod_batch.runtime import run_async
from styldod_batch.workflow import download_from_ledger


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "download",
        help="fetch the edited outputs of the account's finished orders",
        description="Fetch every completed image's output_url recorded in the account's "
        "ledger into DIR/<listing>/<image id>: streamed, written atomically, skipping "
        "files already complete, retrying failures. With the account's key, orders the "
        "ledger does not know as finished are asked about first. Outputs come over https "
        "from public addresses only (plus loopback when the API is on loopback), unless "
        "--allow-private-outputs.",
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    add_state_args(p)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON report")
    add_flags(p, ["allow_private_outputs"])
    add_html_arg(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = existing_ledger(args)
    if args.allow_private_outputs:
        settings = settings.with_changes(allow_private_outputs=True)
    check_download_folder(args.directory)
    report = run_async(download_from_ledger(settings, args.directory))
    code = finish(report, as_json=args.json)
    if args.html is not None:  # the review page of every order, outputs now downloaded
        write_page(settings, args.html, to_stderr=args.json)
    return code
