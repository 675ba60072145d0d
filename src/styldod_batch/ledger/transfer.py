"""Carrying an account's record from one ledger into another: a local SQLite ledger into a
shared PostgreSQL one, or a rotated key's ledger into the new key's.

A copy is keyed by what identifies each row (a listing by its identity, an order by its
Idempotency-Key, an image by its listing and ``client_image_id``), so running it twice adds
nothing the second time, and a target that already holds some of the rows keeps its own.
The counts of both sides are read back after the copy: the import is verified, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.schema import WEBHOOK_META_KEEP, WEBHOOK_META_READ

# What each table is counted by, on either side (account-scoped through {a}/{al}/{ao}).
_COUNTS = {
    "listings": "SELECT count(*) FROM {p}listings WHERE {a}1 = 1",
    "images": "SELECT count(*) FROM {p}images i JOIN {p}listings l ON l.id = i.listing_id"
    " WHERE {al}1 = 1",
    "orders": "SELECT count(*) FROM {p}orders WHERE {a}1 = 1",
    "placed orders": "SELECT count(*) FROM {p}orders WHERE {a}state = 'created'",
    "outputs": "SELECT count(*) FROM {p}outputs WHERE {a}1 = 1",
}


@dataclass(slots=True)
class TransferReport:
    """What a copy found and did; ``missing`` names rows of the source the target lacks."""

    source: dict[str, int] = field(default_factory=dict)
    target: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unknown_outcome: int = 0  # orders carried whose outcome is still unknown (``sent``)

    @property
    def verified(self) -> bool:
        return not self.missing


async def counts(db: Dialect) -> dict[str, int]:
    async def work(tx: Tx) -> dict[str, int]:
        found = {}
        for name, sql in _COUNTS.items():
            row = await tx.fetchone(db.q(sql))
            found[name] = int(row[0]) if row else 0
        return found

    return await db.run(work, write=False, what="its counts")


async def placed_orders(db: Dialect) -> int:
    return (await counts(db))["placed orders"]


async def copy_account(source: Dialect, target: Dialect) -> TransferReport:
    """Copy every row of ``source``'s account that ``target``'s lacks, in one transaction of
    the target's; then verify that each of the source's listings, images and orders is there."""
    rows = await source.run(_read_all(source), write=False, what="what it holds")
    report = TransferReport(source=await counts(source))
    added = await target.run(_writer(target, rows), what="the imported rows")
    report.added = added
    report.target = await counts(target)
    report.missing = await target.run(_checker(target, rows), write=False, what="the check")
    report.unknown_outcome = sum(1 for order in rows["orders"] if order[8] == "sent")
    await _carry_webhook_secret(source, target)
    return report


async def _carry_webhook_secret(source: Dialect, target: Dialect) -> None:
    """Orders placed from the source carry its webhook secret in their URL: the target takes
    it, unless it has drawn one of its own already."""

    async def fetch(tx: Tx) -> str | None:
        row = await tx.fetchone(source.q(WEBHOOK_META_READ))
        return str(row[0]) if row else None

    async def keep(tx: Tx) -> None:
        await tx.execute(target.q(WEBHOOK_META_KEEP), secret)

    secret = await source.run(fetch, write=False, what="its webhook secret")
    if secret is not None:
        await target.run(keep, what="the webhook secret")


async def move_account(db: Dialect, old_account: str, new_account: str) -> int:
    """Hand every row of ``old_account`` to ``new_account`` within one database (a rotated
    key in a shared ledger); refused when the new account already holds a listing."""

    async def work(tx: Tx) -> int:
        taken = await tx.fetchone(
            "SELECT count(*) FROM styldod_listings WHERE account = $1", new_account
        )
        if taken and int(taken[0]):
            raise ValueError("the new key's ledger already holds listings")
        moved = 0
        for statement in _MOVES:
            moved += await tx.execute(statement, new_account, old_account)
        await tx.execute(  # orders placed under the old key carry its webhook secret
            "INSERT INTO styldod_meta (account, name, value) SELECT $1, name, value"
            " FROM styldod_meta WHERE account = $2 AND name = 'webhook_secret'"
            " ON CONFLICT DO NOTHING",
            new_account,
            old_account,
        )
        await tx.execute("DELETE FROM styldod_meta WHERE account = $1", old_account)
        return moved

    return await db.run(work, what="the carried-over rows")


_READS = {
    "listings": "SELECT id, identity, name, label, created_at FROM {p}listings WHERE {a}1 = 1"
    " ORDER BY id",
    "images": "SELECT i.listing_id, i.client_image_id, i.path, i.size, i.mtime_ns, i.md5,"
    " i.image_url, i.state, i.attempts, i.error, i.updated_at FROM {p}images i"
    " JOIN {p}listings l ON l.id = i.listing_id WHERE {al}1 = 1",
    "orders": "SELECT id, listing_id, batch, part, name, body, body_hash, idempotency_key,"
    " state, order_id, status, images, error, result, created_at, updated_at FROM {p}orders"
    " WHERE {a}1 = 1 ORDER BY id",
    "order_items": "SELECT it.order_ref, it.listing_id, it.client_image_id, it.md5, it.path,"
    " it.live FROM {p}order_items it JOIN {p}orders o ON o.id = it.order_ref WHERE {ao}1 = 1",
    "failures": "SELECT path, error, updated_at FROM {p}failures WHERE {a}1 = 1",
    "outputs": "SELECT order_id, client_image_id, path, size, md5 FROM {p}outputs WHERE {a}1 = 1",
    "events": "SELECT order_id, event, updated_at, payload, received_at FROM {p}events"
    " WHERE {a}1 = 1",
}
# The tables whose rows need no new ids: copied as they are, under the target's account.
_PLAIN_INSERTS = {
    "failures": "INSERT INTO {p}failures ({ac}path, error, updated_at) VALUES ({av}?, ?, ?)"
    " ON CONFLICT DO NOTHING",
    "outputs": "INSERT INTO {p}outputs ({ac}order_id, client_image_id, path, size, md5)"
    " VALUES ({av}?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "events": "INSERT INTO {p}events ({ac}order_id, event, updated_at, payload, received_at)"
    " VALUES ({av}?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
}
_MOVES = tuple(
    f"UPDATE styldod_{table} SET account = $1 WHERE account = $2"  # noqa: S608 (constants)
    for table in ("listings", "orders", "failures", "outputs", "events")
)
Rows = dict[str, list[tuple[Any, ...]]]


def _read_all(db: Dialect) -> Any:
    async def work(tx: Tx) -> Rows:
        return {name: await tx.fetchall(db.q(sql)) for name, sql in _READS.items()}

    return work


def _writer(db: Dialect, rows: Rows) -> Any:
    q = db.q

    async def work(tx: Tx) -> dict[str, int]:
        from styldod_batch.ledger.labels import free_label

        added = dict.fromkeys(("listings", "images", "orders", "outputs"), 0)
        listing_ids: dict[int, int] = {}
        for old_id, identity, name, label, created_at in rows["listings"]:
            found = await tx.fetchone(
                q("SELECT id FROM {p}listings WHERE {a}identity = ?"), identity
            )
            if found is None:
                found = await tx.fetchone(
                    q(
                        "INSERT INTO {p}listings ({ac}identity, name, label, owner, lease_until,"
                        " created_at) VALUES ({av}?, ?, ?, NULL, 0, ?) RETURNING id"
                    ),
                    identity,
                    name,
                    await free_label(db, tx, str(label)),
                    float(created_at),
                )
                added["listings"] += 1
            assert found is not None
            listing_ids[int(old_id)] = int(found[0])
        for image in rows["images"]:
            added["images"] += await tx.execute(
                q(
                    "INSERT INTO {p}images (listing_id, client_image_id, path, size, mtime_ns,"
                    " md5, image_url, state, attempts, error, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                ),
                listing_ids[int(image[0])],
                *image[1:],
            )
        order_ids: dict[int, int] = {}
        for order in rows["orders"]:
            old_ref, listing_id, key = int(order[0]), order[1], order[7]
            found = await tx.fetchone(
                q("SELECT id FROM {p}orders WHERE {a}idempotency_key = ?"), key
            )
            if found is None:
                found = await tx.fetchone(
                    q(
                        "INSERT INTO {p}orders ({ac}listing_id, batch, part, name, body,"
                        " body_hash, idempotency_key, state, order_id, status, images, error,"
                        " result, created_at, updated_at) VALUES ({av}?, ?, ?, ?, ?, ?, ?, ?,"
                        " ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id"
                    ),
                    None if listing_id is None else listing_ids[int(listing_id)],
                    *_blobs(order[2:]),
                )
                if found is None:  # the key is another account's: never take it over
                    continue
                added["orders"] += 1
            order_ids[old_ref] = int(found[0])
        for ref, listing_id, client_image_id, md5, path, live in rows["order_items"]:
            if int(ref) not in order_ids:
                continue
            await tx.execute(
                q(
                    "INSERT INTO {p}order_items (order_ref, listing_id, client_image_id, md5,"
                    " path, live) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                ),
                order_ids[int(ref)],
                listing_ids[int(listing_id)],
                client_image_id,
                md5,
                path,
                bool(live),
            )
        for table, statement in _PLAIN_INSERTS.items():
            for row in rows[table]:
                done = await tx.execute(q(statement), *_blobs(row))
                if table in added:
                    added[table] += done
        return added

    return work


def _checker(db: Dialect, rows: Rows) -> Any:
    q = db.q
    identities = {int(r[0]): str(r[1]) for r in rows["listings"]}

    async def work(tx: Tx) -> list[str]:
        missing = []
        for listing in identities.values():
            if not await tx.fetchone(q("SELECT 1 FROM {p}listings WHERE {a}identity = ?"), listing):
                missing.append(f"listing {listing}")
        for order in rows["orders"]:
            if not await tx.fetchone(
                q("SELECT 1 FROM {p}orders WHERE {a}idempotency_key = ?"), order[7]
            ):
                missing.append(f"order {order[4]} (Idempotency-Key {order[7]})")
        for image in rows["images"]:
            if not await tx.fetchone(
                q(
                    "SELECT 1 FROM {p}images i JOIN {p}listings l ON l.id = i.listing_id"
                    " WHERE {al}l.identity = ? AND i.client_image_id = ?"
                ),
                identities[int(image[0])],
                image[1],
            ):
                missing.append(f"image {image[2]}")
        return missing

    return work


def _blobs(values: Sequence[Any]) -> list[Any]:
    """SQLite hands BLOBs back as ``bytes`` already; a ``memoryview`` would not bind."""
    return [bytes(v) if isinstance(v, memoryview) else v for v in values]
