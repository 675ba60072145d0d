"""One ``Settings`` object for a run: defaults < environment < explicit arguments.

Each field is described once in ``option_registry`` (type, default, variable, flag, job-file
key, help); a test checks that the fields and their defaults agree with it."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from styldod_batch.budget import WINDOW_MARGIN_S
from styldod_batch.contract import DEFAULT_CONTRACT, Contract
from styldod_batch.errors import ConfigurationError
from styldod_batch.identity import canonical_base_url
from styldod_batch.option_registry import DEFAULT_BASE_URL, from_environ, layered
from styldod_batch.options import option_problem
from styldod_batch.orders import template_fields

ENV_API_KEY = "STYLDOD_API_KEY"
ENV_API_SECRET = "STYLDOD_API_SECRET"  # noqa: S105 (the variable's name, not a secret)

OrderBy = Literal["folder", "none"]
# Uploads in flight at once: beyond this, more workers only cost memory (each holds a buffer).
MAX_CONCURRENCY = 512


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds for retrying one request: attempts, overall time, and the backoff curve.

    Waits grow as ``base_s * 2**attempt`` up to ``cap_s``, with full jitter. A wait the
    server asks for (``Retry-After``) replaces the backoff, capped at ``max_server_wait_s``
    (botocore caps at 20 s too): a hostile or broken server cannot park the run. A 429
    pauses the rate budget instead (every request waits, not just the one refused), for its
    capped ``Retry-After`` or, without a usable one, ``rate_limited_wait_s``. Every wait,
    the budget's pause included, counts against ``max_elapsed_s``: a retry that could not
    start within it is not made.

    One storage PUT attempt has a deadline of ``put_deadline_base_s`` plus its body size
    at ``put_min_bytes_per_s`` (64 KiB: 64 s; 64 MiB: about 70 min), on top of the idle
    timeout (``Settings.storage_idle_timeout_s``), so a server that trickles its answer or
    never reads the body cannot hold an upload forever.
    """

    max_attempts: int = 8
    max_elapsed_s: float = 300.0
    base_s: float = 0.1
    cap_s: float = 5.0
    max_server_wait_s: float = 20.0
    rate_limited_wait_s: float = 1.0
    put_deadline_base_s: float = 60.0
    put_min_bytes_per_s: float = 16 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs. The API key and secret never appear in ``repr``."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    # With a secret, requests authenticate with HTTP Basic (key as user, secret as password).
    api_secret: str | None = field(default=None, repr=False)
    # Dated API version sent in ``contract.version_header``; nothing is sent when None.
    api_version: str | None = None
    contract: Contract = DEFAULT_CONTRACT
    # Requests per second that may arrive at the API, in any sliding one-second window.
    rps: float = 20.0
    # Storage PUTs (and output downloads): None or 0, no cap (the API does not count them;
    # storage's own 429/SlowDown pauses them). R: a budget of their own.
    upload_rps: float | None = None
    download_rps: float | None = None
    # The old pace: PUTs and downloads without a cap of their own (``upload_rps``,
    # ``download_rps``) take the API's budget with the API calls.
    share_api_budget: bool = False
    # Bytes per second across every PUT and download together (``--bwlimit``); None: no cap.
    bwlimit: int | None = None
    # Safety margin added to the one-second window, for delivery jitter on the way.
    window_margin_s: float = WINDOW_MARGIN_S
    concurrency: int = 16
    order_by: OrderBy = "folder"
    order_size: int = 100
    # A template for order names (``orders.OrderNamer``); "" names them by listing label.
    order_name: str = ""
    job_name: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    dry_run: bool = False
    retry: RetryPolicy = RetryPolicy()
    # Files up to this size are read in one step and sent with Content-MD5; larger ones stream.
    small_file_bytes: int = 1024 * 1024
    # Files up to this size are read on the event loop: cheaper than a thread hop.
    inline_read_bytes: int = 256 * 1024
    stream_chunk_bytes: int = 256 * 1024
    api_timeout_s: float = 60.0
    # A PUT fails when no byte moves for this long (large files have no overall deadline).
    storage_idle_timeout_s: float = 120.0
    # Pre-signed URLs are fetched at most this many files ahead of the uploads.
    presign_lookahead: int = 100
    # Where the account's ledger lives (exactly-once orders, resumable runs): a folder (one
    # ledger per account inside) or a file; None: $XDG_STATE_HOME/styldod-batch/.
    state: str | os.PathLike[str] | None = None
    # False: keep no ledger. A re-run then uploads and orders everything again.
    ledger: bool = True
    # Use a ledger file written for another account anyway.
    force_state: bool = False
    # Start this account's ledger although another ledger of its key holds orders (another
    # base URL's, or the local one beside a shared ledger): see ledger/siblings.py.
    separate_ledger: bool = False
    # How long a run's claim on a listing lasts unless renewed (it renews every third of it).
    lease_s: float = 30.0
    # New images of a listing that was ordered before go into a follow-up order
    # ("<listing> (2)"); False: they are reported as late and not ordered.
    follow_ups: bool = True
    # Order again an image whose content changed after it was ordered (else: reported).
    reorder_changed: bool = False
    # Order an image even when its very content is in a live order under another path.
    reorder_moved: bool = False
    # Follow links that lead outside the input folders (else they are skipped, and named).
    follow_symlinks: bool = False
    # Read each image's head and tail first: a file that is not the image its name says, or
    # a JPEG or PNG cut off, fails alone before its listing is ordered (content.py).
    check_content: bool = True
    # Fetch outputs from link-local, private, loopback or unspecified addresses too (by
    # default: https to public addresses only, plus loopback when the API is on loopback).
    allow_private_outputs: bool = False
    # Who shares the key's rate budget: "process" (this one), "file:[DIR]" (every process of
    # this machine), "redis://HOST:PORT/DB" (every machine); None: the processes that share
    # the ledger folder. May hold a Redis password: never shown.
    budget: str | None = field(default=None, repr=False)
    # After a stop is requested, in-flight requests get this long to finish.
    stop_grace_s: float = 30.0
    # Following orders by polling: each order is asked about at most this often.
    poll_interval_s: float = 2.0

    def __post_init__(self) -> None:
        validate(self)
        # One spelling per service (RFC 3986): HTTPS://Host:443/v2/./ and https://host/v2
        # are one account, one ledger (identity.canonical_base_url).
        object.__setattr__(self, "base_url", canonical_base_url(self.base_url))

    @property
    def api_origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings as the runner reads them: the ``STYLDOD_*`` variables (``os.environ``, or
        ``environ``; one per setting, see ``option_registry``) over the defaults, then
        ``overrides`` (None values are ignored; options merge name by name). A variable
        that does not parse raises ``ConfigurationError`` naming it."""
        return from_environment(environ, **overrides)


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate(settings: Settings) -> None:
    parts = urlsplit(settings.base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"base URL {settings.base_url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigurationError(
            f"base URL {settings.base_url!r} uses plain http://; the API is HTTPS only "
            "(plain http is accepted for loopback hosts alone)"
        )
    _check_number("rps", settings.rps, positive=True)
    for name in ("upload_rps", "download_rps"):
        cap = getattr(settings, name)
        if cap is not None:
            _check_number(name, cap, positive=False)
    if settings.bwlimit is not None and not (
        isinstance(settings.bwlimit, int) and settings.bwlimit >= 1
    ):
        raise ConfigurationError(f"bwlimit must be at least 1 byte/s, not {settings.bwlimit!r}")
    if not 1 <= settings.concurrency <= MAX_CONCURRENCY:
        raise ConfigurationError(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {settings.concurrency}"
        )
    for name in (
        "api_timeout_s",
        "storage_idle_timeout_s",
        "lease_s",
        "window_margin_s",
        "poll_interval_s",
    ):
        _check_number(name, getattr(settings, name), positive=name != "window_margin_s")
    _check_number("stop_grace_s", settings.stop_grace_s, positive=False)
    limit = settings.contract.max_images_per_order
    if not 1 <= settings.order_size <= limit:
        raise ConfigurationError(
            f"order_size must be between 1 and {limit}, not {settings.order_size}"
        )
    if settings.order_name:
        try:
            template_fields(settings.order_name)
        except ValueError as exc:
            raise ConfigurationError(f"order_name: {exc}") from None
    if settings.order_by not in ("folder", "none"):
        raise ConfigurationError(f"order_by must be 'folder' or 'none', not {settings.order_by!r}")
    if settings.webhook_url is not None:
        hook = urlsplit(settings.webhook_url)
        if hook.scheme not in ("http", "https") or not hook.hostname:
            raise ConfigurationError(f"webhook URL {settings.webhook_url!r} is not an http(s) URL")
    if settings.budget is not None and not (
        settings.budget == "process"
        or settings.budget.startswith(("file:", "redis://", "rediss://", "unix://"))
    ):
        raise ConfigurationError(
            "budget must be 'process', 'file:[DIR]' or a redis:// URL, not "
            f"{settings.budget.split('://')[0]!r}..."
        )
    for name, value in settings.options.items():
        problem = option_problem(name, value)
        if problem is not None:
            raise ConfigurationError(f"option {name} {problem}")
    if settings.api_secret is not None and not settings.api_key:
        raise ConfigurationError("an API secret was given without an API key")


def _check_number(name: str, value: float, *, positive: bool) -> None:
    """A finite number, positive (or, with ``positive`` False, at least 0)."""
    ok = (
        isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        kind = "a positive" if positive else "0 or a positive"
        raise ConfigurationError(f"{name} must be {kind} finite number, not {value}")


def from_environment(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the ``STYLDOD_*`` variables (one per setting, see ``option_registry``),
    then ``overrides`` (None values are ignored; options merge name by name)."""
    env = os.environ if environ is None else environ
    return Settings(**layered(from_environ(env), overrides))
