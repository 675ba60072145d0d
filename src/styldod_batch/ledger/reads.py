"""The ledger's reads (status, download, dry runs), the same statements for every dialect."""

from __future__ import annotations

from array import array
from collections.abc import Collection
from typing import Any

from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.labels import free_label
from styldod_batch.ledger.records import (
    LIVE_ORDER_STATES,
    ImageRecord,
    Listing,
    ListingView,
    OrderRecord,
    PlacedCopy,
)
from styldod_batch.ledger.store import Ledger

# The account's images that a live order holds (``placed_sizes``, ``placed_copies``): the
# FROM and the start of the WHERE, which the caller ends with its condition on ``i.size``.
_LIVE_CONTENT = (
    "FROM {p}images i JOIN {p}listings l ON l.id = i.listing_id"
    " JOIN {p}order_items oi ON oi.listing_id = i.listing_id"
    " AND oi.client_image_id = i.client_image_id AND oi.live = {true}"
    " JOIN {p}orders o ON o.id = oi.order_ref"
    f" WHERE {{al}}o.state IN ({', '.join(repr(s) for s in sorted(LIVE_ORDER_STATES))}) AND"
)

ORDER_COLUMNS = (
    "o.id, o.listing_id, o.batch, o.part, o.name, o.body, o.idempotency_key, o.state,"
    " o.order_id, o.status, o.images, o.error, o.result, COALESCE(l.label, o.name)"
)
ORDER_FROM = "{p}orders o LEFT JOIN {p}listings l ON l.id = o.listing_id"


class LedgerReads(Ledger):
    db: Dialect
    _outputs: dict[tuple[str, str], tuple[str, int, str]]

    async def _settled(self) -> None:
        raise NotImplementedError

    async def _read(self, work: Any, what: str = "") -> Any:
        await self._settled()
        return await self.db.run(work, write=False, what=what)

    async def view(self, listing: Listing, taken: Collection[str] = ()) -> ListingView:
        q = self.db.q

        async def work(tx: Tx) -> ListingView:
            row = await tx.fetchone(
                q("SELECT id, label FROM {p}listings WHERE {a}identity = ?"), listing.identity
            )
            if row is None:  # the label a claim would take now
                label = await free_label(self.db, tx, listing.name, listing.identity, taken)
                return ListingView(listing, label=label)
            return await load_view(self.db, tx, listing, int(row[0]), str(row[1]))

        view: ListingView = await self._read(work)
        return view

    async def placed_sizes(self) -> array[int]:
        """The sizes of the contents live orders of the account hold, sorted, distinct: 8
        bytes each, read in pages so that a long history never loads at once."""
        q = self.db.q
        page = q(f"SELECT DISTINCT i.size {_LIVE_CONTENT} i.size > ? ORDER BY i.size LIMIT 10000")
        sizes: array[int] = array("q")
        while True:
            last = sizes[-1] if sizes else -1

            async def work(tx: Tx, after: int = last) -> list[Any]:
                return list(await tx.fetchall(page, after))

            rows = await self._read(work, what="the account's ordered sizes")
            sizes.extend(int(row[0]) for row in rows)
            if len(rows) < 10000:
                return sizes

    async def placed_copies(self, size: int) -> dict[str, PlacedCopy]:
        """The contents of ``size`` bytes that a live order of the account holds, by MD5:
        where each was ordered (one place each, the first ordered)."""
        q = self.db.q

        async def work(tx: Tx) -> dict[str, PlacedCopy]:
            rows = await tx.fetchall(
                q(
                    "SELECT oi.md5, l.label, oi.client_image_id, o.name, oi.path"
                    f" {_LIVE_CONTENT} i.size = ? ORDER BY o.id DESC"
                ),
                size,
            )
            return {str(r[0]): PlacedCopy(str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows}

        copies: dict[str, PlacedCopy] = await self._read(work, what="the account's ordered content")
        return copies

    async def _peek_batch(self, listing_id: int | None) -> int:
        async def work(tx: Tx) -> int:
            row = await tx.fetchone(
                self.db.q(
                    "SELECT COALESCE(MAX(batch), 0) + 1 FROM {p}orders"
                    " WHERE {a}listing_id IS NOT DISTINCT FROM ?"
                ),
                listing_id,
            )
            return int(row[0]) if row else 1

        batch: int = await self._read(work)
        return batch

    async def output(self, order_id: str, client_image_id: str) -> tuple[str, int, str] | None:
        known = self._outputs.get((order_id, client_image_id))
        if known is not None:
            return known

        async def work(tx: Tx) -> tuple[str, int, str] | None:
            row = await tx.fetchone(
                self.db.q(
                    "SELECT path, size, md5 FROM {p}outputs WHERE {a}order_id = ?"
                    " AND client_image_id = ?"
                ),
                order_id,
                client_image_id,
            )
            return (str(row[0]), int(row[1]), str(row[2])) if row else None

        found: tuple[str, int, str] | None = await self._read(work)
        return found

    async def orders(self) -> list[OrderRecord]:
        async def work(tx: Tx) -> list[OrderRecord]:
            rows = await tx.fetchall(
                self.db.q(
                    f"SELECT {ORDER_COLUMNS} FROM {ORDER_FROM} WHERE {{ao}}1 = 1 ORDER BY o.id"  # noqa: S608
                )
            )
            return [order_record(row) for row in rows]

        found: list[OrderRecord] = await self._read(work)
        return found

    async def order_by_id(self, order_id: str) -> OrderRecord | None:
        async def work(tx: Tx) -> OrderRecord | None:
            row = await tx.fetchone(
                self.db.q(f"SELECT {ORDER_COLUMNS} FROM {ORDER_FROM} WHERE {{ao}}o.order_id = ?"),  # noqa: S608
                order_id,
            )
            return order_record(row) if row else None

        found: OrderRecord | None = await self._read(work)
        return found

    async def listings(self) -> list[ListingView]:
        async def work(tx: Tx) -> list[ListingView]:
            rows = await tx.fetchall(
                self.db.q(
                    "SELECT id, identity, name, label FROM {p}listings WHERE {a}1 = 1 ORDER BY id"
                )
            )
            return [
                await load_view(self.db, tx, Listing(identity, name), int(id_), label)
                for id_, identity, name, label in rows
            ]

        found: list[ListingView] = await self._read(work)
        return found

    async def events(self, order_id: str) -> list[str]:
        async def work(tx: Tx) -> list[str]:
            rows = await tx.fetchall(
                self.db.q("SELECT event FROM {p}events WHERE {a}order_id = ? ORDER BY received_at"),
                order_id,
            )
            return [str(row[0]) for row in rows]

        found: list[str] = await self._read(work)
        return found

    async def failures(self, limit: int = 1000) -> list[tuple[str, str]]:
        async def work(tx: Tx) -> list[tuple[str, str]]:
            rows = await tx.fetchall(
                self.db.q(
                    "SELECT path, error FROM {p}failures WHERE {a}1 = 1 UNION ALL"
                    " SELECT i.path, COALESCE(i.error, 'failed') FROM {p}images i JOIN"
                    " {p}listings l ON l.id = i.listing_id WHERE {al}i.state = 'failed'"
                    " ORDER BY 1 LIMIT ?"
                ),
                limit,
            )
            return [(str(row[0]), str(row[1])) for row in rows]

        found: list[tuple[str, str]] = await self._read(work)
        return found


def order_record(row: tuple[Any, ...]) -> OrderRecord:
    values = list(row)
    values[5] = bytes(values[5])
    if values[12] is not None:
        values[12] = bytes(values[12])
    return OrderRecord(*values)


async def load_view(
    db: Dialect, tx: Tx, listing: Listing, listing_id: int, label: str
) -> ListingView:
    q = db.q
    view = ListingView(listing, listing_id, label)
    for row in await tx.fetchall(
        q(
            "SELECT client_image_id, path, size, mtime_ns, md5, image_url, state FROM {p}images"
            " WHERE listing_id = ?"
        ),
        listing_id,
    ):
        view.images[row[0]] = ImageRecord(*row)
    refs: set[int] = set()
    for client_image_id, md5, ref in await tx.fetchall(
        q(
            "SELECT client_image_id, md5, order_ref FROM {p}order_items WHERE listing_id = ?"
            " AND live = {true} ORDER BY order_ref"
        ),
        listing_id,
    ):
        image = view.images.get(client_image_id)
        if image is not None:
            image.ordered_md5, image.order_ref = md5, int(ref)
        refs.add(int(ref))
    marks = ", ".join("?" * len(refs)) or "NULL"
    for row in await tx.fetchall(
        q(
            f"SELECT {ORDER_COLUMNS} FROM {ORDER_FROM} WHERE o.listing_id = ?"  # noqa: S608
            f" OR o.id IN ({marks}) ORDER BY o.id"
        ),
        listing_id,
        *sorted(refs),
    ):
        order = order_record(row)
        view.orders[order.ref] = order
    return view
