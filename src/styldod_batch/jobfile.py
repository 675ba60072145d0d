"""The job file: a team's house defaults for a run, in TOML, below the command line's flags.

Every key is optional; each is the ``Settings`` field of the same name (the flag spelled with
``_``). ``[options]`` holds the house options, sent in each order's ``apply_to_all`` below the
``--option`` flags::

    base_url = "https://orderapi.styldod.com"
    api_version = "2024-09-11"
    rps = 20               # requests per second that may reach the API
    upload_rps = 0         # storage PUTs: 0 unlimited, or a budget of their own
    concurrency = 16
    order_by = "folder"    # or "none": fixed-size groups
    order_size = 100
    webhook_url = "https://hooks.example.com/styldod"

    [options]
    basic_editing = true
    service = "photo_editing"

The API key and secret are refused here: a job file gets shared and committed, so secrets come
from the environment (``STYLDOD_API_KEY`` / ``STYLDOD_API_SECRET``) only.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NoReturn

from styldod_batch.errors import ConfigurationError
from styldod_batch.options import option_problem
from styldod_batch.settings import ENV_API_KEY, ENV_API_SECRET, Settings

_NUMBER = (int, float)
# Key -> (accepted Python types, what the message calls them). bool is rejected separately.
FIELDS: Final[dict[str, tuple[tuple[type, ...], str]]] = {
    "base_url": ((str,), "a string"),
    "api_version": ((str,), "a string"),
    "rps": (_NUMBER, "a number"),
    "upload_rps": (_NUMBER, "a number"),
    "concurrency": ((int,), "an integer"),
    "order_by": ((str,), "a string"),
    "order_size": ((int,), "an integer"),
    "webhook_url": ((str,), "a string"),
    "options": ((dict,), "a table"),
}
_FLOATS = frozenset({"rps", "upload_rps"})
# Spellings of a secret, compared after lower-casing and turning "-" into "_". An option named
# like an API key is refused too: options are sent to the API in every order.
_OPTION_SECRETS = frozenset({"api_key", "apikey", "api_secret", "apisecret"})
_SECRETS = _OPTION_SECRETS | {"key", "secret", "token", "password"}


def load_job_file(path: Path) -> dict[str, Any]:
    """The job file's keyword arguments for ``Settings``, checked; raises ``ConfigurationError``
    naming the file and the key."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror or exc
        raise ConfigurationError(f"{path}: cannot read the job file: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key.lower().replace("-", "_") in _SECRETS:
            _refuse_secret(path, key)
        if key not in FIELDS:
            raise ConfigurationError(f"{path}: unknown key {key!r}{_hint(key)}")
        types, kind = FIELDS[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ConfigurationError(f"{path}: {key} must be {kind}, not {_toml_kind(value)}")
        if key == "options":
            values[key] = _options(path, raw[key])
        elif key in _FLOATS:
            values[key] = float(raw[key])
        else:
            values[key] = raw[key]
    try:
        # The same range checks as the flags get; only the message gains the file's name.
        Settings(**values)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    return values


def merge_settings(job: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The job file's values under the flags': a flag given (not None) wins; options merge
    name by name, the flags' over the job file's."""
    merged = dict(job)
    for key, value in flags.items():
        if value is None:
            continue
        if key == "options":
            merged["options"] = {**job.get("options", {}), **value}
        else:
            merged[key] = value
    return merged


def _options(path: Path, table: dict[str, Any]) -> dict[str, Any]:
    for name, value in table.items():
        if name.lower().replace("-", "_") in _OPTION_SECRETS:
            _refuse_secret(path, f"options.{name}")
        reason = option_problem(name, value)
        if reason is not None:
            raise ConfigurationError(f"{path}: options.{name}: {reason}")
    return dict(table)


def _refuse_secret(path: Path, key: str) -> NoReturn:
    # The value is never shown: it is a secret.
    raise ConfigurationError(
        f"{path}: {key}: an API key or secret does not belong in a job file (it "
        f"gets shared and committed); set {ENV_API_KEY} (and {ENV_API_SECRET}) in the "
        "environment instead"
    )


def _hint(key: str) -> str:
    spelled = key.lower().replace("-", "_")
    if spelled in FIELDS:
        return f" (did you mean {spelled!r}?)"
    return f"; accepted: {', '.join(sorted(FIELDS))}"


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
