"""The value parsers of settings: text (a flag, a variable, a job file's string) -> value.

Each raises ``ValueError`` with a reason; ``KINDS`` maps a setting's kind to its parser and to
what the README and messages call it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from styldod_batch.budget import parse_bytes_rate

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def boolean(text: str) -> bool:
    """``true``/``false`` in any case, ``yes``/``no``, ``on``/``off``, ``1``/``0``:
    spreadsheets export ``TRUE``."""
    folded = text.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, yes/no, 1/0)")


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def seconds(text: str) -> float:
    value = rate(text)
    if value == 0:
        raise ValueError("must be more than 0 seconds")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise ValueError("must be at least 1")
    return value


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def text(value: str) -> str:
    return value


# kind -> (parser, what the README and messages call it)
KINDS: Final[dict[str, tuple[Callable[[str], Any], str]]] = {
    "text": (text, "string"),
    "bool": (boolean, "boolean"),
    "count": (positive_int, "integer ≥ 1"),
    "rate": (rate, "number ≥ 0"),
    "seconds": (seconds, "seconds > 0"),
    "choice": (text, "one of"),
    "host_port": (host_port, "HOST:PORT"),
    "path": (Path, "path"),
    "options": (text, "table of options"),
    "verbosity": (non_negative_int, "integer ≥ 0"),
    "bytes_rate": (parse_bytes_rate, "bytes/s (500K, 10M, 1G; K = 1024) or off"),
}
