"""The one rule for order options, wherever they come from: ``Settings``, ``--option``,
a manifest's cells or a job file's ``[options]`` table.

Known options must have their type (and ``service`` a known value); a boolean may be
spelled as text in any case (``TRUE``, ``no``, ``1``: spreadsheets export ``TRUE``); unknown
names pass through, as the API forwards them, with a warning naming the nearest known one
(an error when strict); an image field the uploader sets itself cannot be an option.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from typing import Any

import orjson

from styldod_batch import logs
from styldod_batch.contract import OPTION_TYPES, SERVICES
from styldod_batch.errors import ConfigurationError
from styldod_batch.option_registry import boolean

# Image fields the uploader itself sets: an option of that name would clash in the payload.
IMAGE_FIELDS = frozenset({"client_image_id", "image_urls", "sequence"})
_TYPE_NAMES = {bool: "boolean (true or false)", str: "string", int: "integer", float: "number"}


def option_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be option ``name`` (the API's own checks), or None when it can.

    The message leaves the name out: callers say where the option was.
    """
    if name in IMAGE_FIELDS:
        return "set by the uploader itself: it cannot be an option"
    expected = OPTION_TYPES.get(name)
    if expected is None or value is None:
        return None
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        kind = _TYPE_NAMES.get(expected, expected.__name__)
        return f"must be a {kind}, not {show_value(value)}"
    if name == "service" and value not in SERVICES:
        return f"unknown service {value!r} (one of {', '.join(sorted(SERVICES))})"
    return None


def coerce_option(name: str, value: Any) -> Any:
    """A known boolean option's text (``"TRUE"``, ``"no"``) or 0/1 as a boolean; anything
    else as it is (``option_problem`` then says what is wrong)."""
    spelled = isinstance(value, str) or (isinstance(value, int) and value in (0, 1))
    if OPTION_TYPES.get(name) is bool and spelled and not isinstance(value, bool):
        try:
            return boolean(str(value))
        except ValueError:
            return value
    return value


def unknown_option(name: str) -> str | None:
    """Why ``name`` may be a mistake (not an option the tool knows), or None."""
    if name in OPTION_TYPES or name in IMAGE_FIELDS:
        return None
    close = difflib.get_close_matches(name, list(OPTION_TYPES), n=1, cutoff=0.6)
    known = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(OPTION_TYPES)
    return f"unknown option {name!r} ({known}); it is sent to the API as it is"


def check_option_names(names: Iterable[str], where: str, *, strict: bool) -> None:
    """A warning for each unknown option name (``where`` says where it was); with
    ``strict``, a ``ConfigurationError`` instead."""
    for name in names:
        problem = unknown_option(name)
        if problem is None:
            continue
        if strict:
            raise ConfigurationError(f"{where}: {problem} (--strict-options)")
        logs.event(logging.WARNING, "unknown_option", f"{where}: {problem}", option=name)


def show_value(value: Any) -> str:
    """A value as JSON spells it, for messages."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
