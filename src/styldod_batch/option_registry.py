"""Every setting of a run, described once: its name, type, default, environment variable,
flag, job-file key and help.

The runner's flags, the job file's keys, the environment's variables and the README's table
are made from this list, and a test checks ``Settings`` against it, so the four cannot drift.
A setting's name is its ``Settings`` field (or, for what only the runner does, its argument)
and its job-file key. The precedence, for every setting: defaults < job file < environment
< flags (a shared job file must never override what the user's own environment says).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from styldod_batch.budget import WINDOW_MARGIN_S
from styldod_batch.errors import ConfigurationError
from styldod_batch.option_values import (
    KINDS,
    boolean,
    host_port,
    non_negative_int,
    positive_int,
    rate,
    seconds,
    text,
)

DEFAULT_BASE_URL: Final = "https://orderapi.styldod.com"
ENV_PREFIX: Final = "STYLDOD_"

# What other modules import from here; the value parsers live in ``option_values``.
__all__ = [
    "BY_NAME",
    "DEFAULT_BASE_URL",
    "ENV_PREFIX",
    "KINDS",
    "NOT_SETTINGS",
    "README_BEGIN",
    "README_END",
    "SETTINGS",
    "Setting",
    "add_flags",
    "boolean",
    "from_environ",
    "host_port",
    "job_keys",
    "layered",
    "non_negative_int",
    "positive_int",
    "rate",
    "readme_table",
    "seconds",
    "text",
]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting. ``flag`` None: no flag (tuning, set in a job file, the environment or
    ``Settings``). ``flag_sets``: for a flag that takes no value, what it sets (``--no-journal``
    sets ``ledger`` to False). ``env`` "": no variable. ``in_settings`` False: the runner's
    own (following, output), not a ``Settings`` field."""

    name: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    flag_sets: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    env: str | None = None
    job: bool = True
    in_settings: bool = True

    @property
    def variable(self) -> str | None:
        """Its environment variable: ``STYLDOD_<NAME>`` unless it says otherwise."""
        if self.env is not None:
            return self.env or None
        return ENV_PREFIX + self.name.upper() if self.in_settings else None

    @property
    def type_name(self) -> str:
        if self.kind == "choice":
            return " or ".join(repr(c) for c in self.choices)
        return KINDS[self.kind][1]

    def parse(self, raw: str) -> Any:
        """A value from text (a variable's, a flag's); raises ``ValueError`` with a reason."""
        if self.kind == "choice":
            if raw not in self.choices:
                raise ValueError(f"{raw!r} is not {self.type_name}")
            return raw
        return KINDS[self.kind][0](raw)


def _s(name: str, kind: str, default: Any, help: str, **more: Any) -> Setting:
    return Setting(name, kind, default, help, **more)


def _run(name: str, kind: str, default: Any, help: str, **more: Any) -> Setting:
    return Setting(name, kind, default, help, in_settings=False, env="", **more)


# One row per setting: name, kind, default, help, then where it comes from. A table, so kept
# as one (the formatter would spread each row over ten lines).
# fmt: off
SETTINGS: Final[tuple[Setting, ...]] = (
    # -- the account
    _s("base_url", "text", DEFAULT_BASE_URL, "the Order API", flag="--base-url", metavar="URL"),
    _s("api_key", "text", None, "the API key; prefer the variable, command lines are visible "
       "to other users", flag="--api-key", metavar="KEY", job=False),
    _s("api_secret", "text", None, "authenticate with HTTP Basic, key and this secret",
       flag="--api-secret", metavar="SECRET", job=False),
    _s("api_version", "text", None, "send this dated API version in the version header",
       flag="--api-version", metavar="DATE"),
    # -- the pace
    _s("rps", "rate", 20.0, "requests per second that may reach the API", flag="--rps",
       metavar="R"),
    _s("upload_rps", "rate", None, "cap storage PUTs at R requests/s (0 = no cap); by "
       "default none: the API does not count PUTs, so concurrency and storage's own SlowDown "
       "pace them", flag="--upload-rps", metavar="R"),
    _s("download_rps", "rate", None, "cap output downloads at R requests/s (0 = no cap); by "
       "default none", flag="--download-rps", metavar="R"),
    _s("share_api_budget", "bool", False, "the old pace: PUTs and downloads (without "
       "--upload-rps/--download-rps) take the API's --rps budget with the API calls",
       flag="--share-api-budget", flag_sets=True),
    _s("bwlimit", "bytes_rate", None, "cap the bandwidth of every PUT (and download) together, "
       "in bytes/s: 500K, 10M, 1G (K = 1024), or off", flag="--bwlimit", metavar="RATE"),
    _s("concurrency", "count", 16, "uploads in flight at once", flag="--concurrency",
       metavar="N"),
    _s("budget", "text", None, "who shares the key's 20 requests/s: redis://HOST:PORT/DB "
       "(every machine), file:[DIR] (every process of this machine), process (this one); "
       "default: the processes that share the ledger's folder (the variable keeps a Redis "
       "password off the command line)", flag="--budget", metavar="URL",
       env="STYLDOD_BUDGET_URL"),
    _s("window_margin_s", "rate", WINDOW_MARGIN_S, "safety margin added to each 1 s window"),
    # -- the orders
    _s("order_by", "choice", "folder", "one order per folder, or fixed-size groups (none)",
       flag="--order-by", choices=("folder", "none")),
    _s("order_size", "count", 100, "images per order, at most 100", flag="--order-size",
       metavar="N"),
    _s("order_name", "text", "", "a template for order names: {listing}, {n} (batch), {part}, "
       "{date} (the run's day), {job}; e.g. '{date}-{listing}'. Default: the listing's label",
       flag="--order-name", metavar="TEMPLATE"),
    _s("job_name", "text", "", "the job's name, {job} in --order-name (default: the --job "
       "file's name, else styldod-batch)", flag="--job-name", metavar="NAME"),
    _s("options", "options", {}, "an order-level option (apply_to_all), e.g. "
       "basic_editing=true; repeatable (a job file's [options] table is below the flags')",
       flag="--option", metavar="K=V", env=""),
    _s("webhook_url", "text", None, "where the service sends order events",
       flag="--webhook-url", metavar="URL"),
    _s("dry_run", "bool", False, "scan and group, print the plan, send nothing",
       flag="--dry-run", flag_sets=True),
    # -- the ledger
    _s("state", "text", None, "where the account's ledger lives: a folder (one ledger per "
       "account inside), a file, or postgresql://... (default: $XDG_STATE_HOME/"
       "styldod-batch/); --journal is another name for it", flag="--state",
       aliases=("--journal",), metavar="PATH", env="STYLDOD_STATE"),
    _s("ledger", "bool", True, "keep the account's ledger; --no-journal keeps none and gives "
       "up exactly-once (a re-run uploads and orders everything again)", flag="--no-journal",
       aliases=("--no-ledger",), flag_sets=False),
    _s("force_state", "bool", False, "use a ledger file written for another base URL or key",
       flag="--force", flag_sets=True),
    _s("separate_ledger", "bool", False, "start this account's ledger although another ledger "
       "of the same key holds orders (another base URL's, or the local one beside a shared "
       "ledger): only when it is another account indeed", flag="--separate-ledger",
       flag_sets=True),
    _s("lease_s", "seconds", 30.0, "how long this run's claim on a listing lasts unless "
       "renewed (it renews every third of it): how soon other workers take over after this "
       "one dies on another machine", flag="--lease", metavar="SECONDS"),
    _s("follow_ups", "bool", True, "order new images of a listing ordered before in a "
       "follow-up order '<listing> (2)'; --no-follow-up reports them as late instead",
       flag="--no-follow-up", flag_sets=False),
    _s("reorder_changed", "bool", False, "order again an image whose content changed after "
       "it was ordered (by default it is reported, never silently ordered again)",
       flag="--reorder-changed", flag_sets=True),
    _s("reorder_moved", "bool", False, "order an image whose very content a live order of the "
       "account holds under another path (a moved or copied folder); by default it is "
       "reported as moved, never silently ordered again", flag="--reorder-moved",
       flag_sets=True),
    _s("check_content", "bool", True, "read each image's head and tail before it is ordered: "
       "a file that is not the image type its name says (an HTML page saved as .jpg), or a "
       "JPEG or PNG cut off, fails alone; --no-check-content skips it",
       flag="--no-check-content", flag_sets=False),
    _s("follow_symlinks", "bool", False, "follow links that lead outside the input folders "
       "(by default they are skipped and named)", flag="--follow-symlinks", flag_sets=True),
    _s("allow_private_outputs", "bool", False, "download outputs from link-local, private, "
       "loopback or unspecified addresses too (by default only https to public addresses, "
       "plus loopback when the API is on loopback)", flag="--allow-private-outputs",
       flag_sets=True),
    # -- tuning (no flag)
    _s("small_file_bytes", "count", 1024 * 1024, "files up to this size are read in one step "
       "and sent with Content-MD5"),
    _s("inline_read_bytes", "count", 256 * 1024, "files up to this size are read on the event "
       "loop"),
    _s("stream_chunk_bytes", "count", 256 * 1024, "read size of a streamed file"),
    _s("api_timeout_s", "seconds", 60.0, "one API request's timeout"),
    _s("storage_idle_timeout_s", "seconds", 120.0, "a PUT fails when no byte moves this long"),
    _s("presign_lookahead", "count", 100, "upload URLs are fetched at most this many files "
       "ahead"),
    _s("stop_grace_s", "rate", 30.0, "after a stop, in-flight requests get this long"),
    _s("poll_interval_s", "seconds", 2.0, "following by polling: each order at most this "
       "often"),
    # -- the runner's own
    _run("max_images", "count", None, "a cost guard: a run that would order more than N "
         "images stops before it sends anything, and prints the plan's count",
         flag="--max-images", metavar="N"),
    _run("strict_options", "bool", False, "an unknown order option name (job file, manifest, "
         "global configuration, --option) is an error, not a warning",
         flag="--strict-options", flag_sets=True),
    _run("skip_invalid", "bool", False, "upload the valid rows of a manifest with problems "
         "(they are reported, and fail)", flag="--skip-invalid", flag_sets=True),
    _run("global_config", "path", None, "the key's server-side defaults (JSON options, or the "
         "sandbox's global config), so that --dry-run shows each image's effective options",
         flag="--global-config", metavar="FILE"),
    _run("wait", "bool", False, "poll every order until it is completed or error (polls never "
         "crowd uploads out of the rate budget)", flag="--wait", flag_sets=True),
    _run("listen", "host_port", None, "receive the orders' webhook events here (a secret "
         "token in the path) and wait for the final ones", flag="--listen",
         metavar="HOST:PORT"),
    _run("public_url", "text", None, "the address the service reaches --listen at (default: "
         "http://LISTEN)", flag="--public-url", metavar="URL"),
    _run("download", "path", None, "fetch each completed image's output into "
         "DIR/<order>/<image id>", flag="--download", metavar="DIR"),
    _run("html", "path", None, "at the end, write the review page (originals beside edited "
         "outputs, a picture of the run) to PATH", flag="--html", metavar="PATH"),
    _run("metrics_file", "path", None, "write the run's counters to PATH in the Prometheus "
         "text format (node_exporter's textfile collector), atomically, every few seconds "
         "and at the end", flag="--metrics-file", metavar="PATH"),
    _run("wait_timeout", "seconds", 3600.0, "how long to wait for orders to finish",
         flag="--wait-timeout", metavar="SECONDS"),
    _run("json", "bool", False, "print one JSON object on stdout instead of the summary (on "
         "every failure too)", flag="--json", flag_sets=True),
    _run("no_progress", "bool", False, "no progress line", flag="--no-progress",
         flag_sets=True),
    _run("verbose", "verbosity", 0, "say more on stderr: each order, retry and 429 (-vv: "
         "every file too)", flag="--verbose", aliases=("-v",)),
    _run("quiet", "bool", False, "say only what went wrong; no progress, and no summary "
         "when everything succeeded", flag="--quiet", aliases=("-q",), flag_sets=True),
    _run("log_format", "choice", "text", "text lines, or one JSON object per line (level, "
         "event, time, ...) on stderr", flag="--log-format", choices=("text", "json")),
)
# fmt: on

BY_NAME: Final[dict[str, Setting]] = {s.name: s for s in SETTINGS}
# What the upload command takes that is not a setting: its inputs and the job file itself.
NOT_SETTINGS: Final = frozenset({"paths", "manifest", "job", "help"})


def job_keys() -> list[str]:
    return [s.name for s in SETTINGS if s.job]


# -- flags ------------------------------------------------------------------------------------


def _arg_type(setting: Setting) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return setting.parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.kind  # argparse names the type in some messages
    return parse


def add_flags(
    parser: argparse.ArgumentParser,
    names: Iterator[str] | list[str] | tuple[str, ...],
    *,
    option_type: Callable[[str], Any] | None = None,
) -> None:
    """Add the flags of these settings. Every default is None (a flag not given), so that the
    job file and the environment can tell "not given" from "given as the default".
    ``option_type`` parses ``--option K=V``."""
    for name in names:
        setting = BY_NAME[name]
        assert setting.flag is not None, name
        short = [a for a in setting.aliases if not a.startswith("--")]
        spellings = [*short, setting.flag, *(a for a in setting.aliases if a not in short)]
        shown = setting.flag_sets is None and setting.default not in (None, {}, 0)
        default = f" (default: {setting.default})" if shown else ""
        variable = f" (also ${setting.variable})" if setting.variable else ""
        help_text = (setting.help + default + variable).replace("%", "%%")
        if setting.kind == "options":
            parser.add_argument(
                *spellings,
                dest=name,
                type=option_type or str,
                action="append",
                default=None,
                metavar=setting.metavar,
                help=help_text,
            )
        elif setting.kind == "verbosity":
            parser.add_argument(*spellings, dest=name, action="count", default=None, help=help_text)
        elif setting.flag_sets is not None:
            parser.add_argument(
                *spellings,
                dest=name,
                action="store_const",
                const=setting.flag_sets,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                *spellings,
                dest=name,
                type=_arg_type(setting),
                choices=setting.choices or None,
                default=None,
                metavar=setting.metavar,
                help=help_text,
            )


# -- resolution: defaults < job file < environment < flags ------------------------------------


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets (an empty variable sets nothing); a value that does
    not parse is a ``ConfigurationError`` naming the variable."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        variable = setting.variable
        if variable is None or not environ.get(variable):
            continue
        try:
            values[setting.name] = setting.parse(environ[variable])
        except ValueError as exc:
            raise ConfigurationError(f"${variable}: {exc}") from None
    return values


def layered(*levels: Mapping[str, Any]) -> dict[str, Any]:
    """Levels merged, lowest first: a value that is not None wins over the levels below;
    ``options`` merge name by name."""
    merged: dict[str, Any] = {}
    for level in levels:
        for name, value in level.items():
            if value is None:
                continue
            if name == "options":
                merged["options"] = {**merged.get("options", {}), **value}
            else:
                merged[name] = value
    return merged


# -- the README's table -----------------------------------------------------------------------

README_BEGIN: Final = "<!-- options: generated by python -m styldod_batch.option_registry -->"
README_END: Final = "<!-- options: end -->"


def readme_table() -> str:
    """The README's table of settings, and of the order options the tool knows."""
    from styldod_batch.contract import OPTION_TYPES, SERVICES

    rows = [
        "| setting (job-file key) | type | default | flag | environment |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        flag = ", ".join(f"`{f}`" for f in (s.flag, *s.aliases) if f) or "-"
        key = f"`{s.name}`" if s.job else f"(not in a job file) `{s.name}`"
        variable = f"`{s.variable}`" if s.variable else "-"
        default = "-" if s.default in (None, {}) else f"`{s.default}`"
        rows.append(f"| {key} | {s.type_name} | {default} | {flag} | {variable} |")
    rows += ["", "| order option | type |", "|---|---|"]
    names = {bool: "boolean", str: "string", int: "integer", float: "number"}
    for name, kind in OPTION_TYPES.items():
        shown = names.get(kind, kind.__name__)
        if name == "service":
            shown += ": " + ", ".join(f"`{v}`" for v in sorted(SERVICES))
        rows.append(f"| `{name}` | {shown} |")
    return "\n".join([README_BEGIN, *rows, README_END])


if __name__ == "__main__":
    print(readme_table())
