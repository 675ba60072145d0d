"""The one rule for order options, wherever they come from: ``Settings``, ``--option``,
a manifest's cells or a job file's ``[options]`` table.

Known options must have their type (and ``service`` a known value); unknown names pass
through untouched, as the API forwards them; an image field the uploader sets itself cannot
be an option.
"""

from __future__ import annotations

from typing import Any

import orjson

from styldod_batch.contract import OPTION_TYPES, SERVICES

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


def show_value(value: Any) -> str:
    """A value as JSON spells it, for messages."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
