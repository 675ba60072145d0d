"""The embedded ledger: one SQLite file (WAL) per account, shared by any number of processes.

Each transaction runs whole on one thread per open ledger (one hop), so a process waiting for
another one's write lock never blocks the event loop; a transaction that writes takes the lock
at its start
(``BEGIN IMMEDIATE``), SQLite's counterpart of PostgreSQL's ``FOR UPDATE``. A lock held by
another process is waited for in slices of ``BUSY_SLICE_S``, with a warning, up to the core's
bound. The file is opened by its path, never as a URI, except read-only: then its URI is
quoted, so a path with ``#``, ``?`` or ``%`` is the same file either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from styldod_batch.errors import LedgerError
from styldod_batch.ledger.core import SQLLedger
from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.faults import Fault
from styldod_batch.ledger.location import key_fingerprint, make_private_file, make_private_folder
from styldod_batch.ledger.schema import SQLITE_SCHEMA, SQLITE_SCHEMA_VERSION

T = TypeVar("T")

# How long one statement waits for another process's lock before the core says so and
# waits again (the core bounds the whole wait).
BUSY_SLICE_S = 2.0
# Less free space than this, and an I/O error is taken for a full disk.
LOW_SPACE_BYTES = 256 * 1024

_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED")
_SUSPECT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_MISUSE = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")
_ROW = ("SQLITE_TOOBIG", "SQLITE_MISMATCH", "SQLITE_CONSTRAINT", "SQLITE_RANGE")


class SQLiteDialect(Dialect):
    waiting_for = "the ledger file"

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.location = str(path)
        self.read_only = read_only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="styldod-ledger")
        self._lock = asyncio.Lock()
        self._connection: sqlite3.Connection | None = None
        # SQLite's clock is this machine's: in seconds, as PostgreSQL's epoch is.
        self.now = "((julianday('now') - 2440587.5) * 86400.0)"

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    async def connect(self) -> None:
        self._connection = await self._call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            target, uri = self.path.absolute().as_uri() + "?mode=ro", True
        else:
            make_private_folder(self.path.parent)
            make_private_file(self.path)
            target, uri = str(self.path), False
        connection = sqlite3.connect(
            target, uri=uri, isolation_level=None, check_same_thread=False, timeout=BUSY_SLICE_S
        )
        if not self.read_only:
            # Two processes may switch a new file to WAL at once: the loser waits its turn.
            for attempt in range(50):
                try:
                    connection.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 49:
                        connection.close()
                        raise
                    time.sleep(0.1)
            # With WAL, NORMAL loses nothing a process crash can take; only an OS crash could.
            connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    async def attempt(self, work: Callable[[Tx], Awaitable[T]], *, write: bool) -> T:
        """The whole transaction in one hop to the ledger's thread: its statements never
        wait for anything but SQLite, so ``work`` runs there to its end without suspending
        (a hop per statement would cost the pipeline a thread switch each)."""
        async with self._lock:
            connection = self._connection
            if connection is None:
                raise LedgerError(f"{self.location}: the ledger is closed")
            begin = "BEGIN IMMEDIATE" if write and not self.read_only else "BEGIN"
            return await self._call(_in_transaction, connection, begin, work)

    def classify(self, exc: BaseException) -> Fault:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if isinstance(exc, sqlite3.Error) and name:
            for names, fault in (
                (_TRANSIENT, Fault.TRANSIENT),
                (("SQLITE_FULL",), Fault.FULL),
                (_SUSPECT, Fault.SUSPECT),
                (_MISUSE, Fault.MISUSE),
                (_ROW, Fault.ROW),
            ):
                if name.startswith(names):
                    return fault
            if name.startswith("SQLITE_IOERR") and self._no_space_left():
                return Fault.FULL  # SQLite names ENOSPC on its -shm and -wal files an I/O error
            return Fault.OTHER
        if isinstance(exc, OverflowError | UnicodeError | sqlite3.InterfaceError):
            return Fault.ROW  # a value SQLite cannot bind
        if isinstance(exc, sqlite3.ProgrammingError) and "binding" in str(exc):
            return Fault.ROW
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return Fault.FULL
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return Fault.MISUSE
        if isinstance(exc, sqlite3.DatabaseError):
            text = str(exc)
            if "database or disk is full" in text:
                return Fault.FULL
            if "locked" in text or "busy" in text:
                return Fault.TRANSIENT
            if "not a database" in text or "malformed" in text:
                return Fault.SUSPECT
        return Fault.OTHER

    def _no_space_left(self) -> bool:
        try:
            found = os.statvfs(self.path.parent)
        except OSError:
            return False
        return found.f_bavail * found.f_frsize < LOW_SPACE_BYTES

    def misuse(self, exc: BaseException) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"{self.location}: cannot use the ledger: {reason}"

    async def integrity_problem(self) -> str | None:
        def check() -> str | None:
            uri = self.path.absolute().as_uri() + "?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_SLICE_S)) as c:
                rows = [str(row[0]) for row in c.execute("PRAGMA quick_check(5)")]
            return None if rows == ["ok"] else "; ".join(rows)

        # Not on the ledger's thread: the check must not wait behind a broken statement.
        return await asyncio.to_thread(check)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await self._call(connection.close)
        self._executor.shutdown(wait=False)


class _DirectTx:
    """Statements run at once, on the ledger's thread (see ``SQLiteDialect.attempt``)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.c = connection

    async def execute(self, sql: str, *args: Any) -> int:
        return self.c.execute(sql, args).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.c.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.c.execute(sql, args).fetchone()
        return row

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.c.execute(sql, args).fetchall()
        return rows


def _in_transaction(
    connection: sqlite3.Connection, begin: str, work: Callable[[Tx], Awaitable[T]]
) -> T:
    connection.execute(begin)
    try:
        value = _to_the_end(work(_DirectTx(connection)))
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise
    return value


def _to_the_end(step: Awaitable[T]) -> T:
    """Run a coroutine that never suspends (it awaits only ``_DirectTx``) to its result."""
    coroutine = step.__await__()
    try:
        coroutine.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    coroutine.close()
    raise RuntimeError("a ledger transaction waited for something other than SQLite")


def _rollback(connection: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if connection.in_transaction:
            connection.execute("ROLLBACK")


class SQLiteLedger(SQLLedger):
    """An account's ledger in one SQLite file."""

    db: SQLiteDialect

    def __init__(self, db: SQLiteDialect, *, read_only: bool = False) -> None:
        super().__init__(db, read_only=read_only)
        self.path = db.path

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        base_url: str,
        api_key: str | None,
        force: bool = False,
        read_only: bool = False,
    ) -> SQLiteLedger:
        """Open (or create, race-free) the ledger at ``path`` for this account.

        A ledger of another account, an older per-job journal or a corrupt file is refused
        and left as it is.
        """
        db = SQLiteDialect(Path(path), read_only=read_only)
        ledger = cls(db, read_only=read_only)
        account = {"base_url": base_url.rstrip("/"), "key": key_fingerprint(api_key)}
        try:
            try:
                await db.connect()
            except Exception as exc:
                raise await db.failure(db.classify(exc), exc) from None
            await db.run(lambda tx: ledger._prepare(tx, account, force), what="its schema")
        except BaseException:
            await db.close()
            raise
        ledger._start()
        return ledger

    async def _prepare(self, tx: Tx, account: dict[str, str], force: bool) -> None:
        tables = {str(r[0]) for r in await tx.fetchall("SELECT name FROM sqlite_master")}
        if tables and "meta" not in tables:
            raise LedgerError(
                f"{self.path} holds no styldod-batch ledger; it was left as is: pass --state "
                "for another place"
            )
        stored: dict[str, str] = {}
        if tables:
            stored = {str(k): str(v) for k, v in await tx.fetchall("SELECT name, value FROM meta")}
            self._check_schema(stored.get("schema"))
        if self.read_only:
            return
        for statement in SQLITE_SCHEMA:
            await tx.execute(statement)
        carried_to = stored.get("carried_to")
        if carried_to and not force:
            raise LedgerError(
                f"{self.path} was carried over to the ledger of key {carried_to} (a rotated "
                "key): run with the new key; pass --force to use this old copy anyway"
            )
        different = sorted(k for k, v in account.items() if k in stored and stored[k] != v)
        if different and not force:
            raise LedgerError(
                f"{self.path} is the ledger of another account (different "
                f"{' and '.join('API key' if d == 'key' else d for d in different)}); "
                "pass --force to use it anyway, or --state for another place"
            )
        rows = [("schema", SQLITE_SCHEMA_VERSION), *account.items()]
        await tx.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [row for row in rows if row[0] not in stored],
        )

    def _check_schema(self, version: str | None) -> None:
        if version == "1":
            raise LedgerError(
                f"{self.path} is a per-job journal of an earlier version, not an account "
                "ledger; it was left as is: pass --state for another place"
            )
        if version is not None and version != SQLITE_SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} was written by another version of styldod-batch "
                f"(ledger schema {version}); it was left as is"
            )
