"""The runner: arguments -> settings -> engine -> report and exit status.

One module per command; ``common`` holds what they share."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from styldod_batch.cli import (
    demo,
    download,
    import_ledger,
    refresh,
    release,
    report,
    sandbox,
    status,
    upload,
    webhooks,
)
from styldod_batch.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_LEDGER,
    EXIT_USAGE,
    configuration_exit,
    json_error,
)
from styldod_batch.cli.parser import Parser, UsageError
from styldod_batch.errors import ConfigurationError, LedgerFailure
from styldod_batch.runtime import steady_heap
from styldod_batch.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="styldod-batch",
        description="Stream bulk image files into pre-signed storage PUTs and place Styldod "
        "orders, within the API's rate limit.",
    )
    parser.add_argument("--version", action="version", version=f"styldod-batch {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for command in (
        upload, status, refresh, report, download, release, import_ledger, webhooks, demo, sandbox
    ):  # fmt: skip
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(given)
    except UsageError as exc:
        if "--json" in given:
            json_error(exc.message, EXIT_USAGE, "usage")
        raise
    steady_heap()
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except LedgerFailure as exc:
        # Not a usage error: the arguments were fine, the ledger could not record the run.
        print(f"styldod-batch: {exc}", file=sys.stderr)
        if getattr(args, "json", None) or "--json" in given:
            json_error(str(exc), EXIT_LEDGER, "ledger")
        return EXIT_LEDGER
    except ConfigurationError as exc:
        # A coordinator (Redis, PostgreSQL) that does not answer at start is transient: a
        # nightly job retries on 4, and fixes its arguments on 2.
        code, kind = configuration_exit(exc)
        print(f"styldod-batch: {exc}", file=sys.stderr)
        if getattr(args, "json", None) or "--json" in given:
            json_error(str(exc), code, kind)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _reader_went_away()
    except BaseExceptionGroup as group:
        if group.subgroup(BrokenPipeError) is None or group.split(BrokenPipeError)[1]:
            raise
        return _reader_went_away()
    return code


def run() -> NoReturn:
    """The command's entry point: ``main()``, then out at once. By then every file is closed
    and every connection shut; what is left is the interpreter freeing its modules, 50 to
    80 ms that the last of several workers would add to the job's wall time (mypy skips it
    the same way). The exit handlers still run (logging's flush, a temporary folder's
    removal). An exception still ends through Python's own exit, with its message."""
    code = main()
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, ValueError):  # a closed or vanished stream: no matter
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _reader_went_away() -> int:
    """The reader of our output left (``| head``): end quietly, as ``ls | head`` does. What
    is still buffered goes nowhere, so Python's exit does not complain about it."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
