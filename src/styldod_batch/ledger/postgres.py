"""The shared ledger: PostgreSQL, for workers on many machines (``--state postgresql://...``).

The same statements and promises as the SQLite ledger (``core.py``), kept by the server: a
claim takes the listing's row with ``SELECT ... FOR UPDATE`` and holds it by a lease on the
server's clock, which every worker renews while it works. One database holds any number of
accounts: every row belongs to one (base URL + key fingerprint).

While the server is away (restarting, at ``max_connections``, shutting down), every call
waits, with a warning, up to the core's bound, and nothing is sent meanwhile. The first
connection must reach a server, or the run stops at once with its address (never its
password); a role without the privileges the ledger needs is told which one, at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from styldod_batch.errors import LedgerError
from styldod_batch.ledger.core import SQLLedger
from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.faults import Fault
from styldod_batch.ledger.location import account_id, key_fingerprint
from styldod_batch.ledger.schema import (
    IMAGES_BY_SIZE_POSTGRES,
    POSTGRES_SCHEMA,
    POSTGRES_SCHEMA_LOCK,
    POSTGRES_SCHEMA_VERSION,
    POSTGRES_TABLES,
)

T = TypeVar("T")

# asyncpg reports a lost pool connection with a traceback through its own logger; the
# outage is ours to report (as a warning), so its records go nowhere unless the program
# that imports us configures logging.
logging.getLogger("asyncpg").addHandler(logging.NullHandler())

CONNECT_TIMEOUT_S = 10.0
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
# SQLSTATEs of a server that is away or full for now: connection exceptions (08), too many
# connections (53300), out of memory (53200), shutting down or starting (57P0x),
# serialization failure and deadlock (40001, 40P01).
_TRANSIENT_STATES = ("08", "53300", "53200", "57P", "40001", "40P01")


def redact(url: str) -> str:
    """The URL without its password, for messages (its port is not parsed: it may be bad)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def check_url(url: str) -> None:
    """One clear line for a URL that cannot be a server's, before anything connects."""
    try:
        port = urlsplit(url).port
    except ValueError:
        raise LedgerError(
            f"--state {redact(url)}: the port is not a number from 1 to 65535"
        ) from None
    if port == 0:
        raise LedgerError(f"--state {redact(url)}: the port is not a number from 1 to 65535")


class PostgresDialect(Dialect):
    prefix = "styldod_"
    now = "extract(epoch from clock_timestamp())"
    lock = "FOR UPDATE"
    true = "TRUE"
    greatest = "GREATEST"
    numbered = True
    waiting_for = "the ledger's PostgreSQL"

    def __init__(self, url: str, account: str) -> None:
        self.url = url
        self.location = redact(url)
        self.account = account
        self.pool: Any = None
        # Whether a server answered at this address (then a refusal is a restart, not absence).
        self.answered = False

    async def attempt(self, work: Callable[[Tx], Awaitable[T]], *, write: bool) -> T:
        async with self._transaction() as tx:
            return await work(tx)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Tx]:
        if self.pool is None:
            raise LedgerError(f"{self.location}: the ledger is closed")
        connection = await self.pool.acquire()
        try:
            async with connection.transaction():
                yield _PostgresTx(connection)
        except BaseException as exc:
            if not isinstance(exc, Exception) or self.classify(exc) is Fault.TRANSIENT:
                # Never handed out again: it may be broken, or mid-way through a reply.
                with contextlib.suppress(Exception):
                    connection.terminate()
            raise
        finally:
            with contextlib.suppress(Exception):  # it may be gone already
                await self.pool.release(connection)

    def classify(self, exc: BaseException) -> Fault:
        import asyncpg

        state = str(getattr(exc, "sqlstate", "") or "")
        if isinstance(exc, asyncpg.PostgresError) and state:
            if state == "53100":
                return Fault.FULL
            if state.startswith(_TRANSIENT_STATES):
                return Fault.TRANSIENT
            if state.startswith(("22", "23")) or state == "54000":
                return Fault.ROW  # a value out of range, a NUL, too long; a constraint
            if state == "42501" or state.startswith(("28", "3D")):
                return Fault.MISUSE  # privileges, authentication, no such database
            if state.startswith("XX00"):
                return Fault.SUSPECT  # the server's own checks found damage
            return Fault.OTHER
        if isinstance(exc, asyncpg.exceptions.DataError | OverflowError | UnicodeError):
            return Fault.ROW  # refused by the client before it was sent
        if isinstance(exc, OSError | TimeoutError | asyncpg.exceptions.InternalClientError):
            return Fault.TRANSIENT  # refused or reset, or a protocol left mid-way
        if isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc):
            return Fault.TRANSIENT  # "connection is closed", "...was closed in the middle..."
        return Fault.OTHER  # a statement the server cannot take is no outage to wait out

    def misuse(self, exc: BaseException) -> str:
        hint = ""
        if getattr(exc, "sqlstate", "") == "42501":
            hint = " (the role may not create the ledger's tables: let their owner create them)"
        return f"the ledger's PostgreSQL at {self.location} refused: {exc}{hint}"

    async def integrity_problem(self) -> str | None:
        return "the server reports damaged data"  # its own checks raised the error

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT_S)


class _PostgresTx:
    def __init__(self, connection: Any) -> None:
        self.c = connection

    async def execute(self, sql: str, *args: Any) -> int:
        status = str(await self.c.execute(sql, *args))
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.c.executemany(sql, list(rows))

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await self.c.fetchrow(sql, *args)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self.c.fetch(sql, *args)]


class PostgresLedger(SQLLedger):
    """An account's ledger in a PostgreSQL database shared by many workers."""

    db: PostgresDialect

    @classmethod
    async def open(
        cls, url: str, *, base_url: str, api_key: str | None, force: bool = False
    ) -> PostgresLedger:
        try:
            import asyncpg  # noqa: F401
        except ImportError as exc:  # the optional extra
            raise LedgerError(
                "--state postgresql://... needs asyncpg: pip install 'styldod-batch[shared]'"
            ) from exc
        check_url(url)
        db = PostgresDialect(url, account_id(base_url, api_key))
        ledger = cls(db)
        try:
            db.pool = await db.patiently(lambda: _pool(db), "its first connection")
            await db.run(lambda tx: ledger._prepare(tx, base_url, api_key), what="its schema")
        except BaseException:
            await db.close()
            raise
        ledger._start()
        return ledger

    async def _prepare(self, tx: Tx, base_url: str, api_key: str | None) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", POSTGRES_SCHEMA_LOCK)
        for table in POSTGRES_TABLES:
            found = await tx.fetchone("SELECT to_regclass($1::text)", table)
            if found is None or found[0] is None:
                # Only then: a role that may use the tables need not be allowed to create any.
                for statement in POSTGRES_SCHEMA:
                    await tx.execute(statement)
                break
        await self._check_privileges(tx)
        await self._index_sizes(tx)
        rows = [
            ("schema", POSTGRES_SCHEMA_VERSION),
            ("base_url", base_url.rstrip("/")),
            ("key", key_fingerprint(api_key)),
        ]
        await tx.executemany(
            "INSERT INTO styldod_meta (account, name, value) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(self.db.account, name, value) for name, value in rows],
        )

    async def _index_sizes(self, tx: Tx) -> None:
        """Tables made before the index by size get it when this role owns them; without it
        the search for moved content still works, more slowly."""
        found = await tx.fetchone("SELECT to_regclass('styldod_images_by_size')::text")
        if found is not None and found[0] is not None:
            return
        owner = await tx.fetchone(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class"
            " WHERE oid = 'styldod_images'::regclass"
        )
        if owner and owner[0]:
            await tx.execute(IMAGES_BY_SIZE_POSTGRES)

    async def _check_privileges(self, tx: Tx) -> None:
        """A role that may not write every table learns it now, by name, not mid-run."""
        role = await tx.fetchone("SELECT current_user")
        user = str(role[0]) if role else "?"
        for table in POSTGRES_TABLES:
            for privilege in _PRIVILEGES:
                granted = await tx.fetchone(
                    "SELECT has_table_privilege($1::text, $2::text)", table, privilege
                )
                if not (granted and granted[0]):
                    raise LedgerError(
                        _lacks(self.db.location, user, f"{privilege} on table {table}")
                    )
        for sequence in ("styldod_listings_id_seq", "styldod_orders_id_seq"):
            granted = await tx.fetchone(
                "SELECT has_sequence_privilege($1::text, 'USAGE')", sequence
            )
            if not (granted and granted[0]):
                raise LedgerError(_lacks(self.db.location, user, f"USAGE on sequence {sequence}"))


def _lacks(location: str, user: str, privilege: str) -> str:
    return (
        f"the ledger's PostgreSQL at {location}: the role {user} lacks {privilege}. As the "
        f"tables' owner: GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
        f"TO {user}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user}"
    )


async def _pool(db: PostgresDialect) -> Any:
    """The pool, or one line on why there is none: a server that refuses connections stops
    the run at once; one that is full, starting or shutting down is waited for
    (``TRANSIENT``), and so is its restart once it was seen."""
    import asyncpg

    try:
        return await asyncio.wait_for(
            asyncpg.create_pool(db.url, min_size=1, max_size=4), CONNECT_TIMEOUT_S
        )
    except asyncpg.PostgresError:
        db.answered = True
        raise
    except (OSError, TimeoutError) as exc:
        if db.answered:
            raise  # a server that answered a moment ago is restarting: waited for
        raise LedgerError(
            f"the ledger's PostgreSQL at {db.location} cannot be reached: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    except (ValueError, asyncpg.InterfaceError) as exc:
        if db.classify(exc) is Fault.TRANSIENT and not isinstance(exc, ValueError):
            raise
        raise LedgerError(f"--state {db.location}: {exc}") from None
