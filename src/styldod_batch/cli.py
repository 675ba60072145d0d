"""The runner: arguments -> settings -> engine -> report and exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from styldod_batch.errors import ConfigurationError
from styldod_batch.runtime import run_async

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_sandbox_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "sandbox",
        help="serve a local Order API on real S3 storage (SeaweedFS) until Ctrl-C",
        description=(
            "Serve a local, faithful Order API with real S3 storage behind it (SeaweedFS, "
            "started as a child process). Prints 'Order API: http://HOST:PORT' as its first "
            "line once everything serves; stops cleanly on SIGINT or SIGTERM."
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default: %(default)s; keep it on loopback)",
    )
    p.add_argument(
        "--port",
        type=_non_negative_int,
        default=8700,
        help="Order API port; 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--storage-port",
        type=_non_negative_int,
        default=0,
        help="storage gateway port; 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default="sandbox-key",
        help="the API key the sandbox accepts (default: %(default)s)",
    )
    p.add_argument(
        "--api-secret",
        default="sandbox-secret",
        help="the secret for HTTP Basic auth with that key (default: %(default)s)",
    )
    p.add_argument(
        "--rps",
        type=_positive_int,
        default=20,
        help="requests per key allowed in any sliding one-second window; more get "
        "429 with Retry-After (default: %(default)s)",
    )
    p.add_argument(
        "--url-ttl",
        type=_positive_int,
        default=14400,
        metavar="SECONDS",
        help="lifetime of pre-signed upload URLs (default: %(default)s = 4 hours)",
    )
    p.add_argument(
        "--global-config",
        type=Path,
        metavar="FILE",
        help='JSON per-key global configuration: {"keys": {"KEY": {"options": {...}, '
        '"webhook_url": URL, "contact": {...}, "secret": S, '
        '"credit_images": N, "read_only": BOOL}}}',
    )
    p.add_argument(
        "--require-version",
        metavar="VERSION",
        help="refuse API calls whose version header is missing or differs",
    )
    p.add_argument(
        "--order-step",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="time between an order's lifecycle events (default: %(default)s)",
    )
    p.add_argument(
        "--fault-api-5xx",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability that an API call answers 500/502/503/504",
    )
    p.add_argument(
        "--fault-storage-5xx",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability that a storage request answers 503",
    )
    p.add_argument(
        "--fault-429",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of an extra 429 (Retry-After: 1), on API and storage",
    )
    p.add_argument(
        "--fault-reset",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability that a storage upload's connection is reset midway through its body",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="N",
        help="latency added to every API and storage request",
    )
    p.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="append every request (time, endpoint, status, headers that matter, "
        "bytes) to FILE as JSON lines",
    )
    p.set_defaults(func=_cmd_sandbox)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from styldod_batch.sandbox import (
        Faults,
        KeyConfig,
        SandboxConfig,
        load_global_config,
        serve_until_signalled,
    )

    keys = load_global_config(args.global_config) if args.global_config else {}
    keys.setdefault(args.api_key, KeyConfig(secret=args.api_secret))
    config = SandboxConfig(
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        api_key=args.api_key,
        rps=args.rps,
        url_ttl_s=args.url_ttl,
        keys=keys,
        required_version=args.require_version,
        order_step_s=args.order_step,
        log_path=args.log,
        faults=Faults(
            api_5xx=args.fault_api_5xx,
            storage_5xx=args.fault_storage_5xx,
            api_429=args.fault_429,
            storage_429=args.fault_429,
            storage_reset=args.fault_reset,
            latency_ms=args.latency_ms,
        ),
    )
    run_async(serve_until_signalled(config))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="styldod-batch",
        description="Stream bulk image files into pre-signed storage PUTs and place Styldod "
        "orders, within the API's rate limit.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_sandbox_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(f"styldod-batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
