"""What a database error means for a run, whichever the backend: one classification.

Each dialect maps its own exceptions to a ``Fault``; the core and the write-behind act on the
fault alone:

* ``TRANSIENT``: busy, locked, connection lost, too many connections, a server shutting down.
  Wait (bounded), say so in a warning, and send nothing meanwhile (fail closed).
* ``FULL``: no space left. Stop, naming what was not recorded and what to do.
* ``SUSPECT``: the database says it may be damaged. It is called corrupt only once an
  integrity check agrees; never is the user told to move away a ledger that holds orders.
* ``ROW``: this row's values cannot be stored. Only that row fails.
* ``MISUSE``: the ledger cannot be used as configured (privileges, not a ledger).
* ``OTHER``: anything else, reported as it is, without a traceback.

Values are made storable before they are queued (``storable_*``), so ``ROW`` is a last resort.
"""

from __future__ import annotations

import enum
from typing import Any

# SQLite's INTEGER and PostgreSQL's BIGINT.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# What a message may show of the rows that were not recorded.
SHOWN_ROWS = 10


class Fault(enum.Enum):
    TRANSIENT = "transient"
    FULL = "full"
    SUSPECT = "suspect"
    ROW = "row"
    MISUSE = "misuse"
    OTHER = "other"


def storable_int(value: int) -> int:
    """Clamped to 64 bits: a file dated in the year 2300 has an mtime_ns past int64."""
    return min(INT64_MAX, max(INT64_MIN, int(value)))


def storable_text(value: str | None) -> str | None:
    """Without NUL (PostgreSQL's text refuses it) and lone surrogates (a path that is not
    UTF-8 reaches Python as such; neither backend can encode them)."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\\0")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode(errors="surrogateescape").decode(errors="replace")
    return value


def storable(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return storable_int(value)
    if isinstance(value, str):
        return storable_text(value)
    return value


def storable_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(storable(value) for value in row)


def not_recorded(what: list[str]) -> str:
    """``what`` named for a message: orders first (they cost money), the first few, and how
    many more."""
    what = sorted(what, key=lambda text: not text.startswith("order "))
    shown = "; ".join(what[:SHOWN_ROWS])
    more = len(what) - SHOWN_ROWS
    return shown + (f"; and {more} more" if more > 0 else "")
