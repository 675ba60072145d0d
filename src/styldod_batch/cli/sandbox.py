"""``styldod-batch sandbox``: the local Order API on real S3 storage, until Ctrl-C."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from styldod_batch.cli.common import (
    EXIT_OK,
    non_negative_int,
    positive_int,
    probability,
)
from styldod_batch.runtime import run_async


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=non_negative_int,
        default=8700,
        help="Order API port; 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--storage-port",
        type=non_negative_int,
        default=0,
        help="storage gateway port; 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--api-key",
        help="the API key the sandbox accepts (default: a new random key each start, printed "
        "once the sandbox serves: a fresh sandbox is a fresh account, with a ledger of its own)",
    )
    p.add_argument(
        "--api-secret",
        default="sandbox-secret",
        help="the secret for HTTP Basic auth with that key (default: %(default)s)",
    )
    p.add_argument(
        "--rps",
        type=positive_int,
        default=20,
        help="requests per key allowed in any sliding one-second window; more get "
        "429 with Retry-After (default: %(default)s)",
    )
    p.add_argument(
        "--url-ttl",
        type=positive_int,
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
        type=probability,
        default=0.0,
        metavar="P",
        help="probability that an API call answers 500/502/503/504",
    )
    p.add_argument(
        "--fault-storage-5xx",
        type=probability,
        default=0.0,
        metavar="P",
        help="probability that a storage request answers 503",
    )
    p.add_argument(
        "--fault-429",
        type=probability,
        default=0.0,
        metavar="P",
        help="probability of an extra 429 (Retry-After: 1), on API and storage",
    )
    p.add_argument(
        "--fault-reset",
        type=probability,
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
    p.add_argument(
        "--limit-storage",
        action="store_true",
        help="count storage PUTs in their key's --rps window too (over it: 429 SlowDown)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from styldod_batch.sandbox import (
        Faults,
        KeyConfig,
        SandboxConfig,
        load_global_config,
        serve_until_signalled,
    )

    keys = load_global_config(args.global_config) if args.global_config else {}
    api_key = args.api_key or f"sandbox-{secrets.token_hex(8)}"
    keys.setdefault(api_key, KeyConfig(secret=args.api_secret))
    config = SandboxConfig(
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        api_key=api_key,
        rps=args.rps,
        url_ttl_s=args.url_ttl,
        keys=keys,
        required_version=args.require_version,
        order_step_s=args.order_step,
        log_path=args.log,
        limit_storage_per_key=args.limit_storage,
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
