"""``styldod-batch download``: the outputs of the account's finished orders."""

from __future__ import annotations

import argparse
from pathlib import Path

from styldod_batch.cli.common import (
    add_connection_args,
    add_state_args,
    existing_ledger,
    finish,
    with_flags,
)
from styldod_batch.cli.report import add_html_arg, write_page
from styldod_batch.download import check_download_folder
from styldod_batch.option_registry import add_flags
from styldod_batch.runtime import run_async
from styldod_batch.workflow import download_from_ledger

# The settings this command takes a flag for (described in ``option_registry``).
FLAGS = ["allow_private_outputs", "download_rps", "bwlimit"]


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
    # The pace of downloads, as the upload command takes it (both from the one registry).
    add_flags(p, FLAGS)
    add_html_arg(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = with_flags(existing_ledger(args), args, FLAGS)
    check_download_folder(args.directory)
    report = run_async(download_from_ledger(settings, args.directory))
    code = finish(report, as_json=args.json)
    if args.html is not None:  # the review page of every order, outputs now downloaded
        write_page(settings, args.html, to_stderr=args.json)
    return code
