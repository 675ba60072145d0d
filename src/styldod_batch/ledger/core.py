"""The ledger's one implementation: every statement and rule, for SQLite and PostgreSQL alike.

A dialect (``sqlite.py``, ``postgres.py``) supplies transactions, the few spellings that
differ, and what its errors mean (``faults.py``); the write-behind (``writer.py``) batches the
writes that may lag. Reads (``reads.py``), what follows an order's creation (``lifecycle.py``)
and the tables (``schema.py``) live beside it. Nothing here imports a dialect.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.faults import storable_row, storable_text
from styldod_batch.ledger.labels import free_label
from styldod_batch.ledger.lifecycle import LedgerLifecycle, free_images
from styldod_batch.ledger.owner import Owner
from styldod_batch.ledger.reads import load_view
from styldod_batch.ledger.records import (
    ClaimLost,
    Held,
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
)
from styldod_batch.ledger.writer import Write, WriteBehind


class _Again(Exception):
    """Another worker took the same download label meanwhile: claim again."""


class SQLLedger(LedgerLifecycle):
    """An account's ledger in a SQL database (see the module docstring)."""

    def __init__(self, db: Dialect, *, read_only: bool = False) -> None:
        self.db = db
        self.location = db.location
        self.read_only = read_only
        self._writer = WriteBehind(db)
        self._outputs: dict[tuple[str, str], tuple[str, int, str]] = {}
        # How an order is named in a message about a write that failed.
        self._order_names: dict[int, str] = {}
        self._closed = False

    def _start(self) -> None:
        if not self.read_only:
            self._writer.start()

    async def _settled(self) -> None:
        """Every write queued so far is committed (or has failed alone) before a call that
        reads or decides goes on; a writer that cannot record stops the caller here."""
        if self._closed:
            from styldod_batch.errors import LedgerError

            raise LedgerError(f"{self.location}: the ledger is closed")
        await self._writer.room()
        await self._writer.drain()

    def _queue(self, what: str, run: Any) -> None:
        if self.read_only:
            return
        self._writer.put(Write(what, run))

    # -- claims ------------------------------------------------------------------------------

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        me, q = owner.encode(), self.db.q
        await self._settled()

        async def work(tx: Tx) -> ListingView | Held:
            row = await tx.fetchone(
                q(
                    "SELECT id, owner, lease_until, label, {now} FROM {p}listings"
                    " WHERE {a}identity = ? {lock}"
                ),
                listing.identity,
            )
            if row is None:
                label = await free_label(self.db, tx, listing.name, listing.identity)
                created = await tx.fetchone(
                    q(
                        "INSERT INTO {p}listings ({ac}identity, name, label, owner, lease_until,"
                        " created_at) VALUES ({av}?, ?, ?, ?, {now} + ?, {now})"
                        " ON CONFLICT DO NOTHING RETURNING id"
                    ),
                    listing.identity,
                    listing.name,
                    label,
                    me,
                    float(lease_s),
                )
                if created is not None:
                    return ListingView(listing, int(created[0]), label)
                taken = await tx.fetchone(
                    q("SELECT 1 FROM {p}listings WHERE {a}identity = ?"), listing.identity
                )
                if taken is not None:  # another worker created it meanwhile, and holds it
                    return Held("another worker")
                raise _Again
            listing_id, holder_text, lease_until, label, now = row
            if holder_text and holder_text != me and lease_until > now:
                holder = Owner.decode(holder_text)
                if holder is None or not holder.certainly_dead():
                    return Held(holder.describe() if holder else "another run")
            await tx.execute(
                q("UPDATE {p}listings SET owner = ?, lease_until = {now} + ? WHERE id = ?"),
                me,
                float(lease_s),
                listing_id,
            )
            return await load_view(self.db, tx, listing, int(listing_id), str(label))

        for _attempt in range(10):
            try:
                claimed = await self.db.run(work, what=f"the claim of {listing.name}")
            except _Again:
                continue
            if isinstance(claimed, ListingView):
                for order in claimed.orders.values():
                    self._name_order(order.ref, order.name, order.idempotency_key)
            return claimed
        return Held("another worker")

    def _name_order(self, ref: int, name: str, key: str) -> None:
        self._order_names[ref] = f"order {name} (Idempotency-Key {key})"

    async def renew(self, owner: Owner, lease_s: float) -> None:
        me, q = owner.encode(), self.db.q
        if self.read_only:
            return
        self._writer.check()

        async def work(tx: Tx) -> None:
            await tx.execute(
                q("UPDATE {p}listings SET lease_until = {now} + ? WHERE owner = ?"),
                float(lease_s),
                me,
            )

        await self.db.run(work, what="the renewal of this run's claims")

    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        me, q = owner.encode(), self.db.q
        if self.read_only:
            return
        await self._settled()

        async def work(tx: Tx) -> None:
            free = "UPDATE {p}listings SET owner = NULL, lease_until = 0 WHERE owner = ?"
            if listing_id is None:
                await tx.execute(q(free), me)
            else:
                await tx.execute(q(free + " AND id = ?"), me, listing_id)

        await self.db.run(work, what="the release of this run's claims")

    # -- images and orders -------------------------------------------------------------------

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None:
        args = storable_row(image.row(listing_id, attempts, error, time.time()))
        path, failed, q = args[2], image.state == "failed", self.db.q

        async def run(tx: Tx) -> None:
            await tx.execute(
                q(
                    "INSERT INTO {p}images (listing_id, client_image_id, path, size, mtime_ns,"
                    " md5, image_url, state, attempts, error, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (listing_id, client_image_id) DO UPDATE SET path = excluded.path,"
                    " size = excluded.size, mtime_ns = excluded.mtime_ns, md5 = excluded.md5,"
                    " image_url = excluded.image_url, state = excluded.state,"
                    " attempts = {p}images.attempts + excluded.attempts, error = excluded.error,"
                    " updated_at = excluded.updated_at"
                ),
                *args,
            )
            if not failed:
                await tx.execute(q("DELETE FROM {p}failures WHERE {a}path = ?"), path)

        self._queue(f"image {path} ({image.state})", run)

    def record_failure(self, path: str, error: str) -> None:
        args, q = storable_row((path, error, time.time())), self.db.q

        async def run(tx: Tx) -> None:
            await tx.execute(
                q(
                    "INSERT INTO {p}failures ({ac}path, error, updated_at) VALUES ({av}?, ?, ?)"
                    " ON CONFLICT ({ac}path) DO UPDATE SET error = excluded.error,"
                    " updated_at = excluded.updated_at"
                ),
                *args,
            )

        self._queue(f"the failure of {args[0]}", run)

    async def next_batch(self, listing_id: int | None) -> int:
        q = self.db.q
        await self._settled()

        async def work(tx: Tx) -> int:
            if listing_id is not None:  # the listing is claimed: no other run numbers it
                row = await tx.fetchone(
                    q("SELECT COALESCE(MAX(batch), 0) + 1 FROM {p}orders WHERE listing_id = ?"),
                    listing_id,
                )
                return int(row[0]) if row else 1
            # Fixed-size batches are numbered across the account, and two runs may number
            # them at once: each number is claimed in one atomic upsert, never read then used.
            row = await tx.fetchone(
                q(
                    "INSERT INTO {p}meta ({ac}name, value) VALUES ({av}'next_batch',"
                    " (SELECT CAST(COALESCE(MAX(batch), 0) + 1 AS TEXT) FROM {p}orders"
                    " WHERE {a}listing_id IS NULL)) ON CONFLICT ({ac}name) DO UPDATE SET"
                    " value = CAST({greatest}(CAST({p}meta.value AS BIGINT) + 1,"
                    " CAST(excluded.value AS BIGINT)) AS TEXT) RETURNING value"
                )
            )
            return int(row[0]) if row else 1

        if self.read_only:  # a dry run numbers what it would send, and claims nothing
            return await self._peek_batch(listing_id)
        return await self.db.run(work, what="a batch number")

    async def in_live_orders(self, items: list[OrderItem]) -> list[OrderItem]:
        """Those of ``items`` whose very content is already in a live order (an image that
        went A -> B -> A): they are left out of a new order, never the whole order."""
        if not items:
            return []
        await self._settled()

        async def work(tx: Tx) -> list[OrderItem]:
            return await self._taken(tx, items)

        return await self.db.run(work, write=False)

    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int:
        me, q = owner.encode(), self.db.q
        listing_ids = sorted({item.listing_id for item in draft.items})
        marks = ", ".join("?" * len(listing_ids)) or "NULL"
        await self._settled()

        async def work(tx: Tx) -> int:
            # Written already (the answer to an earlier try was lost with the connection).
            known = await tx.fetchone(
                q("SELECT id FROM {p}orders WHERE idempotency_key = ?"), draft.idempotency_key
            )
            if known is not None:
                return int(known[0])
            holders = await tx.fetchall(
                q(
                    f"SELECT id, owner, name FROM {{p}}listings WHERE id IN ({marks})"  # noqa: S608
                    " ORDER BY id {lock}"
                ),
                *listing_ids,
            )
            lost = [name for _id, holder, name in holders if holder != me]
            if lost or len(holders) != len(listing_ids):
                raise ClaimLost(
                    f"another run took over {', '.join(lost) or 'a listing'} (this run's "
                    "claim ran out); the order was not sent"
                )
            taken = [i.client_image_id for i in await self._taken(tx, draft.items)]
            if taken:
                raise ClaimLost(
                    f"{', '.join(taken)}: already in a live order with this content; the order "
                    "was not sent"
                )
            now = time.time()
            created = await tx.fetchone(
                q(
                    "INSERT INTO {p}orders ({ac}listing_id, batch, part, name, body, body_hash,"
                    " idempotency_key, state, images, created_at, updated_at)"
                    " VALUES ({av}?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?, ?) RETURNING id"
                ),
                draft.listing_id,
                draft.batch,
                draft.part,
                storable_text(draft.name),
                draft.body,
                hashlib.sha256(draft.body).hexdigest(),
                draft.idempotency_key,
                len(draft.items),
                now,
                now,
            )
            assert created is not None
            ref = int(created[0])
            await tx.executemany(
                q(
                    "INSERT INTO {p}order_items (order_ref, listing_id, client_image_id, md5,"
                    " path) VALUES (?, ?, ?, ?, ?)"
                ),
                [
                    storable_row((ref, i.listing_id, i.client_image_id, i.md5, i.path))
                    for i in draft.items
                ],
            )
            await tx.executemany(
                q(
                    "UPDATE {p}images SET state = 'ordered', updated_at = ?"
                    " WHERE listing_id = ? AND client_image_id = ?"
                ),
                [(now, i.listing_id, i.client_image_id) for i in draft.items],
            )
            return ref

        ref = await self.db.run(work, what=f"order {draft.name} (before its send)")
        self._name_order(ref, draft.name, draft.idempotency_key)
        return ref

    async def _taken(self, tx: Tx, items: list[OrderItem]) -> list[OrderItem]:
        taken = []
        for item in items:
            row = await tx.fetchone(
                self.db.q(
                    "SELECT 1 FROM {p}order_items WHERE listing_id = ? AND client_image_id = ?"
                    " AND md5 = ? AND live = {true}"
                ),
                item.listing_id,
                item.client_image_id,
                item.md5,
            )
            if row is not None:
                taken.append(item)
        return taken

    def settle_order(self, ref: int, outcome: OrderOutcome) -> None:
        q, error = self.db.q, storable_text(outcome.error)

        async def run(tx: Tx) -> None:
            now = time.time()
            await tx.execute(
                q(
                    "UPDATE {p}orders SET state = ?, order_id = COALESCE(?, order_id),"
                    " status = COALESCE(?, status), error = ?, updated_at = ? WHERE id = ?"
                ),
                outcome.state,
                outcome.order_id,
                outcome.status,
                error,
                now,
                ref,
            )
            if outcome.state != "refused":
                return
            # A definite refusal: its images are free for a later order (under a new key).
            await free_images(self.db, tx, ref, now)
            if outcome.bad_image is not None:
                await tx.execute(
                    q(
                        "UPDATE {p}images SET state = 'failed', image_url = NULL, error = ?,"
                        " updated_at = ? WHERE listing_id = ? AND client_image_id = ?"
                    ),
                    error,
                    now,
                    *outcome.bad_image,
                )

        shown = f" as {outcome.order_id}" if outcome.order_id else ""
        name = self._order_names.get(ref, f"order #{ref}")
        self._queue(f"{name}: {outcome.state}{shown}", run)

    # -- lifetime ----------------------------------------------------------------------------

    async def flush(self) -> None:
        await self._settled()
        owed = self._writer.owed()
        if owed is not None:
            raise owed

    async def close(self) -> None:
        """Write what is queued and let go; raises, naming them, when writes were lost."""
        if self._closed:
            return
        try:
            if not self.read_only:
                await self._writer.drain()
        finally:
            self._closed = True
            await self._writer.stop()
            await self.db.close()
        owed = self._writer.owed()
        if owed is not None:
            raise owed
