"""What the runner's commands share: exit statuses, argument types, the options every
command that talks to the API takes, settings from arguments, and the final report."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from styldod_batch import logs
from styldod_batch import option_registry as registry
from styldod_batch.contract import OPTION_TYPES
from styldod_batch.errors import (
    AuthenticationError,
    ConfigurationError,
    RunAborted,
    ServiceUnreachable,
)
from styldod_batch.jobfile import load_job_file
from styldod_batch.ledger import is_postgres_url, known_ledgers
from styldod_batch.ledger import ledger_path as account_ledger_path
from styldod_batch.option_registry import BY_NAME, SETTINGS, add_flags, from_environ, layered
from styldod_batch.options import check_option_names, coerce_option, option_problem
from styldod_batch.report import Report
from styldod_batch.settings import Settings, from_environment

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
# The ledger could not record what the run did (full disk, a write that failed...).
EXIT_LEDGER = 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for `ls | head`


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A registry parser as an argparse type: its reason becomes argparse's message."""

    def parsed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parsed


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


non_negative_int = _argument(registry.non_negative_int)
positive_int = _argument(registry.positive_int)
rate = _argument(registry.rate)
seconds = _argument(registry.seconds)
host_port = _argument(registry.host_port)


def option_value(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it parses (true, 3, "x"), else a string;
    a boolean option also takes TRUE, yes, 0..."""
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
    value = coerce_option(name, value)
    problem = option_problem(name, value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"option {name} {problem}")
    return name, value


def add_state_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, ["state"])


def add_connection_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, ["base_url", "api_key", "api_secret", "api_version"])


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The run's settings: defaults < job file (``--job``) < environment < flags, for every
    setting of ``option_registry``. The runner's own settings (``wait``, ``max_images``...)
    are written back into ``args``, resolved the same way."""
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    if flags["options"] is not None:
        flags["options"] = dict(flags["options"])
    job_path = getattr(args, "job", None)
    job = load_job_file(job_path, strict_options=bool(flags["strict_options"])) if job_path else {}
    defaults = {s.name: s.default for s in SETTINGS}
    values = layered(defaults, job, from_environ(os.environ), flags)
    if job_path and not values.get("job_name"):
        values["job_name"] = Path(job_path).stem  # the job file names the job
    for setting in SETTINGS:
        if not setting.in_settings and hasattr(args, setting.name):
            setattr(args, setting.name, values.get(setting.name))
    if hasattr(args, "log_format"):
        setup_output(args)  # so that what the settings warn about reaches the chosen log
    given_options = flags["options"] or {}
    check_option_names(given_options, "--option", strict=bool(values["strict_options"]))
    return Settings(**{k: v for k, v in values.items() if BY_NAME[k].in_settings})


def with_flags(settings: Settings, args: argparse.Namespace, names: list[str]) -> Settings:
    """``settings`` with what these settings' flags (``add_flags``) say, where given: a flag
    not given (None) leaves the value of the environment or the default."""
    given = {name: getattr(args, name, None) for name in names}
    return settings.with_changes(**{k: v for k, v in given.items() if v is not None})


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


def finish(
    result: Report | RunAborted, *, as_json: bool, quiet: bool = False, log_format: str = "text"
) -> int:
    """Print the report (``quiet``: only when something went wrong) and return the exit
    status; a JSON log (``log_format`` "json") ends with a ``summary`` event of its counts."""
    aborted = result if isinstance(result, RunAborted) else None
    report = result.report if isinstance(result, RunAborted) else result
    code, problem = exit_status(result)
    if log_format == "json":
        log_summary(report, code, problem)
    if as_json:
        body = report.to_dict()
        if aborted is not None:
            body["aborted"] = str(aborted.cause)
        if problem is not None:
            body["error"] = problem
        body["exit_status"] = code
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif isinstance(aborted, RunAborted) and isinstance(aborted.cause, ServiceUnreachable):
        pass  # nothing was done: the one line below says it all
    elif not (quiet and code == EXIT_OK):
        print(report.summary())
    if problem is not None:
        print(f"styldod-batch: {problem}", file=sys.stderr)
    if isinstance(aborted, RunAborted) and isinstance(aborted.cause, AuthenticationError):
        print(
            "styldod-batch: the API refused the key: check STYLDOD_API_KEY / --api-key",
            file=sys.stderr,
        )
    return code


def log_summary(report: Report, code: int, problem: str | None) -> None:
    """The run's last log record: the report's counts (info; warning when it failed)."""
    body = report.to_dict()
    states: dict[str, int] = {}
    for order in report.orders:
        state = order.order_status or order.status
        states[state] = states.get(state, 0) + 1
    fields: dict[str, Any] = {
        "images": body.get("images", {}),
        "orders": states,
        "outputs": dict(report.outputs),
        "requests": body["requests"],
        "bytes_uploaded": report.bytes_uploaded,
        "bytes_downloaded": report.bytes_downloaded,
        "elapsed_s": body["elapsed_s"],
        "interrupted": report.interrupted,
        "exit_status": code,
    }
    if problem is not None:
        fields["error"] = problem
    level = logging.INFO if code == EXIT_OK else logging.WARNING
    logs.event(level, "summary", f"done: exit status {code}", **fields)


def exit_status(result: Report | RunAborted) -> tuple[int, str | None]:
    """The exit status of a run's result, and what to say about it on stderr (or None)."""
    if isinstance(result, RunAborted):
        if result.report.interrupted:
            return EXIT_INTERRUPTED, None
        if isinstance(result.cause, ServiceUnreachable):
            return EXIT_UNREACHABLE, str(result.cause)
        code = EXIT_AUTH if isinstance(result.cause, AuthenticationError) else EXIT_FAILURES
        return code, f"stopped: {result.cause}"
    if result.interrupted:
        return EXIT_INTERRUPTED, None
    if not result.download_only and not result.orders and result.total == result.skipped:
        # A failed mount must not look like a good night: no image at all is a failure.
        files = "file" if result.skipped == 1 else "files"
        skipped = f" ({result.skipped} other {files} skipped)" if result.skipped else ""
        return EXIT_FAILURES, f"no image in the inputs{skipped}: nothing to upload"
    return (EXIT_OK if result.ok else EXIT_FAILURES), None


def guard_cost(settings: Settings, source: Any, limit: int | None) -> None:
    """With ``limit`` (``--max-images``), plan the run first, sending nothing, and stop it
    when it would order more images than that (the night the job points at the wrong
    mount)."""
    if limit is None:
        return
    from styldod_batch.engine import Uploader  # the runner's start stays light without it
    from styldod_batch.runtime import run_async

    async def plan() -> Report:
        async with Uploader(settings.with_changes(dry_run=True)) as uploader:
            return await uploader.run(source)

    planned = run_async(plan()).planned
    if planned > limit:
        raise ConfigurationError(
            f"this run would order {planned} images, more than max_images {limit}: "
            "nothing was sent (raise --max-images, or check the inputs)"
        )


def json_error(message: str, code: int, kind: str) -> None:
    """A failure before any report, as one JSON object on stdout (for ``--json``)."""
    body = {"error": message, "kind": kind, "exit_status": code}
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")


# What a server that does not answer looks like on the way: refused, reset, unroutable,
# timed out. (Not a full disk or a permission: those are not transient.)
_AWAY_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}
)


def unreachable(exc: BaseException) -> bool:
    """Whether a configuration error stems from a server that did not answer (Redis or
    PostgreSQL at start), rather than from what the user wrote."""
    seen: BaseException | None = exc
    for _ in range(8):
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if seen is None:
            return False
        if isinstance(seen, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if isinstance(seen, OSError) and seen.errno in _AWAY_ERRNOS:
            return True
        if type(seen).__module__.startswith("redis") and type(seen).__name__ in (
            "ConnectionError",
            "TimeoutError",
            "BusyLoadingError",
        ):
            return True
    return False


def configuration_exit(exc: ConfigurationError) -> tuple[int, str]:
    """The exit status of a configuration error, and its kind for ``--json``: 4 a
    coordinator that did not answer (transient: a nightly job retries), else 2 (fix the
    arguments)."""
    if unreachable(exc):
        return EXIT_UNREACHABLE, "unreachable"
    return EXIT_USAGE, "configuration"


def add_output_args(p: argparse.ArgumentParser) -> None:
    """How much the command says on stderr, and in which form."""
    add_flags(p, ["verbose", "quiet", "log_format"])


def setup_output(args: argparse.Namespace) -> str:
    """Configure the package's logging from the arguments; returns how progress is shown:
    "terminal" (a live line on stderr), "log" (a log line every few seconds) or "none".

    On a terminal the live line shows the progress, so the log says warnings and errors; in
    a log file or CI, the log says what happens (orders, progress) at info level. Retries
    only at ``-v``: an API that never answers is one line, not one per attempt.
    """
    terminal = sys.stderr.isatty() and args.log_format == "text"
    verbosity = -1 if args.quiet else args.verbose + (0 if terminal else 1)
    if args.verbose < 2:  # debug (every file) only at -vv, in a log file too
        verbosity = min(verbosity, 1)
    handler = logs.configure(verbosity=verbosity, fmt=args.log_format)
    if not args.verbose:
        handler.addFilter(lambda record: getattr(record, "event", None) != "retry")
    if args.quiet or getattr(args, "no_progress", False):
        return "none"
    return "terminal" if terminal else "log"
