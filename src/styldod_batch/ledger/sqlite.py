"""The embedded ledger: one SQLite file (WAL) per account, shared by any number of processes.

All work happens on one thread per open ledger, so a process waiting for another one's write
lock (``busy_timeout``) never blocks the event loop. Writes that may lag (an upload's result,
an order's outcome) are queued and committed in batches, so the ledger costs the pipeline a
queue append per file; claims and write-ahead orders run in ``BEGIN IMMEDIATE`` transactions
of their own and are durable before their caller goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from styldod_batch.ledger.location import key_fingerprint, make_private_file, make_private_folder
from styldod_batch.ledger.owner import Owner
from styldod_batch.ledger.records import (
    ClaimLost,
    Held,
    ImageRecord,
    LedgerError,
    Listing,
    ListingView,
    OrderDraft,
    OrderOutcome,
    OrderRecord,
)
from styldod_batch.ledger.store import Ledger
from styldod_batch.status import status_rank

T = TypeVar("T")

SCHEMA_VERSION = "2"
BATCH_ROWS = 512
BATCH_SECONDS = 0.05
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS listings (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,      -- folder:<real path> | order:<manifest order>
    name TEXT NOT NULL,
    label TEXT NOT NULL UNIQUE,         -- its download folder: the name, or "name [2]"...
    owner TEXT,                         -- the run holding its claim
    lease_until REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS listings_by_owner ON listings (owner);
CREATE TABLE IF NOT EXISTS images (
    listing_id INTEGER NOT NULL REFERENCES listings (id),
    client_image_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    md5 TEXT,                           -- the content last seen (and uploaded, with image_url)
    image_url TEXT,
    state TEXT NOT NULL,                -- uploaded | ordered | failed | late | changed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (listing_id, client_image_id)
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    listing_id INTEGER REFERENCES listings (id),   -- NULL: a fixed-size batch
    batch INTEGER NOT NULL,
    part INTEGER NOT NULL,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    body_hash TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,                -- sent | created | refused | conflict
    order_id TEXT,
    status TEXT,
    images INTEGER NOT NULL,
    error TEXT,
    result BLOB,                        -- the latest image list the service reported
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_listing ON orders (listing_id, batch);
CREATE INDEX IF NOT EXISTS orders_by_id ON orders (order_id);
CREATE TABLE IF NOT EXISTS order_items (
    order_ref INTEGER NOT NULL REFERENCES orders (id),
    listing_id INTEGER NOT NULL,
    client_image_id TEXT NOT NULL,
    md5 TEXT NOT NULL,
    path TEXT NOT NULL,
    live INTEGER NOT NULL DEFAULT 1,    -- 0 once its order was refused
    PRIMARY KEY (order_ref, listing_id, client_image_id)
);
-- The promise itself: one content of one image is in at most one live order.
CREATE UNIQUE INDEX IF NOT EXISTS one_live_order_per_content
    ON order_items (listing_id, client_image_id, md5) WHERE live = 1;
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    order_id TEXT NOT NULL,
    client_image_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    PRIMARY KEY (order_id, client_image_id)
);
CREATE TABLE IF NOT EXISTS events (
    order_id TEXT NOT NULL,
    event TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (order_id, event, updated_at)
);
"""

_ORDER_COLUMNS = (
    "o.id, o.listing_id, o.batch, o.part, o.name, o.body, o.idempotency_key, o.state,"
    " o.order_id, o.status, o.images, o.error, o.result, COALESCE(l.label, o.name)"
)
_ORDER_FROM = "orders o LEFT JOIN listings l ON l.id = o.listing_id"


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    target = f"file:{path}?mode=ro" if read_only else str(path)
    connection = sqlite3.connect(
        target,
        uri=read_only,
        isolation_level=None,
        check_same_thread=False,
        timeout=BUSY_TIMEOUT_S,
    )
    if not read_only:
        # Two processes may switch a new file to WAL at once: the loser waits its turn.
        for attempt in range(50):
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
        # With WAL, NORMAL loses nothing a process crash can take; only an OS crash could.
        connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class SQLiteLedger(Ledger):
    """An account's ledger in one SQLite file; see the module docstring for its threading."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.location = str(path)
        self.read_only = read_only
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._serve, name="styldod-ledger", daemon=True)
        self._opened = threading.Event()
        self._open_error: BaseException | None = None

    # -- opening -----------------------------------------------------------------------------

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
        ledger = cls(path, read_only=read_only)
        account = {"base_url": base_url.rstrip("/"), "key": key_fingerprint(api_key)}
        await asyncio.to_thread(ledger._start, account, force)
        return ledger

    def _start(self, account: dict[str, str], force: bool) -> None:
        self._thread.start()
        self._jobs.put(_Job(lambda c: self._prepare(c, account, force), None))
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def _prepare(
        self, connection: sqlite3.Connection, account: dict[str, str], force: bool
    ) -> None:
        if self.read_only:
            tables = _tables(connection)
            if tables and "meta" not in tables:
                raise sqlite3.DatabaseError("it holds no styldod-batch ledger")
            if tables:
                self._check_schema(connection)
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            tables = _tables(connection)
            if tables and "meta" not in tables:
                raise sqlite3.DatabaseError("it holds no styldod-batch ledger")
            if tables:
                self._check_schema(connection)
            # One statement at a time: executescript() would commit the open transaction.
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    connection.execute(statement)
            stored = dict(connection.execute("SELECT name, value FROM meta").fetchall())
            different = sorted(k for k, v in account.items() if k in stored and stored[k] != v)
            if different and not force:
                raise LedgerError(
                    f"{self.path} is the ledger of another account (different "
                    f"{' and '.join('API key' if d == 'key' else d for d in different)}); "
                    "pass --force to use it anyway, or --state for another place"
                )
            rows = [("schema", SCHEMA_VERSION), *((k, v) for k, v in account.items())]
            connection.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [row for row in rows if row[0] not in stored],
            )
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        row = connection.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        version = row[0] if row else None
        if version == "1":
            raise LedgerError(
                f"{self.path} is a per-job journal of an earlier version, not an account "
                "ledger; it was left as is: pass --state for another place"
            )
        if version is not None and version != SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} was written by another version of styldod-batch "
                f"(ledger schema {version}); it was left as is"
            )

    # -- the worker thread -------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            if not self.read_only:
                make_private_folder(self.path.parent)
                make_private_file(self.path)
            connection = _connect(self.path, read_only=self.read_only)
            self._connection = connection
            first = self._jobs.get()
            assert first is not None
            first.run(connection)
            self._reader = _connect(self.path, read_only=True)
        except BaseException as exc:
            self._open_error = _ledger_error(self.path, exc)
            self._opened.set()
            if self._connection is not None:
                self._connection.close()
            return
        self._opened.set()
        try:
            self._loop(connection)
        finally:
            connection.close()

    def _loop(self, connection: sqlite3.Connection) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.waiter is not None:
                job.run(connection)
                continue
            # A write that may lag: gather more for one transaction.
            batch = [job]
            deadline = time.monotonic() + BATCH_SECONDS
            follower: _Job | None = None
            closing = False
            while len(batch) < BATCH_ROWS:
                try:
                    nxt = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                if nxt.waiter is not None:
                    follower = nxt
                    break
                batch.append(nxt)
            self._commit(connection, batch)
            if follower is not None:
                follower.run(connection)
            if closing:
                return

    def _commit(self, connection: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            connection.execute("BEGIN IMMEDIATE")
            for job in batch:
                job.work(connection)
            connection.execute("COMMIT")
        except Exception as exc:  # kept, and raised to the next caller
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            self._failure = exc

    def _queue(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        if self._failure is not None:
            raise _ledger_error(self.path, self._failure)
        if self.read_only:
            return
        self._jobs.put(_Job(work, None))

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the ledger's thread (after every write queued before it)."""
        if self._failure is not None:
            raise _ledger_error(self.path, self._failure)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def resolve(value: Any, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)

        def waiter(value: Any, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(resolve, value, error)

        if not self._thread.is_alive():
            raise LedgerError(f"{self.path}: the ledger is closed")
        self._jobs.put(_Job(work, waiter))
        return await done

    # -- claims ------------------------------------------------------------------------------

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        me = owner.encode()

        def work(c: sqlite3.Connection) -> ListingView | Held:
            with _immediate(c):
                now = time.time()
                row = c.execute(
                    "SELECT id, owner, lease_until, label FROM listings WHERE identity = ?",
                    (listing.identity,),
                ).fetchone()
                if row is None:
                    label = _free_label(c, listing.name)
                    cursor = c.execute(
                        "INSERT INTO listings (identity, name, label, owner, lease_until,"
                        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (listing.identity, listing.name, label, me, now + lease_s, now),
                    )
                    assert cursor.lastrowid is not None
                    return ListingView(listing, cursor.lastrowid, label)
                listing_id, holder_text, lease_until, label = row
                if holder_text and holder_text != me and lease_until > now:
                    holder = Owner.decode(holder_text)
                    if holder is None or not holder.certainly_dead():
                        return Held(holder.describe() if holder else "another run")
                c.execute(
                    "UPDATE listings SET owner = ?, lease_until = ? WHERE id = ?",
                    (me, now + lease_s, listing_id),
                )
                return _load_view(c, listing, listing_id, label)

        return await self._call(work)

    async def renew(self, owner: Owner, lease_s: float) -> None:
        me = owner.encode()

        def work(c: sqlite3.Connection) -> None:
            with _immediate(c):
                c.execute(
                    "UPDATE listings SET lease_until = ? WHERE owner = ?",
                    (time.time() + lease_s, me),
                )

        await self._call(work)

    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        me = owner.encode()

        def work(c: sqlite3.Connection) -> None:
            with _immediate(c):
                c.execute(
                    "UPDATE listings SET owner = NULL, lease_until = 0 WHERE owner = ?"
                    " AND (? IS NULL OR id = ?)",
                    (me, listing_id, listing_id),
                )

        if not self.read_only:
            await self._call(work)

    async def view(self, listing: Listing) -> ListingView:
        def work(c: sqlite3.Connection) -> ListingView:
            if "listings" not in _tables(c):
                return ListingView(listing)
            row = c.execute(
                "SELECT id, label FROM listings WHERE identity = ?", (listing.identity,)
            ).fetchone()
            if row is None:
                return ListingView(listing)
            return _load_view(c, listing, row[0], row[1])

        return await self._call(work)

    # -- images and orders -------------------------------------------------------------------

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None:
        args = image.row(listing_id, attempts, error, time.time())

        def work(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO images (listing_id, client_image_id, path, size, mtime_ns, md5,"
                " image_url, state, attempts, error, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (listing_id, client_image_id) DO UPDATE SET path = excluded.path,"
                " size = excluded.size, mtime_ns = excluded.mtime_ns, md5 = excluded.md5,"
                " image_url = excluded.image_url, state = excluded.state,"
                " attempts = images.attempts + excluded.attempts, error = excluded.error,"
                " updated_at = excluded.updated_at",
                args,
            )
            if image.state != "failed":
                c.execute("DELETE FROM failures WHERE path = ?", (image.path,))

        self._queue(work)

    def record_failure(self, path: str, error: str) -> None:
        args = (path, error, time.time())
        self._queue(
            lambda c: c.execute(
                "INSERT INTO failures (path, error, updated_at) VALUES (?, ?, ?) ON CONFLICT"
                " (path) DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at",
                args,
            )
        )

    async def next_batch(self, listing_id: int | None) -> int:
        def work(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT COALESCE(MAX(batch), 0) + 1 FROM orders WHERE listing_id IS ?",
                (listing_id,),
            ).fetchone()
            return int(row[0])

        return await self._call(work)

    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int:
        me = owner.encode()
        listing_ids = sorted({item.listing_id for item in draft.items})

        def work(c: sqlite3.Connection) -> int:
            with _immediate(c):
                marks = ",".join("?" * len(listing_ids))
                holders = c.execute(
                    f"SELECT id, owner, name FROM listings WHERE id IN ({marks})",  # noqa: S608
                    listing_ids,
                ).fetchall()
                lost = [name for _id, holder, name in holders if holder != me]
                if lost or len(holders) != len(listing_ids):
                    raise ClaimLost(
                        f"another run took over {', '.join(lost) or 'a listing'} (this run's "
                        "claim ran out); the order was not sent"
                    )
                now = time.time()
                cursor = c.execute(
                    "INSERT INTO orders (listing_id, batch, part, name, body, body_hash,"
                    " idempotency_key, state, images, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?, ?)",
                    (
                        draft.listing_id,
                        draft.batch,
                        draft.part,
                        draft.name,
                        draft.body,
                        hashlib.sha256(draft.body).hexdigest(),
                        draft.idempotency_key,
                        len(draft.items),
                        now,
                        now,
                    ),
                )
                ref = cursor.lastrowid
                assert ref is not None
                try:
                    c.executemany(
                        "INSERT INTO order_items (order_ref, listing_id, client_image_id, md5,"
                        " path) VALUES (?, ?, ?, ?, ?)",
                        [
                            (ref, i.listing_id, i.client_image_id, i.md5, i.path)
                            for i in draft.items
                        ],
                    )
                except sqlite3.IntegrityError as exc:
                    raise ClaimLost(f"an image of it is already in a live order ({exc})") from None
                c.executemany(
                    "UPDATE images SET state = 'ordered', updated_at = ?"
                    " WHERE listing_id = ? AND client_image_id = ?",
                    [(now, i.listing_id, i.client_image_id) for i in draft.items],
                )
                return ref

        return await self._call(work)

    def settle_order(self, ref: int, outcome: OrderOutcome) -> None:
        def work(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute(
                "UPDATE orders SET state = ?, order_id = COALESCE(?, order_id),"
                " status = COALESCE(?, status), error = ?, updated_at = ? WHERE id = ?",
                (outcome.state, outcome.order_id, outcome.status, outcome.error, now, ref),
            )
            if outcome.state != "refused":
                return
            # A definite refusal: its images are free for a later order (under a new key).
            c.execute("UPDATE order_items SET live = 0 WHERE order_ref = ?", (ref,))
            c.execute(
                "UPDATE images SET state = CASE WHEN EXISTS (SELECT 1 FROM order_items i"
                " WHERE i.listing_id = images.listing_id AND i.client_image_id ="
                " images.client_image_id AND i.live = 1) THEN 'ordered' ELSE 'uploaded' END,"
                " updated_at = ? WHERE state = 'ordered' AND (listing_id, client_image_id) IN"
                " (SELECT listing_id, client_image_id FROM order_items WHERE order_ref = ?)",
                (now, ref),
            )
            if outcome.bad_image is not None:
                c.execute(
                    "UPDATE images SET state = 'failed', image_url = NULL, error = ?,"
                    " updated_at = ? WHERE listing_id = ? AND client_image_id = ?",
                    (outcome.error, now, *outcome.bad_image),
                )

        self._queue(work)

    # -- lifecycle ---------------------------------------------------------------------------

    async def record_event(self, payload: dict[str, Any]) -> bool:
        data = payload["data"]
        order_id = str(payload["orderID"])
        args = (
            order_id,
            payload["event"],
            str(data.get("updatedAt", "")),
            orjson.dumps(payload),
            time.time(),
        )
        status = data.get("order_status")
        image_list = orjson.dumps(data.get("image_list", []))

        def work(c: sqlite3.Connection) -> bool:
            with _immediate(c):
                cursor = c.execute(
                    "INSERT OR IGNORE INTO events (order_id, event, updated_at, payload,"
                    " received_at) VALUES (?, ?, ?, ?, ?)",
                    args,
                )
                if cursor.rowcount and status:
                    _write_progress(c, order_id, str(status), image_list)
                return bool(cursor.rowcount)

        return await self._call(work)

    def record_progress(self, order_id: str, status: str, image_list: list[dict[str, Any]]) -> None:
        encoded = orjson.dumps(image_list)
        self._queue(lambda c: _write_progress(c, order_id, status, encoded))

    def record_output(
        self, order_id: str, client_image_id: str, path: str, size: int, md5: str
    ) -> None:
        args = (order_id, client_image_id, path, size, md5)
        self._queue(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO outputs (order_id, client_image_id, path, size, md5)"
                " VALUES (?, ?, ?, ?, ?)",
                args,
            )
        )

    async def output(self, order_id: str, client_image_id: str) -> tuple[str, int, str] | None:
        # A point read on a WAL database never waits for a writer: done on the caller's loop.
        if self._reader is None:
            return None
        try:
            row = self._reader.execute(
                "SELECT path, size, md5 FROM outputs WHERE order_id = ? AND client_image_id = ?",
                (order_id, client_image_id),
            ).fetchone()
        except sqlite3.OperationalError:  # a read-only view of a ledger without the table yet
            return None
        return (row[0], row[1], row[2]) if row else None

    # -- reading it all ----------------------------------------------------------------------

    async def orders(self) -> list[OrderRecord]:
        def work(c: sqlite3.Connection) -> list[OrderRecord]:
            if "orders" not in _tables(c):
                return []
            rows = c.execute(f"SELECT {_ORDER_COLUMNS} FROM {_ORDER_FROM} ORDER BY o.id")  # noqa: S608
            return [OrderRecord(*row) for row in rows]

        return await self._call(work)

    async def order_by_id(self, order_id: str) -> OrderRecord | None:
        def work(c: sqlite3.Connection) -> OrderRecord | None:
            if "orders" not in _tables(c):
                return None
            row = c.execute(
                f"SELECT {_ORDER_COLUMNS} FROM {_ORDER_FROM} WHERE o.order_id = ?",  # noqa: S608
                (order_id,),
            ).fetchone()
            return OrderRecord(*row) if row else None

        return await self._call(work)

    async def listings(self) -> list[ListingView]:
        def work(c: sqlite3.Connection) -> list[ListingView]:
            if "listings" not in _tables(c):
                return []
            rows = c.execute(
                "SELECT id, identity, name, label FROM listings ORDER BY id"
            ).fetchall()
            return [
                _load_view(c, Listing(identity, name), listing_id, label)
                for listing_id, identity, name, label in rows
            ]

        return await self._call(work)

    async def events(self, order_id: str) -> list[str]:
        def work(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT event FROM events WHERE order_id = ? ORDER BY received_at", (order_id,)
            )
            return [row[0] for row in rows]

        return await self._call(work)

    async def failures(self, limit: int = 1000) -> list[tuple[str, str]]:
        def work(c: sqlite3.Connection) -> list[tuple[str, str]]:
            if "failures" not in _tables(c):
                return []
            rows = c.execute(
                "SELECT path, error FROM failures UNION ALL SELECT path, COALESCE(error, 'failed')"
                " FROM images WHERE state = 'failed' ORDER BY 1 LIMIT ?",
                (limit,),
            )
            return [(row[0], row[1]) for row in rows]

        return await self._call(work)

    # -- lifetime ----------------------------------------------------------------------------

    async def flush(self) -> None:
        await self._call(lambda _c: None)
        if self._failure is not None:
            raise _ledger_error(self.path, self._failure)

    async def close(self) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
            self._reader = None


class _Job:
    """One piece of work for the ledger's thread; ``waiter`` gets its result (None: a write
    that may be batched with others)."""

    __slots__ = ("waiter", "work")

    def __init__(
        self,
        work: Callable[[sqlite3.Connection], Any],
        waiter: Callable[[Any, BaseException | None], None] | None,
    ) -> None:
        self.work = work
        self.waiter = waiter

    def run(self, connection: sqlite3.Connection) -> None:
        try:
            value = self.work(connection)
        except BaseException as exc:
            error = exc if isinstance(exc, ClaimLost | LedgerError) else _ledger_error(None, exc)
            if self.waiter is None:
                raise
            self.waiter(None, error)
            return
        if self.waiter is not None:
            self.waiter(value, None)


@contextlib.contextmanager
def _immediate(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _tables(connection: sqlite3.Connection) -> set[str]:
    return {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }


def _free_label(connection: sqlite3.Connection, name: str) -> str:
    label, number = name, 1
    while connection.execute("SELECT 1 FROM listings WHERE label = ?", (label,)).fetchone():
        number += 1
        label = f"{name} [{number}]"
    return label


def _load_view(
    connection: sqlite3.Connection, listing: Listing, listing_id: int, label: str
) -> ListingView:
    view = ListingView(listing, listing_id, label)
    for row in connection.execute(
        "SELECT client_image_id, path, size, mtime_ns, md5, image_url, state FROM images"
        " WHERE listing_id = ?",
        (listing_id,),
    ):
        view.images[row[0]] = ImageRecord(*row)
    refs: set[int] = set()
    for client_image_id, md5, ref in connection.execute(
        "SELECT client_image_id, md5, order_ref FROM order_items WHERE listing_id = ? AND live = 1"
        " ORDER BY order_ref",
        (listing_id,),
    ):
        image = view.images.get(client_image_id)
        if image is not None:
            image.ordered_md5, image.order_ref = md5, ref
        refs.add(ref)
    marks = ",".join("?" * len(refs))
    for row in connection.execute(
        f"SELECT {_ORDER_COLUMNS} FROM {_ORDER_FROM} WHERE o.listing_id = ?"  # noqa: S608
        f" OR o.id IN ({marks}) ORDER BY o.id",
        (listing_id, *refs),
    ):
        order = OrderRecord(*row)
        view.orders[order.ref] = order
    return view


def _write_progress(c: sqlite3.Connection, order_id: str, status: str, image_list: bytes) -> None:
    row = c.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is not None and status_rank(row[0]) > status_rank(status):
        return  # an older report arriving late
    c.execute(
        "UPDATE orders SET status = ?, result = ?, updated_at = ? WHERE order_id = ?",
        (status, image_list, time.time(), order_id),
    )


def _ledger_error(path: Path | None, exc: BaseException) -> BaseException:
    if isinstance(exc, LedgerError | ClaimLost):
        return exc
    where = f"{path}: " if path is not None else ""
    if isinstance(exc, sqlite3.DatabaseError):
        return LedgerError(
            f"{where}the ledger is corrupt or not a styldod-batch ledger ({exc}); it was left "
            "as is: move it away, or pass --state for another place"
        )
    if isinstance(exc, OSError):
        return LedgerError(f"{where}cannot use the ledger: {exc.strerror or exc}")
    return exc
