"""What the runner's commands share: exit statuses, argument types, the options every
command that talks to the API takes, settings from arguments, and the final report."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import orjson

from styldod_batch import logs
from styldod_batch.contract import OPTION_TYPES
from styldod_batch.errors import (
    AuthenticationError,
    ConfigurationError,
    RunAborted,
    ServiceUnreachable,
)
from styldod_batch.jobfile import load_job_file, merge_settings
from styldod_batch.ledger import is_postgres_url, known_ledgers
from styldod_batch.ledger import ledger_path as account_ledger_path
from styldod_batch.options import option_problem
from styldod_batch.report import Report
from styldod_batch.settings import Settings, from_environment

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for `ls | head`


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def option_value(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it parses (true, 3, "x"), else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    name = name.strip()
    value: Any = raw
    if OPTION_TYPES.get(name) is not str:  # a known text option keeps its text as written
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
    problem = option_problem(name, value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"option {name} {problem}")
    return name, value


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def seconds(text: str) -> float:
    value = rate(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        "--journal",
        dest="state",
        metavar="PATH",
        help="where the account's ledger lives: a folder (one ledger per account inside) or "
        "a file (default: $STYLDOD_STATE, else $XDG_STATE_HOME/styldod-batch/); --journal is "
        "another name for it",
    )


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="the Order API (default: $STYLDOD_BASE_URL or https://orderapi.styldod.com)",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="the API key (default: $STYLDOD_API_KEY); prefer the variable, "
        "command lines are visible to other users",
    )
    p.add_argument(
        "--api-secret",
        metavar="SECRET",
        help="authenticate with HTTP Basic, key and this secret (default: $STYLDOD_API_SECRET)",
    )
    p.add_argument(
        "--api-version", metavar="DATE", help="send this dated API version in the version header"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    options = dict(args.option) if getattr(args, "option", None) else None
    flags = dict(
        base_url=args.base_url,
        api_key=args.api_key,
        api_secret=args.api_secret,
        api_version=args.api_version,
        rps=getattr(args, "rps", None),
        upload_rps=getattr(args, "upload_rps", None),
        concurrency=getattr(args, "concurrency", None),
        order_by=getattr(args, "order_by", None),
        order_size=getattr(args, "order_size", None),
        options=options,
        webhook_url=getattr(args, "webhook_url", None),
        dry_run=getattr(args, "dry_run", False) or None,
        state=getattr(args, "state", None),
        ledger=False if getattr(args, "no_journal", False) else None,
        force_state=getattr(args, "force", False) or None,
        follow_ups=False if getattr(args, "no_follow_up", False) else None,
        reorder_changed=getattr(args, "reorder_changed", False) or None,
        follow_symlinks=getattr(args, "follow_symlinks", False) or None,
        lease_s=getattr(args, "lease", None),
        budget=getattr(args, "budget", None),
    )
    job = getattr(args, "job", None)
    return from_environment(**(merge_settings(load_job_file(job), flags) if job else flags))


def existing_ledger(args: argparse.Namespace) -> Settings:
    """Settings that point at an existing ledger: the account's (key and base URL from the
    environment or flags), or the only one in the state folder."""
    settings = from_environment(
        state=args.state,
        base_url=getattr(args, "base_url", None),
        api_key=getattr(args, "api_key", None),
    )
    if is_postgres_url(settings.state):
        if not settings.api_key:
            raise ConfigurationError(
                "a PostgreSQL ledger holds many accounts: set STYLDOD_API_KEY (and "
                "STYLDOD_BASE_URL) to pick one"
            )
        return settings
    if settings.api_key:
        path = account_ledger_path(settings)
        if not path.exists():
            raise ConfigurationError(f"{path}: no ledger for this account yet")
        return settings.with_changes(state=str(path), force_state=True)
    found = known_ledgers(settings)
    if len(found) == 1:
        return settings.with_changes(state=str(found[0]), force_state=True)
    if not found:
        where = account_ledger_path(settings).parent
        raise ConfigurationError(
            f"no ledger in {where}: set STYLDOD_API_KEY (and STYLDOD_BASE_URL), or pass --state"
        )
    names = ", ".join(str(p) for p in found)
    raise ConfigurationError(
        f"several ledgers ({names}): set STYLDOD_API_KEY and STYLDOD_BASE_URL to pick the "
        "account's, or pass --state FILE"
    )


def finish(result: Report | RunAborted, *, as_json: bool) -> int:
    aborted = result if isinstance(result, RunAborted) else None
    report = result.report if isinstance(result, RunAborted) else result
    if as_json:
        body = report.to_dict()
        if aborted is not None:
            body["aborted"] = str(aborted.cause)
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.summary())
    if report.interrupted:
        return EXIT_INTERRUPTED
    if aborted is not None:
        if isinstance(aborted.cause, ServiceUnreachable):
            print(f"styldod-batch: {aborted.cause}", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"styldod-batch: stopped: {aborted.cause}", file=sys.stderr)
        if isinstance(aborted.cause, AuthenticationError):
            print(
                "styldod-batch: the API refused the key: check STYLDOD_API_KEY / --api-key",
                file=sys.stderr,
            )
            return EXIT_AUTH
        return EXIT_FAILURES
    return EXIT_OK if report.ok else EXIT_FAILURES


def add_output_args(p: argparse.ArgumentParser) -> None:
    """How much the command says on stderr, and in which form."""
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="say more on stderr: each order, retry and 429 (-vv: every file too)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="say only what went wrong; no progress"
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (level, event, time, ...) on stderr",
    )


def setup_output(args: argparse.Namespace) -> str:
    """Configure the package's logging from the arguments; returns how progress is shown:
    "terminal" (a live line on stderr), "log" (a log line every few seconds) or "none".

    On a terminal the live line shows the progress, so the log says warnings and errors; in
    a log file or CI, the log says what happens (orders, retries, progress) at info level.
    """
    terminal = sys.stderr.isatty() and args.log_format == "text"
    verbosity = -1 if args.quiet else args.verbose + (0 if terminal else 1)
    logs.configure(verbosity=verbosity, fmt=args.log_format)
    if args.quiet or getattr(args, "no_progress", False):
        return "none"
    return "terminal" if terminal else "log"
