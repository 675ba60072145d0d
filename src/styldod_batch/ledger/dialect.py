"""What the ledger's core asks of a database: transactions of plain statements, and what
each of its errors means. ``sqlite.py`` and ``postgres.py`` are the two dialects.

The core writes every statement once, with ``?`` placeholders and a few fields that the
dialect fills in (``Dialect.q``):

* ``{p}``: the tables' prefix (``styldod_`` in PostgreSQL, where the tables share a schema);
* ``{a}``, ``{ao}``, ``{al}``: ``account = '…' AND `` (``o.``, ``l.``: aliased); ``{ac}``,
  ``{av}``: the account column and value of an insert; empty in SQLite (a file per account);
* ``{now}``: the database's clock, in seconds (leases are on the server's clock);
* ``{lock}``: ``FOR UPDATE`` in PostgreSQL; SQLite locks the whole file (``BEGIN IMMEDIATE``);
* ``{true}``, ``{greatest}``: spellings.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import cache
from typing import Any, Protocol, TypeVar

from styldod_batch.errors import LedgerError, LedgerFailure, LedgerFull, LedgerUnavailable
from styldod_batch.ledger.faults import Fault
from styldod_batch.ledger.records import ClaimLost
from styldod_batch.logs import event as log_event

T = TypeVar("T")

# How long a ledger may stay locked or away before the run stops (it sends nothing
# meanwhile); PostgreSQL restarts and a long checkpoint fit well within it.
MAX_WAIT_S = 600.0
MAX_BACKOFF_S = 5.0
_ACCOUNT = re.compile(r"[0-9a-f]{1,64}")


class RowError(LedgerFailure):
    """A row's values could not be stored: the write-behind retries its batch row by row,
    so that this row alone fails; elsewhere it stops the run like any ``LedgerFailure``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Tx(Protocol):
    """One open transaction."""

    async def execute(self, sql: str, *args: Any) -> int: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class Dialect(ABC):
    """A database as the core sees it; see the module docstring for the SQL it fills in."""

    #: Where it is, for messages (never a password).
    location: str = ""
    #: The account whose rows these are, when the database holds several.
    account: str | None = None
    prefix = ""
    now = ""
    lock = ""
    true = "1"
    greatest = "max"
    numbered = False  # placeholders $1, $2... instead of ?
    #: What a waiting user is told the ledger is doing.
    waiting_for = "the ledger"

    def q(self, sql: str) -> str:
        """``sql`` as this database spells it: one whole statement (placeholders are
        numbered from the start of what is given)."""
        return _spell(self._fields(), sql)

    def _fields(self) -> tuple[tuple[str, str], ...]:
        account = self.account
        if account is not None and not _ACCOUNT.fullmatch(account):
            raise ValueError("an account is a hex digest")
        return (
            ("p", self.prefix),
            ("a", f"account = '{account}' AND " if account else ""),
            ("ao", f"o.account = '{account}' AND " if account else ""),
            ("al", f"l.account = '{account}' AND " if account else ""),
            ("ac", "account, " if account else ""),
            ("av", f"'{account}', " if account else ""),
            ("now", self.now),
            ("lock", self.lock),
            ("true", self.true),
            ("greatest", self.greatest),
            ("numbered", "1" if self.numbered else ""),
        )

    @abstractmethod
    def classify(self, exc: BaseException) -> Fault: ...

    @abstractmethod
    async def integrity_problem(self) -> str | None:
        """What an integrity check finds wrong, or None when it finds nothing."""

    @abstractmethod
    def misuse(self, exc: BaseException) -> str:
        """The one line that says what is wrong with how the ledger is set up."""

    @abstractmethod
    async def close(self) -> None: ...

    async def run(
        self, work: Callable[[Tx], Awaitable[T]], *, write: bool = True, what: str = ""
    ) -> T:
        """``work`` in a transaction of its own; retried (bounded) while the database is
        busy or away, with a warning, so whatever waits on it sends nothing meanwhile."""

        return await self.patiently(lambda: self.attempt(work, write=write), what)

    @abstractmethod
    async def attempt(self, work: Callable[[Tx], Awaitable[T]], *, write: bool) -> T:
        """``work`` in one transaction, once; ``write``: the transaction holds the write lock
        from its start (SQLite's ``BEGIN IMMEDIATE``; PostgreSQL locks rows as it goes)."""

    async def patiently(self, attempt: Callable[[], Awaitable[T]], what: str = "") -> T:
        """``attempt()`` until it succeeds, retried while the fault is ``TRANSIENT``, up to
        ``MAX_WAIT_S``; any other fault raises the error the run stops with."""
        started = time.monotonic()
        delay = 0.1
        warned_at = -MAX_BACKOFF_S
        while True:
            try:
                return await attempt()
            except (ClaimLost, LedgerError):
                raise
            except Exception as exc:
                fault = self.classify(exc)
                waited = time.monotonic() - started
                if fault is not Fault.TRANSIENT or waited + delay > MAX_WAIT_S:
                    raise await self.failure(fault, exc, what) from None
                if waited - warned_at >= MAX_BACKOFF_S:  # said at once, then every few s
                    log_event(
                        logging.WARNING,
                        "ledger_waiting",
                        f"{self.waiting_for} at {self.location} is {_reason(exc)}: waiting "
                        f"(up to {MAX_WAIT_S:.0f} s in all; nothing is sent meanwhile)",
                        location=self.location,
                    )
                    warned_at = waited
            await asyncio.sleep(delay)
            delay = min(MAX_BACKOFF_S, delay * 2)

    async def failure(self, fault: Fault, exc: BaseException, what: str = "") -> Exception:
        """The error a run stops with, for ``exc`` classified as ``fault``."""
        where = f"the ledger at {self.location}"
        doing = f" while recording {what}" if what else ""
        if fault is Fault.FULL:
            return LedgerFull(f"{where} is out of space{doing} ({_reason(exc)})")
        if fault is Fault.TRANSIENT:
            return LedgerUnavailable(
                f"{where} stayed {_reason(exc)} for {MAX_WAIT_S:.0f} s{doing}; nothing more "
                "was sent. Run again once it is free: what was sent is asked again with its "
                "own key, never ordered twice"
            )
        if fault is Fault.ROW:
            return RowError(
                f"{where} could not record {what or 'a row'}: {_reason(exc)}", _reason(exc)
            )
        if fault is Fault.MISUSE:
            return LedgerError(self.misuse(exc))
        if fault is Fault.SUSPECT:
            problem = await self._check()
            if problem is not None:
                return LedgerError(
                    f"{where} is corrupt (its integrity check says: {problem}); it was left "
                    "as is. Keep it: it records the orders already placed. Restore it from a "
                    "backup, or pass --state for another place only if it holds no orders"
                )
        return LedgerFailure(f"{where} failed{doing}: {_reason(exc)}")

    async def _check(self) -> str | None:
        try:
            return await self.integrity_problem()
        except Exception as exc:  # a check that cannot even run says enough
            return _reason(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@cache
def _spell(fields: tuple[tuple[str, str], ...], sql: str) -> str:
    values = dict(fields)
    numbered = bool(values.pop("numbered"))
    text = sql.format(**values)
    if numbered:
        counter = iter(range(1, 10**6))
        text = re.sub(r"\?", lambda _m: f"${next(counter)}", text)
    return text
