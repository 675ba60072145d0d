"""``styldod-batch upload``: upload, place orders, then follow and download (or plan)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.cli.common import (
    EXIT_FAILURES,
    EXIT_OK,
    add_connection_args,
    add_output_args,
    add_state_args,
    finish,
    host_port,
    option_value,
    positive_int,
    rate,
    seconds,
    settings_from_args,
    setup_output,
)
from styldod_batch.download import check_download_folder
from styldod_batch.engine import ManifestSource, Uploader
from styldod_batch.errors import ConfigurationError
from styldod_batch.manifest import stage_manifest
from styldod_batch.report import Report
from styldod_batch.runtime import run_async
from styldod_batch.scan import check_inputs
from styldod_batch.settings import Settings
from styldod_batch.workflow import FollowOptions, run_job


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add_connection_args(p)
    p.add_argument(
        "--rps",
        type=rate,
        default=None,
        help="requests per second that may reach the API (default: 20)",
    )
    p.add_argument(
        "--upload-rps",
        type=rate,
        default=None,
        metavar="R",
        help="give storage PUTs a budget of their own (0 = unlimited); by default "
        "they share --rps with the API calls",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
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
        type=positive_int,
        default=None,
        metavar="N",
        help="images per order, at most 100 (default: 100)",
    )
    p.add_argument(
        "--option",
        type=option_value,
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
    add_output_args(p)
    add_state_args(p)
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
        "--budget",
        metavar="URL",
        help="who shares the key's 20 requests/s: redis://HOST:PORT/DB (every machine), "
        "file:[DIR] (every process of this machine), process (this one); default: the "
        "processes that share the ledger's folder (also $STYLDOD_BUDGET_URL, which keeps a "
        "Redis password off the command line)",
    )
    p.add_argument(
        "--lease",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="how long this run's claim on a listing lasts unless renewed (it renews every "
        "third of it): how soon other workers take over after this one dies on another "
        "machine (default: 30)",
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
        type=host_port,
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
        type=seconds,
        default=3600.0,
        metavar="SECONDS",
        help="how long to wait for orders to finish (default: %(default)s)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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
    progress = setup_output(args)
    follow = FollowOptions(
        wait=args.wait,
        listen=args.listen,
        public_url=args.public_url,
        download_dir=args.download,
        timeout_s=args.wait_timeout,
    )
    report = run_async(run_job(settings, source, follow, progress=progress))
    return finish(report, as_json=args.json)


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
