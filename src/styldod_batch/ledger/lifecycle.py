"""What happens to an order after it is placed: events, polls, outputs (one set of
statements for every dialect)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from styldod_batch.errors import LedgerError
from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.faults import storable_row
from styldod_batch.ledger.reads import ORDER_COLUMNS, ORDER_FROM, LedgerReads, order_record
from styldod_batch.ledger.records import OrderRecord
from styldod_batch.ledger.schema import WEBHOOK_META_KEEP, WEBHOOK_META_READ
from styldod_batch.status import status_rank


def new_webhook_secret() -> str:
    """32 random bytes, URL-safe: it goes into the webhook URL's path as it is."""
    return secrets.token_urlsafe(32)


class LedgerLifecycle(LedgerReads):
    read_only: bool

    def _queue(self, what: str, run: Callable[[Tx], Awaitable[None]]) -> None:
        raise NotImplementedError

    async def webhook_secret(self, earlier: str | None = None) -> str:
        """The account's webhook path token, kept in the ledger: drawn once (or ``earlier``,
        one an older version kept elsewhere), then the same for every run and process, so an
        order placed by one run reaches a later one's receiver."""
        read = self.db.q(WEBHOOK_META_READ)
        await self._settled()

        async def work(tx: Tx) -> str:
            row = await tx.fetchone(read)
            if row is None and not self.read_only:
                keep = self.db.q(WEBHOOK_META_KEEP)
                await tx.execute(keep, earlier or new_webhook_secret())
                row = await tx.fetchone(read)  # of two processes, the first one's
            if row is None:
                raise LedgerError(f"{self.location}: no webhook secret is kept here yet")
            return str(row[0])

        secret: str = await self.db.run(work, what="the webhook secret")
        return secret

    async def release_order(self, which: str) -> OrderRecord:
        """Give up an order whose outcome is unknown (``sent``), found by its Idempotency-Key
        or its name: its images are free for a new order under a new key, and its own key
        is never sent again. Only for an order the user knows the service never created
        (``styldod-batch release``); runs themselves never do this."""
        q = self.db.q
        await self._settled()

        async def work(tx: Tx) -> OrderRecord:
            found = await tx.fetchall(
                q(
                    f"SELECT {ORDER_COLUMNS} FROM {ORDER_FROM} WHERE {{ao}}o.state = 'sent'"  # noqa: S608
                    " AND (o.idempotency_key = ? OR o.name = ?)"
                ),
                which,
                which,
            )
            if len(found) != 1:
                raise LedgerError(
                    f"{self.location}: {len(found) or 'no'} orders of unknown outcome go by "
                    f"{which!r}" + (": name one by its Idempotency-Key" if found else "")
                )
            order = order_record(found[0])
            now = time.time()
            await tx.execute(
                q("UPDATE {p}orders SET state = 'refused', error = ?, updated_at = ? WHERE id = ?"),
                f"released by hand (was: {order.error or 'outcome unknown'})",
                now,
                order.ref,
            )
            await free_images(self.db, tx, order.ref, now)
            return order

        released: OrderRecord = await self.db.run(work, what=f"the release of {which}")
        return released

    async def record_event(self, payload: dict[str, Any]) -> bool:
        data, q = payload["data"], self.db.q
        order_id = str(payload["orderID"])
        status = data.get("order_status")
        image_list = orjson.dumps(data.get("image_list", []))
        event, updated = str(payload["event"]), str(data.get("updatedAt", ""))
        args = (*storable_row((order_id, event, updated)), orjson.dumps(payload), time.time())
        await self._settled()

        async def work(tx: Tx) -> bool:
            inserted = await tx.fetchone(
                q(
                    "INSERT INTO {p}events ({ac}order_id, event, updated_at, payload, received_at)"
                    " VALUES ({av}?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1"
                ),
                *args,
            )
            if inserted and status:
                await write_progress(self.db, tx, order_id, str(status), image_list)
            return inserted is not None

        return await self.db.run(work, what=f"an event of order {order_id}")

    def record_progress(self, order_id: str, status: str, image_list: list[dict[str, Any]]) -> None:
        encoded = orjson.dumps(image_list)

        async def run(tx: Tx) -> None:
            await write_progress(self.db, tx, order_id, status, encoded)

        self._queue(f"the progress of order {order_id}", run)

    def record_output(
        self, order_id: str, client_image_id: str, path: str, size: int, md5: str
    ) -> None:
        self._outputs[(order_id, client_image_id)] = (path, size, md5)
        args, q = storable_row((order_id, client_image_id, path, size, md5)), self.db.q

        async def run(tx: Tx) -> None:
            await tx.execute(
                q(
                    "INSERT INTO {p}outputs ({ac}order_id, client_image_id, path, size, md5)"
                    " VALUES ({av}?, ?, ?, ?, ?) ON CONFLICT ({ac}order_id, client_image_id)"
                    " DO UPDATE SET path = excluded.path, size = excluded.size,"
                    " md5 = excluded.md5"
                ),
                *args,
            )

        self._queue(f"the output {path}", run)


async def write_progress(
    db: Dialect, tx: Tx, order_id: str, status: str, image_list: bytes
) -> None:
    """What a poll or an event saw; it never moves an order's status backwards."""
    row = await tx.fetchone(db.q("SELECT status FROM {p}orders WHERE {a}order_id = ?"), order_id)
    if row is not None and status_rank(row[0]) > status_rank(status):
        return  # an older report arriving late
    await tx.execute(
        db.q("UPDATE {p}orders SET status = ?, result = ?, updated_at = ? WHERE {a}order_id = ?"),
        status,
        image_list,
        time.time(),
        order_id,
    )


async def free_images(db: Dialect, tx: Tx, ref: int, now: float) -> None:
    """The images of order ``ref`` are in no live order through it any more."""
    await tx.execute(db.q("UPDATE {p}order_items SET live = NOT {true} WHERE order_ref = ?"), ref)
    await tx.execute(
        db.q(
            "UPDATE {p}images SET state = CASE WHEN EXISTS (SELECT 1 FROM"
            " {p}order_items i WHERE i.listing_id = {p}images.listing_id AND"
            " i.client_image_id = {p}images.client_image_id AND i.live = {true})"
            " THEN 'ordered' ELSE 'uploaded' END, updated_at = ? WHERE state = 'ordered'"
            " AND (listing_id, client_image_id) IN (SELECT listing_id, client_image_id"
            " FROM {p}order_items WHERE order_ref = ?)"
        ),
        now,
        ref,
    )
