"""``styldod-batch report --html PATH``: the morning review, a page of the account's orders."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from styldod_batch.cli.common import (
    EXIT_OK,
    add_connection_args,
    add_state_args,
    existing_ledger,
)
from styldod_batch.errors import ConfigurationError, RunAborted
from styldod_batch.report import Report
from styldod_batch.review import IMAGE_STATES, ReviewFilter, write_review
from styldod_batch.runtime import run_async
from styldod_batch.settings import Settings

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since_time(text: str, now: float | None = None) -> float:
    """``12h``, ``2d``, ``30m`` ago, or an ISO date or date and time (local unless it says)."""
    ago = _AGO.match(text)
    if ago is not None:
        return (time.time() if now is None else now) - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a time ago (12h, 2d, 30m) or a date (2026-12-06, 2026-12-06T22:00)"
        ) from None


def add_html_arg(p: argparse.ArgumentParser) -> None:
    """``--html PATH`` on ``upload`` and ``download``: the review page of the run's orders."""
    p.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="at the end, write the review page (originals beside edited outputs, a picture "
        "of the run) to PATH, thumbnails in PATH's _files folder beside it",
    )


def write_page(
    settings: Settings, page: Path, filters: ReviewFilter | None = None, *, to_stderr: bool = False
) -> None:
    """The page, and one line saying where (on stderr when stdout carries JSON)."""
    written = run_async(write_review(settings, page, filters))
    print(written.summary(), file=sys.stderr if to_stderr else sys.stdout, flush=True)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "report",
        help="write the morning review: a page of the account's orders, before and after",
        description="Write a self-contained HTML page of the account's ledger: per listing its "
        "orders (name, ID, state, times) and each image's original beside its edited output "
        "(once downloaded), failed, refused, changed and late images with their reasons, and "
        "a chart of each run's requests per second against the rate limit. Thumbnails (at "
        "most 256 px, cached by content) go into a folder beside the page; it links nothing "
        "on the internet. Sends nothing.",
    )
    p.add_argument("--html", type=Path, metavar="PATH", required=True, help="the page to write")
    p.add_argument(
        "--run",
        metavar="ID",
        help="only the orders of this run (its ID or the start of it, as the page shows it; "
        "'last' for the latest run)",
    )
    p.add_argument(
        "--since",
        type=since_time,
        metavar="WHEN",
        help="only the orders of runs since WHEN: a time ago (12h, 2d) or a date and time",
    )
    p.add_argument(
        "--listing",
        action="append",
        default=[],
        metavar="NAME",
        help="only this listing (its name or folder; shell patterns like 'listing-1*'); repeatable",
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
    add_state_args(p)
    add_connection_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = existing_ledger(args)
    if args.html.exists() and not args.html.is_file() and not args.html.is_dir():
        raise ConfigurationError(f"{args.html}: not a file")
    filters = ReviewFilter(
        run=args.run,
        since=args.since,
        listings=tuple(args.listing),
        states=frozenset(args.image_states),
    )
    write_page(settings, args.html, filters)
    return EXIT_OK


def _literal(name: str) -> str:
    """A listing name as a pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def html_after_run(
    args: argparse.Namespace, settings: Settings, result: Report | RunAborted, started: float
) -> None:
    """``upload --html``: the page of the run's listings (or, when its orders name none, of
    the runs since it started); the line saying where goes to stderr under ``--json``."""
    if getattr(args, "html", None) is None or settings.dry_run:
        return
    report = result.report if isinstance(result, RunAborted) else result
    names = {o.listing for o in report.orders if o.listing}
    names.update(entry.get("listing", "") for entry in report.late)
    names.discard("")
    filters = (
        ReviewFilter(listings=tuple(sorted(_literal(n) for n in names)))
        if names and all(o.listing for o in report.orders)
        else ReviewFilter(since=started - 1)
    )
    write_page(settings, args.html, filters, to_stderr=bool(getattr(args, "json", False)))
