"""The job file: a team's house defaults for a run, in TOML, below the environment and the
command line's flags (defaults < job file < environment < flags: a shared job file never
overrides what the user's own environment says, such as ``STYLDOD_BASE_URL``).

Every key is optional; the keys are the settings of ``option_registry`` (every setting a flag
sets: the flag spelled with ``_``, ``--no-journal`` as ``ledger = false``). ``[options]``
holds the house options, sent in each order's ``apply_to_all`` below the ``--option`` flags::

    base_url = "https://orderapi.styldod.com"
    api_version = "2024-09-11"
    rps = 20               # requests per second that may reach the API
    upload_rps = 0         # storage PUTs: 0 unlimited, or a budget of their own
    concurrency = 16
    order_by = "folder"    # or "none": fixed-size groups
    order_size = 100
    webhook_url = "https://hooks.example.com/styldod"
    max_images = 5000      # a cost guard: a larger run stops before sending anything
    wait = true

    [options]
    basic_editing = true
    service = "photo_editing"

The API key and secret are refused here: a job file gets shared and committed, so secrets come
from the environment (``STYLDOD_API_KEY`` / ``STYLDOD_API_SECRET``) only.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from styldod_batch.errors import ConfigurationError
from styldod_batch.option_registry import BY_NAME, Setting, boolean, host_port, job_keys, layered
from styldod_batch.options import check_option_names, coerce_option, option_problem
from styldod_batch.settings import ENV_API_KEY, ENV_API_SECRET, Settings

# Spellings of a secret, compared after lower-casing and turning "-" into "_". An option named
# like an API key is refused too: options are sent to the API in every order.
_OPTION_SECRETS = frozenset({"api_key", "apikey", "api_secret", "apisecret"})
_SECRETS = _OPTION_SECRETS | {"key", "secret", "token", "password"}
_KINDS = {
    "text": "a string",
    "choice": "a string",
    "host_port": "a string",
    "path": "a string",
    "count": "an integer",
    "verbosity": "an integer",
    "rate": "a number",
    "seconds": "a number",
    "bool": "a boolean",
    "options": "a table",
    "bytes_rate": "a number of bytes/s or a string (10M, off)",
}


def load_job_file(path: Path, *, strict_options: bool = False) -> dict[str, Any]:
    """The job file's values (``Settings`` keyword arguments and the runner's own settings,
    see ``option_registry``), checked; raises ``ConfigurationError`` naming the file and the
    key. An unknown option name in ``[options]`` gets a warning (an error when strict, by
    ``strict_options`` or the file's own ``strict_options = true``)."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror or exc
        raise ConfigurationError(f"{path}: cannot read the job file: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    accepted = job_keys()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key.lower().replace("-", "_") in _SECRETS:
            _refuse_secret(path, key)
        if key not in accepted:
            raise ConfigurationError(f"{path}: unknown key {key!r}{_hint(key, accepted)}")
        values[key] = _value(path, BY_NAME[key], value)
    if "options" in values:
        strict = strict_options or bool(values.get("strict_options"))
        check_option_names(values["options"], f"{path}: [options]", strict=strict)
    try:
        # The same range checks as the flags get; only the message gains the file's name.
        Settings(**{k: v for k, v in values.items() if BY_NAME[k].in_settings})
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    return values


def merge_settings(job: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The job file's values under the flags': a flag given (not None) wins; options merge
    name by name, the flags' over the job file's."""
    return layered(job, flags)


def _value(path: Path, setting: Setting, value: Any) -> Any:
    """A TOML value as the setting's type, or a ``ConfigurationError`` naming the key."""
    key, kind = setting.name, setting.kind
    wrong = ConfigurationError(f"{path}: {key} must be {_KINDS[kind]}, not {_toml_kind(value)}")
    if kind == "options":
        if not isinstance(value, dict):
            raise wrong
        return _options(path, value)
    if kind == "bool":
        # Any case, yes/no, 1/0: a boolean written as text is still meant as one.
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int):
            try:
                return boolean(str(value))
            except ValueError:
                raise wrong from None
        raise wrong
    if isinstance(value, bool):
        raise wrong
    if kind == "bytes_rate":
        if not isinstance(value, int | float | str):
            raise wrong
        try:
            return setting.parse(str(value))
        except ValueError as exc:
            raise ConfigurationError(f"{path}: {key}: {exc}") from None
    if kind in ("rate", "seconds"):
        if not isinstance(value, int | float):
            raise wrong
        return float(value)
    if kind in ("count", "verbosity"):
        if not isinstance(value, int):
            raise wrong
        low = 1 if kind == "count" else 0
        if not setting.in_settings and value < low:
            raise ConfigurationError(f"{path}: {key} must be at least {low}, not {value}")
        return value
    if not isinstance(value, str):
        raise wrong
    if kind == "choice" and not setting.in_settings and value not in setting.choices:
        raise ConfigurationError(f"{path}: {key} must be {setting.type_name}, not {value!r}")
    if kind == "path":
        return Path(value)
    if kind == "host_port":
        try:
            return host_port(value)
        except ValueError as exc:
            raise ConfigurationError(f"{path}: {key}: {exc}") from None
    return value


def _options(path: Path, table: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, raw in table.items():
        if name.lower().replace("-", "_") in _OPTION_SECRETS:
            _refuse_secret(path, f"options.{name}")
        value = options[name] = coerce_option(name, raw)
        reason = option_problem(name, value)
        if reason is not None:
            raise ConfigurationError(f"{path}: options.{name}: {reason}")
    return options


def _refuse_secret(path: Path, key: str) -> NoReturn:
    # The value is never shown: it is a secret.
    raise ConfigurationError(
        f"{path}: {key}: an API key or secret does not belong in a job file (it "
        f"gets shared and committed); set {ENV_API_KEY} (and {ENV_API_SECRET}) in the "
        "environment instead"
    )


def _hint(key: str, accepted: list[str]) -> str:
    spelled = key.lower().replace("-", "_")
    close = difflib.get_close_matches(spelled, accepted, n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; accepted: {', '.join(sorted(accepted))}"


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r}"
