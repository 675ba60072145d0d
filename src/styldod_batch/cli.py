"""The runner: arguments -> settings -> engine -> report and exit status."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.contract import OPTION_TYPES
from styldod_batch.download import check_download_folder
from styldod_batch.engine import ManifestSource, RunAborted, Uploader
from styldod_batch.errors import AuthenticationError, ConfigurationError
from styldod_batch.jobfile import load_job_file, merge_settings
from styldod_batch.ledger import Ledger, OrderRecord, SQLiteLedger, known_ledgers, open_ledger
from styldod_batch.ledger import ledger_path as account_ledger_path
from styldod_batch.manifest import stage_manifest
from styldod_batch.options import option_problem
from styldod_batch.report import Report
from styldod_batch.runtime import run_async
from styldod_batch.scan import check_inputs
from styldod_batch.settings import Settings, from_environment
from styldod_batch.webhooks import WebhookReceiver
from styldod_batch.workflow import FollowOptions, download_from_ledger, run_job

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for `ls | head`


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


def _option(text: str) -> tuple[str, Any]:
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


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    value = _rate(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _add_upload_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "upload",
        help="upload image files and place orders",
        description=(
            "Stream every image under PATH into pre-signed storage PUTs, then place one order "
            "per folder (or per fixed-size group). The API key and base URL also come from "
            "STYLDOD_API_KEY and STYLDOD_BASE_URL. Exit status: 0 all done, 1 some images or "
            "orders failed, 2 usage or configuration error, 3 authentication failure."
        ),
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    p.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="a CSV or JSON Lines manifest, one image a row (path, client_image_id, order, "
        "sequence, options), instead of PATHs; validated whole before anything is sent",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="upload the valid rows of a manifest with problems (they are reported, and fail)",
    )
    p.add_argument(
        "--job",
        type=Path,
        metavar="FILE",
        help="a TOML job file of house defaults (options, webhook URL, grouping, rate budget); "
        "flags override it",
    )
    p.add_argument(
        "--global-config",
        type=Path,
        metavar="FILE",
        help="the key's server-side defaults (JSON options, or the sandbox's global config), "
        "so that --dry-run shows each image's effective options",
    )
    _add_connection_args(p)
    p.add_argument(
        "--rps",
        type=_rate,
        default=None,
        help="requests per second that may reach the API (default: 20)",
    )
    p.add_argument(
        "--upload-rps",
        type=_rate,
        default=None,
        metavar="R",
        help="give storage PUTs a budget of their own (0 = unlimited); by default "
        "they share --rps with the API calls",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="uploads in flight at once (default: 16)",
    )
    p.add_argument(
        "--order-by",
        choices=("folder", "none"),
        default=None,
        help="one order per folder (default), or fixed-size groups (none)",
    )
    p.add_argument(
        "--order-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="images per order, at most 100 (default: 100)",
    )
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="K=V",
        help="an order-level option (apply_to_all), e.g. basic_editing=true; repeatable",
    )
    p.add_argument("--webhook-url", metavar="URL", help="where the service sends order events")
    p.add_argument(
        "--dry-run", action="store_true", help="scan and group, print the plan, send nothing"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON report on stdout instead of the summary"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    _add_state_args(p)
    p.add_argument(
        "--no-journal",
        "--no-ledger",
        dest="no_journal",
        action="store_true",
        help="keep no ledger: gives up exactly-once (a re-run uploads and orders everything again)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="use a ledger file written for another base URL or key",
    )
    p.add_argument(
        "--no-follow-up",
        action="store_true",
        help="do not order new images of a listing that was ordered before (they are "
        "reported as late); by default they go into a follow-up order '<listing> (2)'",
    )
    p.add_argument(
        "--reorder-changed",
        action="store_true",
        help="order again an image whose content changed after it was ordered (by default "
        "it is reported, never silently ordered again)",
    )
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow links that lead outside the input folders (by default they are skipped "
        "and named)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="poll every order until it is completed or error (polls never crowd uploads "
        "out of the rate budget)",
    )
    p.add_argument(
        "--listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="receive the orders' webhook events here (a secret token in the path) and wait "
        "for the final ones",
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the address the service reaches --listen at (default: http://LISTEN)",
    )
    p.add_argument(
        "--download",
        type=Path,
        metavar="DIR",
        help="fetch each completed image's output into DIR/<order>/<image id>",
    )
    p.add_argument(
        "--wait-timeout",
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="how long to wait for orders to finish (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_upload)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        "--journal",
        dest="state",
        metavar="PATH",
        help="where the account's ledger lives: a folder (one ledger per account inside) or "
        "a file (default: $STYLDOD_STATE, else $XDG_STATE_HOME/styldod-batch/); --journal is "
        "another name for it",
    )


def _add_download_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "download",
        help="fetch the edited outputs of the account's finished orders",
        description="Fetch every completed image's output_url recorded in the account's "
        "ledger into DIR/<listing>/<image id>: streamed, written atomically, skipping "
        "files already complete, retrying failures.",
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    _add_state_args(p)
    _add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON report")
    p.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    settings = _existing_ledger(args)
    check_download_folder(args.directory)
    report = run_async(download_from_ledger(settings, args.directory))
    return _finish(report, as_json=args.json)


def _add_webhooks_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=_host_port,
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
    serve.set_defaults(func=_cmd_webhooks_serve)


def _cmd_webhooks_serve(args: argparse.Namespace) -> int:
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


def _existing_ledger(args: argparse.Namespace) -> Settings:
    """Settings that point at an existing ledger: the account's (key and base URL from the
    environment or flags), or the only one in the state folder."""
    settings = from_environment(
        state=args.state,
        base_url=getattr(args, "base_url", None),
        api_key=getattr(args, "api_key", None),
    )
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


def _add_connection_args(p: argparse.ArgumentParser) -> None:
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
    )
    job = getattr(args, "job", None)
    return from_environment(**(merge_settings(load_job_file(job), flags) if job else flags))


def _cmd_upload(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not settings.dry_run and not settings.api_key:
        raise ConfigurationError("no API key: set STYLDOD_API_KEY or pass --api-key")
    if args.manifest is None:
        check_inputs(args.paths)
        return _upload(args, settings, args.paths)
    if args.paths:
        raise ConfigurationError("give PATHs or --manifest, not both")
    if not args.manifest.is_file():
        raise ConfigurationError(f"{args.manifest}: no such manifest")
    # Read and checked once; the run takes the same index back.
    with stage_manifest(args.manifest) as staged:
        if staged.problems:
            for problem in staged.problems:
                print(f"styldod-batch: {problem}", file=sys.stderr)
            if not args.skip_invalid or staged.fatal is not None:
                raise ConfigurationError(
                    f"{args.manifest}: {len(staged.problems)} problem(s); nothing was sent "
                    "(fix them, or pass --skip-invalid to upload the valid rows)"
                )
        return _upload(args, settings, ManifestSource(args.manifest, staged=staged))


def _upload(
    args: argparse.Namespace, settings: Settings, source: Sequence[str] | ManifestSource
) -> int:
    if settings.dry_run:
        return _dry_run(settings, source, args)
    if args.download is not None:
        check_download_folder(args.download)  # before anything is sent, not after the orders
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()
    follow = FollowOptions(
        wait=args.wait,
        listen=args.listen,
        public_url=args.public_url,
        download_dir=args.download,
        timeout_s=args.wait_timeout,
    )
    report = run_async(run_job(settings, source, follow, show_progress=show_progress))
    return _finish(report, as_json=args.json)


def load_global_options(path: Path | None, api_key: str | None) -> dict[str, Any]:
    """Options from a global-config file: ``{"options": {...}}``, the sandbox's
    ``{"keys": {KEY: {"options": {...}}}}``, or a plain object of options."""
    if path is None:
        return {}
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the global config: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("keys"), dict):
        keys = raw["keys"]
        entry = keys.get(api_key) if api_key in keys else next(iter(keys.values()), {})
        raw = entry if isinstance(entry, dict) else {}
    if isinstance(raw, dict) and isinstance(raw.get("options"), dict):
        raw = raw["options"]
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: expected a JSON object of options")
    return raw


def _dry_run(
    settings: Settings, source: Sequence[str] | ManifestSource, args: argparse.Namespace
) -> int:
    """Print the plan (orders, images, effective options) as it forms; send nothing."""
    global_options = load_global_options(args.global_config, settings.api_key)
    out = sys.stdout
    first = True

    def on_plan(order: dict[str, Any]) -> None:
        nonlocal first
        if args.json:
            out.write(("" if first else ",\n") + orjson.dumps(order).decode())
        else:
            out.write(f"order {order['order']}: {len(order['images'])} images\n")
            for image in order["images"]:
                options = orjson.dumps(image["options"], option=orjson.OPT_SORT_KEYS).decode()
                out.write(f"  {image['sequence']:>3}  {image['client_image_id']:<48} {options}\n")
        first = False

    async def plan() -> Report:
        async with Uploader(settings, on_plan=on_plan, global_options=global_options) as up:
            return await up.run(source)

    if args.json:
        out.write('{"plan": [\n')
    report = run_async(plan())
    if args.json:
        rest = orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode()
        out.write("\n],\n" + rest[1:].lstrip() + "\n")
        return EXIT_OK if report.ok else EXIT_FAILURES
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILURES


def _finish(result: Report | RunAborted, *, as_json: bool) -> int:
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
        print(f"styldod-batch: stopped: {aborted.cause}", file=sys.stderr)
        if isinstance(aborted.cause, AuthenticationError):
            print(
                "styldod-batch: the API refused the key: check STYLDOD_API_KEY / --api-key",
                file=sys.stderr,
            )
            return EXIT_AUTH
        return EXIT_FAILURES
    return EXIT_OK if report.ok else EXIT_FAILURES


def _add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "demo",
        help="the whole job on the built-in sandbox: no account, no network",
        description=(
            "Start the sandbox (Order API + SeaweedFS S3 on loopback), make a small tree of "
            "sample listing photos, upload them, place one order per listing, wait for every "
            "order's webhooks and print the summary."
        ),
    )
    p.add_argument("--listings", type=_positive_int, default=4, help="folders to make")
    p.add_argument("--photos", type=_positive_int, default=6, help="photos per folder")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="make the sample tree in DIR and keep it (default: a temporary folder)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON report too")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from styldod_batch.demo import run_demo

    return run_async(
        run_demo(listings=args.listings, photos=args.photos, keep=args.keep, as_json=args.json)
    )


def _image_outcome(ledger: Ledger, order_id: str, image: dict[str, Any]) -> dict[str, Any]:
    outcome = {
        "client_image_id": image.get("client_image_id"),
        "image_status": image.get("image_status"),
        "output_url": image.get("output_url"),
    }
    done = ledger.output(order_id, str(image.get("client_image_id")))
    if done is not None:
        outcome["downloaded_to"] = done[0]
    return outcome


def _add_status_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "status",
        help="what the account's ledger knows: listings, orders, images, failures",
        description="Show the account's ledger: per listing its orders (state, status, ID), "
        "its images by state, and any late or changed images; then the failures. "
        "Sends nothing.",
    )
    _add_state_args(p)
    _add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)


def _order_status(ledger: Ledger, order: OrderRecord, events: list[str]) -> dict[str, Any]:
    return {
        "key": order.name,
        "orderID": order.order_id,
        "images": order.images,
        "state": order.state,
        "status": order.status,
        "error": order.error,
        "follow_up": order.batch > 1 and order.listing_id is not None,
        "events": events,
        "outputs": [_image_outcome(ledger, order.order_id, image) for image in order.image_list]
        if order.order_id
        else [],
    }


async def _read_status(settings: Settings) -> dict[str, Any]:
    ledger = await open_ledger(settings, read_only=True)
    try:
        listings = await ledger.listings()
        orders = {}
        for order in await ledger.orders():
            events = await ledger.events(order.order_id) if order.order_id else []
            orders[order.ref] = _order_status(ledger, order, events)
        counts: dict[str, int] = {}
        shown_listings = []
        for view in listings:
            states: dict[str, int] = {}
            for image in view.images.values():
                states[image.state] = states.get(image.state, 0) + 1
                counts[image.state] = counts.get(image.state, 0) + 1
            shown_listings.append(
                {
                    "name": view.listing.name,
                    "identity": view.listing.identity,
                    "download_folder": view.label,
                    "images": states,
                    "orders": [orders[ref] for ref in sorted(view.orders) if ref in orders],
                    "late": sorted(i.path for i in view.images.values() if i.state == "late"),
                    "changed": sorted(i.path for i in view.images.values() if i.state == "changed"),
                }
            )
        failures = [{"path": p, "error": e} for p, e in await ledger.failures()]
    finally:
        await ledger.close()
    return {
        "ledger": ledger.location,
        "images": counts,
        "orders": list(orders.values()),
        "listings": shown_listings,
        "failures": failures,
    }


def _cmd_status(args: argparse.Namespace) -> int:
    body = run_async(_read_status(_existing_ledger(args)))
    if args.json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    counts = body["images"]
    print(f"Ledger: {body['ledger']}")
    print("Images: " + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"))
    print(f"Listings: {len(body['listings'])}, orders: {len(body['orders'])}")
    for listing in body["listings"]:
        print(f"  {listing['name']}  ({listing['identity']})")
        for o in listing["orders"]:
            detail = o["orderID"] or o["error"] or ""
            state = o["status"] or o["state"]
            print(f"    {o['key']:<38} {o['images']:>4} images  {state:<16} {detail}")
            for image in o["outputs"]:
                where = image.get("downloaded_to") or image.get("output_url") or ""
                print(f"        {image['client_image_id']:<42} {image['image_status']:<10} {where}")
        for kind in ("late", "changed"):
            if listing[kind]:
                print(f"    {kind}: " + ", ".join(listing[kind]))
    if body["failures"]:
        print("Failures:")
        for f in body["failures"]:
            print(f"  {f['path']}: {f['error']}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="styldod-batch",
        description="Stream bulk image files into pre-signed storage PUTs and place Styldod "
        "orders, within the API's rate limit.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_upload_parser(commands)
    _add_status_parser(commands)
    _add_download_parser(commands)
    _add_webhooks_parser(commands)
    _add_demo_parser(commands)
    _add_sandbox_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except ConfigurationError as exc:
        print(f"styldod-batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _reader_went_away()
    except BaseExceptionGroup as group:
        if group.subgroup(BrokenPipeError) is None or group.split(BrokenPipeError)[1]:
            raise
        return _reader_went_away()
    return code


def _reader_went_away() -> int:
    """The reader of our output left (``| head``): end quietly, as ``ls | head`` does. What
    is still buffered goes nowhere, so Python's exit does not complain about it."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
