"""The shared ledger: PostgreSQL, for workers on many machines (``--state postgresql://...``).

The same promises as the SQLite ledger, kept by the server: a claim takes the listing's row
with ``SELECT ... FOR UPDATE`` (another worker's claim waits for that transaction, never
for the whole run) and holds it by a lease on the server's clock, which every worker renews
while it works; a dead worker's claims are free once their lease runs out (at once, when the
dead worker was on this very machine). One database holds any number of accounts: every row
belongs to one (base URL + key fingerprint).

When the server cannot be reached, nothing goes ahead: every call waits, retrying with
backoff, and goes on once the server answers (claims and write-ahead orders are what allow a
send, so the workers pause). The first connection must succeed, or the run stops at once
with the server's address (never its password).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson

from styldod_batch.ledger.location import account_id, key_fingerprint
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
from styldod_batch.logs import event as log_event
from styldod_batch.status import status_rank

T = TypeVar("T")

# asyncpg reports a lost pool connection with a traceback through its own logger; the
# outage is ours to report (once, as a warning), so its records go nowhere unless the
# program that imports us configures logging.
logging.getLogger("asyncpg").addHandler(logging.NullHandler())

SCHEMA_VERSION = 1
BATCH_ROWS = 512
BATCH_SECONDS = 0.05
CONNECT_TIMEOUT_S = 10.0
# Backoff while the server is away: from 0.1 s up to this.
MAX_BACKOFF_S = 5.0

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS styldod_meta (
        account TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (account, name))""",
    """CREATE TABLE IF NOT EXISTS styldod_listings (
        id BIGSERIAL PRIMARY KEY,
        account TEXT NOT NULL,
        identity TEXT NOT NULL,
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (account, identity),
        UNIQUE (account, label))""",
    "CREATE INDEX IF NOT EXISTS styldod_listings_by_owner ON styldod_listings (owner)",
    """CREATE TABLE IF NOT EXISTS styldod_images (
        listing_id BIGINT NOT NULL REFERENCES styldod_listings (id),
        client_image_id TEXT NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        md5 TEXT,
        image_url TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (listing_id, client_image_id))""",
    """CREATE TABLE IF NOT EXISTS styldod_orders (
        id BIGSERIAL PRIMARY KEY,
        account TEXT NOT NULL,
        listing_id BIGINT REFERENCES styldod_listings (id),
        batch INTEGER NOT NULL,
        part INTEGER NOT NULL,
        name TEXT NOT NULL,
        body BYTEA NOT NULL,
        body_hash TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        order_id TEXT,
        status TEXT,
        images INTEGER NOT NULL,
        error TEXT,
        result BYTEA,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS styldod_orders_by_listing ON styldod_orders (listing_id, batch)",
    "CREATE INDEX IF NOT EXISTS styldod_orders_by_id ON styldod_orders (account, order_id)",
    """CREATE TABLE IF NOT EXISTS styldod_order_items (
        order_ref BIGINT NOT NULL REFERENCES styldod_orders (id),
        listing_id BIGINT NOT NULL,
        client_image_id TEXT NOT NULL,
        md5 TEXT NOT NULL,
        path TEXT NOT NULL,
        live BOOLEAN NOT NULL DEFAULT TRUE,
        PRIMARY KEY (order_ref, listing_id, client_image_id))""",
    # The promise itself: one content of one image is in at most one live order.
    """CREATE UNIQUE INDEX IF NOT EXISTS styldod_one_live_order_per_content
        ON styldod_order_items (listing_id, client_image_id, md5) WHERE live""",
    """CREATE TABLE IF NOT EXISTS styldod_failures (
        account TEXT NOT NULL, path TEXT NOT NULL, error TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (account, path))""",
    """CREATE TABLE IF NOT EXISTS styldod_outputs (
        account TEXT NOT NULL, order_id TEXT NOT NULL, client_image_id TEXT NOT NULL,
        path TEXT NOT NULL, size BIGINT NOT NULL, md5 TEXT NOT NULL,
        PRIMARY KEY (account, order_id, client_image_id))""",
    """CREATE TABLE IF NOT EXISTS styldod_events (
        account TEXT NOT NULL, order_id TEXT NOT NULL, event TEXT NOT NULL,
        updated_at TEXT NOT NULL, payload BYTEA NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (account, order_id, event, updated_at))""",
]
# Two workers creating the tables at once would trip over each other in the catalogue.
_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"styldod-batch schema").digest()[:8], "big") >> 1

_ORDER_COLUMNS = (
    "o.id, o.listing_id, o.batch, o.part, o.name, o.body, o.idempotency_key, o.state,"
    " o.order_id, o.status, o.images, o.error, o.result, COALESCE(l.label, o.name)"
)
_ORDER_FROM = "styldod_orders o LEFT JOIN styldod_listings l ON l.id = o.listing_id"
_NOW = "extract(epoch from clock_timestamp())"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, parts.query, ""))


class PostgresLedger(Ledger):
    """An account's ledger in a PostgreSQL database shared by many workers."""

    def __init__(self, url: str, account: str) -> None:
        self.url = url
        self.location = redact(url)
        self.account = account
        self._pool: Any = None
        self._writes: list[Callable[[Any], Awaitable[None]]] = []
        self._wrote = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._cache_outputs: dict[tuple[str, str], tuple[str, int, str]] = {}

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, url: str, *, base_url: str, api_key: str | None, force: bool = False
    ) -> PostgresLedger:
        try:
            import asyncpg
        except ImportError as exc:  # the optional extra
            raise LedgerError(
                "--state postgresql://... needs asyncpg: pip install 'styldod-batch[shared]'"
            ) from exc
        ledger = cls(url, account_id(base_url, api_key))
        try:
            ledger._pool = await asyncio.wait_for(
                asyncpg.create_pool(url, min_size=1, max_size=4), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise LedgerError(
                f"the ledger's PostgreSQL at {ledger.location} cannot be reached: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        await ledger._prepare(base_url, api_key)
        ledger._flusher = asyncio.create_task(ledger._flush_loop())
        return ledger

    async def _prepare(self, base_url: str, api_key: str | None) -> None:
        async def work(c: Any) -> None:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                for statement in _SCHEMA:
                    await c.execute(statement)
                rows = [
                    ("schema", str(SCHEMA_VERSION)),
                    ("base_url", base_url.rstrip("/")),
                    ("key", key_fingerprint(api_key)),
                ]
                await c.executemany(
                    "INSERT INTO styldod_meta (account, name, value) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING",
                    [(self.account, name, value) for name, value in rows],
                )

        await self._with(work)

    # -- the connection, kept through outages --------------------------------------------------

    async def _with(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection; while the server is away, wait and retry
        (fail closed: whatever waits on this sends nothing meanwhile). A connection that
        failed is thrown away, never handed out again."""
        import asyncpg

        # What a server going away looks like to a client: refused or reset connections,
        # sessions ended by a shutdown, a server still starting, a protocol left mid-way.
        away = (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InternalClientError,
        )
        delay = 0.1
        while True:
            connection = None
            try:
                connection = await self._pool.acquire()
                return await work(connection)
            except away as exc:
                if connection is not None:
                    with contextlib.suppress(Exception):  # it may be gone already
                        connection.terminate()
                log_event(
                    logging.WARNING,
                    "ledger_unreachable",
                    f"the ledger's PostgreSQL at {self.location} is away "
                    f"({type(exc).__name__}); trying again in {delay:.1f} s",
                    location=self.location,
                )
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await self._pool.release(connection)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(MAX_BACKOFF_S, delay * 2)

    # -- batched writes ----------------------------------------------------------------------

    def _queue(self, write: Callable[[Any], Awaitable[None]]) -> None:
        self._writes.append(write)
        self._wrote.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wrote.wait()
            await asyncio.sleep(BATCH_SECONDS)
            await self._flush_now()

    async def _flush_now(self) -> None:
        while self._writes:
            batch, self._writes = self._writes[:BATCH_ROWS], self._writes[BATCH_ROWS:]
            if not self._writes:
                self._wrote.clear()

            async def work(c: Any, batch: list[Callable[[Any], Awaitable[None]]] = batch) -> None:
                async with c.transaction():
                    for write in batch:
                        await write(c)

            await self._with(work)

    # -- claims ------------------------------------------------------------------------------

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        import asyncpg

        me = owner.encode()
        await self._flush_now()

        async def work(c: Any) -> ListingView | Held:
            async with c.transaction():
                row = await c.fetchrow(
                    f"SELECT id, owner, lease_until, label, {_NOW} AS now FROM styldod_listings"  # noqa: S608
                    " WHERE account = $1 AND identity = $2 FOR UPDATE",
                    self.account,
                    listing.identity,
                )
                if row is None:
                    label = await _free_label(c, self.account, listing.name)
                    listing_id = await c.fetchval(
                        "INSERT INTO styldod_listings (account, identity, name, label, owner,"  # noqa: S608
                        f" lease_until, created_at) VALUES ($1, $2, $3, $4, $5, {_NOW} + $6,"
                        f" {_NOW}) ON CONFLICT (account, identity) DO NOTHING RETURNING id",
                        self.account,
                        listing.identity,
                        listing.name,
                        label,
                        me,
                        lease_s,
                    )
                    if listing_id is None:  # another worker inserted it meanwhile: held
                        return Held("another worker")
                    return ListingView(listing, listing_id, label)
                holder_text, lease_until, now = row["owner"], row["lease_until"], row["now"]
                if holder_text and holder_text != me and lease_until > now:
                    holder = Owner.decode(holder_text)
                    if holder is None or not holder.certainly_dead():
                        return Held(holder.describe() if holder else "another run")
                await c.execute(
                    f"UPDATE styldod_listings SET owner = $1, lease_until = {_NOW} + $2"  # noqa: S608
                    " WHERE id = $3",
                    me,
                    lease_s,
                    row["id"],
                )
                return await _load_view(c, listing, row["id"], row["label"])

        for _attempt in range(10):
            try:
                return await self._with(work)
            except asyncpg.UniqueViolationError:
                continue  # another worker took the same download label meanwhile: again
        return Held("another worker")

    async def renew(self, owner: Owner, lease_s: float) -> None:
        me = owner.encode()
        await self._with(
            lambda c: c.execute(
                f"UPDATE styldod_listings SET lease_until = {_NOW} + $1 WHERE owner = $2",  # noqa: S608
                lease_s,
                me,
            )
        )

    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        me = owner.encode()
        await self._flush_now()
        await self._with(
            lambda c: c.execute(
                "UPDATE styldod_listings SET owner = NULL, lease_until = 0 WHERE owner = $1"
                " AND ($2::BIGINT IS NULL OR id = $2)",
                me,
                listing_id,
            )
        )

    async def view(self, listing: Listing) -> ListingView:
        async def work(c: Any) -> ListingView:
            row = await c.fetchrow(
                "SELECT id, label FROM styldod_listings WHERE account = $1 AND identity = $2",
                self.account,
                listing.identity,
            )
            if row is None:
                return ListingView(listing)
            return await _load_view(c, listing, row["id"], row["label"])

        return await self._with(work)

    # -- images and orders -------------------------------------------------------------------

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None:
        args = image.row(listing_id, attempts, error, time.time())

        async def write(c: Any) -> None:
            await c.execute(
                "INSERT INTO styldod_images (listing_id, client_image_id, path, size, mtime_ns,"
                " md5, image_url, state, attempts, error, updated_at) VALUES ($1, $2, $3, $4,"
                " $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (listing_id, client_image_id) DO"
                " UPDATE SET path = excluded.path, size = excluded.size,"
                " mtime_ns = excluded.mtime_ns, md5 = excluded.md5,"
                " image_url = excluded.image_url, state = excluded.state,"
                " attempts = styldod_images.attempts + excluded.attempts,"
                " error = excluded.error, updated_at = excluded.updated_at",
                *args,
            )
            if image.state != "failed":
                await c.execute(
                    "DELETE FROM styldod_failures WHERE account = $1 AND path = $2",
                    self.account,
                    image.path,
                )

        self._queue(write)

    def record_failure(self, path: str, error: str) -> None:
        async def write(c: Any) -> None:
            await c.execute(
                "INSERT INTO styldod_failures (account, path, error, updated_at) VALUES"
                " ($1, $2, $3, $4) ON CONFLICT (account, path) DO UPDATE SET"
                " error = excluded.error, updated_at = excluded.updated_at",
                self.account,
                path,
                error,
                time.time(),
            )

        self._queue(write)

    async def next_batch(self, listing_id: int | None) -> int:
        async def work(c: Any) -> int:
            value = await c.fetchval(
                "SELECT COALESCE(MAX(batch), 0) + 1 FROM styldod_orders WHERE account = $1"
                " AND listing_id IS NOT DISTINCT FROM $2",
                self.account,
                listing_id,
            )
            return int(value)

        return await self._with(work)

    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int:
        import asyncpg

        me = owner.encode()
        listing_ids = sorted({item.listing_id for item in draft.items})
        await self._flush_now()

        async def work(c: Any) -> int:
            async with c.transaction():
                # Written already (the answer to an earlier try was lost with the connection).
                known = await c.fetchval(
                    "SELECT id FROM styldod_orders WHERE idempotency_key = $1",
                    draft.idempotency_key,
                )
                if known is not None:
                    return int(known)
                holders = await c.fetch(
                    "SELECT id, owner, name FROM styldod_listings WHERE id = ANY($1::BIGINT[])"
                    " ORDER BY id FOR UPDATE",
                    listing_ids,
                )
                lost = [row["name"] for row in holders if row["owner"] != me]
                if lost or len(holders) != len(listing_ids):
                    raise ClaimLost(
                        f"another run took over {', '.join(lost) or 'a listing'} (this run's "
                        "claim ran out); the order was not sent"
                    )
                now = time.time()
                ref = await c.fetchval(
                    "INSERT INTO styldod_orders (account, listing_id, batch, part, name, body,"
                    " body_hash, idempotency_key, state, images, created_at, updated_at) VALUES"
                    " ($1, $2, $3, $4, $5, $6, $7, $8, 'sent', $9, $10, $10) RETURNING id",
                    self.account,
                    draft.listing_id,
                    draft.batch,
                    draft.part,
                    draft.name,
                    draft.body,
                    hashlib.sha256(draft.body).hexdigest(),
                    draft.idempotency_key,
                    len(draft.items),
                    now,
                )
                try:
                    await c.executemany(
                        "INSERT INTO styldod_order_items (order_ref, listing_id,"
                        " client_image_id, md5, path) VALUES ($1, $2, $3, $4, $5)",
                        [
                            (ref, i.listing_id, i.client_image_id, i.md5, i.path)
                            for i in draft.items
                        ],
                    )
                except asyncpg.UniqueViolationError as exc:
                    raise ClaimLost(f"an image of it is already in a live order ({exc})") from None
                await c.executemany(
                    "UPDATE styldod_images SET state = 'ordered', updated_at = $1"
                    " WHERE listing_id = $2 AND client_image_id = $3",
                    [(now, i.listing_id, i.client_image_id) for i in draft.items],
                )
                return int(ref)

        return await self._with(work)

    def settle_order(self, ref: int, outcome: OrderOutcome) -> None:
        async def write(c: Any) -> None:
            now = time.time()
            await c.execute(
                "UPDATE styldod_orders SET state = $1, order_id = COALESCE($2, order_id),"
                " status = COALESCE($3, status), error = $4, updated_at = $5 WHERE id = $6",
                outcome.state,
                outcome.order_id,
                outcome.status,
                outcome.error,
                now,
                ref,
            )
            if outcome.state != "refused":
                return
            await c.execute("UPDATE styldod_order_items SET live = FALSE WHERE order_ref = $1", ref)
            await c.execute(
                "UPDATE styldod_images AS im SET state = CASE WHEN EXISTS (SELECT 1 FROM"
                " styldod_order_items i WHERE i.listing_id = im.listing_id AND"
                " i.client_image_id = im.client_image_id AND i.live) THEN 'ordered' ELSE"
                " 'uploaded' END, updated_at = $1 WHERE im.state = 'ordered' AND"
                " (im.listing_id, im.client_image_id) IN (SELECT listing_id, client_image_id"
                " FROM styldod_order_items WHERE order_ref = $2)",
                now,
                ref,
            )
            if outcome.bad_image is not None:
                await c.execute(
                    "UPDATE styldod_images SET state = 'failed', image_url = NULL, error = $1,"
                    " updated_at = $2 WHERE listing_id = $3 AND client_image_id = $4",
                    outcome.error,
                    now,
                    *outcome.bad_image,
                )

        self._queue(write)

    # -- lifecycle ---------------------------------------------------------------------------

    async def record_event(self, payload: dict[str, Any]) -> bool:
        data = payload["data"]
        order_id = str(payload["orderID"])
        status = data.get("order_status")
        image_list = orjson.dumps(data.get("image_list", []))

        async def work(c: Any) -> bool:
            async with c.transaction():
                inserted = await c.fetchval(
                    "INSERT INTO styldod_events (account, order_id, event, updated_at, payload,"
                    " received_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
                    " RETURNING 1",
                    self.account,
                    order_id,
                    payload["event"],
                    str(data.get("updatedAt", "")),
                    orjson.dumps(payload),
                    time.time(),
                )
                if inserted and status:
                    await _write_progress(c, self.account, order_id, str(status), image_list)
                return bool(inserted)

        return await self._with(work)

    def record_progress(self, order_id: str, status: str, image_list: list[dict[str, Any]]) -> None:
        encoded = orjson.dumps(image_list)
        self._queue(lambda c: _write_progress(c, self.account, order_id, status, encoded))

    def record_output(
        self, order_id: str, client_image_id: str, path: str, size: int, md5: str
    ) -> None:
        self._cache_outputs[(order_id, client_image_id)] = (path, size, md5)

        async def write(c: Any) -> None:
            await c.execute(
                "INSERT INTO styldod_outputs (account, order_id, client_image_id, path, size,"
                " md5) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account, order_id,"
                " client_image_id) DO UPDATE SET path = excluded.path, size = excluded.size,"
                " md5 = excluded.md5",
                self.account,
                order_id,
                client_image_id,
                path,
                size,
                md5,
            )

        self._queue(write)

    async def output(self, order_id: str, client_image_id: str) -> tuple[str, int, str] | None:
        known = self._cache_outputs.get((order_id, client_image_id))
        if known is not None:
            return known

        async def work(c: Any) -> tuple[str, int, str] | None:
            row = await c.fetchrow(
                "SELECT path, size, md5 FROM styldod_outputs WHERE account = $1 AND"
                " order_id = $2 AND client_image_id = $3",
                self.account,
                order_id,
                client_image_id,
            )
            return (row["path"], int(row["size"]), row["md5"]) if row else None

        return await self._with(work)

    # -- reading it all ----------------------------------------------------------------------

    async def orders(self) -> list[OrderRecord]:
        await self._flush_now()

        async def work(c: Any) -> list[OrderRecord]:
            rows = await c.fetch(
                f"SELECT {_ORDER_COLUMNS} FROM {_ORDER_FROM} WHERE o.account = $1 ORDER BY o.id",  # noqa: S608
                self.account,
            )
            return [_order(row) for row in rows]

        return await self._with(work)

    async def order_by_id(self, order_id: str) -> OrderRecord | None:
        async def work(c: Any) -> OrderRecord | None:
            row = await c.fetchrow(
                f"SELECT {_ORDER_COLUMNS} FROM {_ORDER_FROM} WHERE o.account = $1"  # noqa: S608
                " AND o.order_id = $2",
                self.account,
                order_id,
            )
            return _order(row) if row else None

        return await self._with(work)

    async def listings(self) -> list[ListingView]:
        await self._flush_now()

        async def work(c: Any) -> list[ListingView]:
            rows = await c.fetch(
                "SELECT id, identity, name, label FROM styldod_listings WHERE account = $1"
                " ORDER BY id",
                self.account,
            )
            return [
                await _load_view(c, Listing(r["identity"], r["name"]), r["id"], r["label"])
                for r in rows
            ]

        return await self._with(work)

    async def events(self, order_id: str) -> list[str]:
        async def work(c: Any) -> list[str]:
            rows = await c.fetch(
                "SELECT event FROM styldod_events WHERE account = $1 AND order_id = $2"
                " ORDER BY received_at",
                self.account,
                order_id,
            )
            return [row["event"] for row in rows]

        return await self._with(work)

    async def failures(self, limit: int = 1000) -> list[tuple[str, str]]:
        await self._flush_now()

        async def work(c: Any) -> list[tuple[str, str]]:
            rows = await c.fetch(
                "SELECT path, error FROM styldod_failures WHERE account = $1 UNION ALL"
                " SELECT i.path, COALESCE(i.error, 'failed') FROM styldod_images i JOIN"
                " styldod_listings l ON l.id = i.listing_id WHERE l.account = $1 AND"
                " i.state = 'failed' ORDER BY 1 LIMIT $2",
                self.account,
                limit,
            )
            return [(row[0], row[1]) for row in rows]

        return await self._with(work)

    # -- lifetime ----------------------------------------------------------------------------

    async def flush(self) -> None:
        await self._flush_now()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush_now(), 30)
            await self._pool.close()
            self._pool = None


async def _free_label(c: Any, account: str, name: str) -> str:
    label, number = name, 1
    while await c.fetchval(
        "SELECT 1 FROM styldod_listings WHERE account = $1 AND label = $2", account, label
    ):
        number += 1
        label = f"{name} [{number}]"
    return label


def _order(row: Any) -> OrderRecord:
    values = list(row)
    values[5] = bytes(values[5])
    if values[12] is not None:
        values[12] = bytes(values[12])
    return OrderRecord(*values)


async def _load_view(c: Any, listing: Listing, listing_id: int, label: str) -> ListingView:
    view = ListingView(listing, listing_id, label)
    for row in await c.fetch(
        "SELECT client_image_id, path, size, mtime_ns, md5, image_url, state FROM styldod_images"
        " WHERE listing_id = $1",
        listing_id,
    ):
        view.images[row[0]] = ImageRecord(*row)
    refs: set[int] = set()
    for row in await c.fetch(
        "SELECT client_image_id, md5, order_ref FROM styldod_order_items WHERE listing_id = $1"
        " AND live ORDER BY order_ref",
        listing_id,
    ):
        image = view.images.get(row[0])
        if image is not None:
            image.ordered_md5, image.order_ref = row[1], row[2]
        refs.add(row[2])
    for row in await c.fetch(
        f"SELECT {_ORDER_COLUMNS} FROM {_ORDER_FROM} WHERE o.listing_id = $1"  # noqa: S608
        " OR o.id = ANY($2::BIGINT[]) ORDER BY o.id",
        listing_id,
        sorted(refs),
    ):
        order = _order(row)
        view.orders[order.ref] = order
    return view


async def _write_progress(
    c: Any, account: str, order_id: str, status: str, image_list: bytes
) -> None:
    row = await c.fetchrow(
        "SELECT status FROM styldod_orders WHERE account = $1 AND order_id = $2",
        account,
        order_id,
    )
    if row is not None and status_rank(row[0]) > status_rank(status):
        return  # an older report arriving late
    await c.execute(
        "UPDATE styldod_orders SET status = $1, result = $2, updated_at = $3"
        " WHERE account = $4 AND order_id = $5",
        status,
        image_list,
        time.time(),
        account,
        order_id,
    )
