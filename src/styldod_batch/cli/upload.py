"""``styldod-batch upload``: upload, place orders, then follow and download (or plan)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.cli.common import (
    exit_status,
    finish,
    guard_cost,
    option_value,
    settings_from_args,
    setup_output,
)
from styldod_batch.cli.report import add_html_arg, html_after_run
from styldod_batch.download import check_download_folder
from styldod_batch.engine import ManifestSource, Uploader
from styldod_batch.errors import ConfigurationError
from styldod_batch.manifest import stage_manifest
from styldod_batch.metrics import MetricsFile
from styldod_batch.option_registry import SETTINGS, add_flags
from styldod_batch.options import check_option_names
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
            "orders failed (or no image at all), 2 usage or configuration error, 3 "
            "authentication failure, 4 the API, Redis or PostgreSQL could not be reached."
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
        "--job",
        type=Path,
        metavar="FILE",
        help="a TOML job file of house defaults: any setting below (its flag spelled with _), "
        "and [options]; the environment and flags override it",
    )
    # Every setting's flag comes from the one registry (option_registry), with its help.
    # (--html: cli.report adds it, on download too.)
    flags = [s.name for s in SETTINGS if s.flag is not None and s.name != "html"]
    add_flags(p, flags, option_type=option_value)
    add_html_arg(p)
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
        where = f"{args.manifest}: option column"
        check_option_names(sorted(staged.option_names), where, strict=args.strict_options)
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
    guard_cost(settings, source, args.max_images)
    progress = setup_output(args)
    follow = FollowOptions(
        wait=args.wait,
        listen=args.listen,
        public_url=args.public_url,
        download_dir=args.download,
        timeout_s=args.wait_timeout,
    )
    started = time.time()
    metrics = metrics_file(args.metrics_file)
    try:
        report = run_async(run_job(settings, source, follow, progress=progress, metrics=metrics))
    except BaseException:
        if metrics is not None:
            metrics.finish(None, success=False)  # what was done, and the last success kept
        raise
    code = finish(report, as_json=args.json, quiet=args.quiet, log_format=args.log_format)
    if metrics is not None:
        metrics.finish(report if isinstance(report, Report) else report.report, success=code == 0)
    html_after_run(args, settings, report, started)  # --html: the review page
    return code


def metrics_file(path: Path | None) -> MetricsFile | None:
    """``--metrics-file``: its folder must exist before anything is sent."""
    if path is None:
        return None
    if not path.parent.is_dir():
        raise ConfigurationError(f"{path}: no folder {path.parent} for the metrics file")
    return MetricsFile(path)


def load_global_options(
    path: Path | None, api_key: str | None, *, strict: bool = False
) -> dict[str, Any]:
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
    check_option_names(raw, f"{path} (global configuration)", strict=strict)
    return raw


def _dry_run(
    settings: Settings, source: Sequence[str] | ManifestSource, args: argparse.Namespace
) -> int:
    """Print the plan (orders, images, effective options) as it forms; send nothing."""
    global_options = load_global_options(
        args.global_config, settings.api_key, strict=args.strict_options
    )
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
    else:
        print(report.summary())
    code, problem = exit_status(report)
    if problem is not None:
        print(f"styldod-batch: {problem}", file=sys.stderr)
    return code
