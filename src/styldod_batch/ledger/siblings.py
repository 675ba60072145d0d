"""One key, one record: a ledger that would start empty while another ledger of the same key
holds orders is refused, never silently forked.

Two cases start an account's ledger afresh although its orders are recorded elsewhere:

* **another spelling of the service.** ``https://localhost:8443`` and
  ``https://127.0.0.1:8443`` are one service to the user, two accounts to a ledger (no
  spelling rule can know that two host names are one host);
* **a new home.** A run against a shared PostgreSQL ledger that holds nothing of the account,
  while the local ledger of the same account holds its orders.

Either way every listing would be ordered, and billed, again. The run stops with the place of
the other record and the two ways on: carry it over (``styldod-batch import-ledger``), or say
that this is another account indeed (``--separate-ledger``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from styldod_batch.errors import LedgerError
from styldod_batch.identity import key_fingerprint
from styldod_batch.ledger.dialect import Dialect, Tx
from styldod_batch.ledger.location import ledger_file, ledgers_in
from styldod_batch.ledger.transfer import counts


@dataclass(frozen=True, slots=True)
class OtherRecord:
    """Another ledger of the same key that holds orders."""

    where: str
    base_url: str
    orders: int


async def refuse_fork(
    db: Dialect, *, base_url: str, api_key: str | None, own_path: Path | None, shared: bool
) -> None:
    """Raise ``LedgerError`` when this account's ledger holds no order yet while another
    ledger of its key does (see the module's docstring)."""
    if not api_key or (await counts(db))["orders"]:
        return
    fingerprint = key_fingerprint(api_key)
    if shared:  # a shared ledger: its other accounts, then the local ledger
        others = await db.run(_other_accounts(db, fingerprint), write=False, what="its accounts")
        local = ledger_file(None, base_url, api_key)[0]
        if not others and local.exists():
            found = await asyncio.to_thread(_read_file, local, fingerprint)
            if found is not None and found.orders:
                raise LedgerError(
                    f"the shared ledger at {db.location} holds no order of this account yet, "
                    f"while the local ledger {local} holds {found.orders}: carry them over "
                    f"first with `styldod-batch import-ledger {local} --state {db.location}` "
                    "(idempotent, verified), or pass --separate-ledger to start the shared "
                    "one empty (every listing would be ordered again)"
                )
    else:
        if own_path is None:  # a ledger file of the user's choosing: no folder to look in
            return
        siblings = [p for p in ledgers_in(own_path.parent) if p != own_path]
        found_all = await asyncio.to_thread(lambda: [_read_file(p, fingerprint) for p in siblings])
        others = [f for f in found_all if f is not None and f.base_url != base_url]
    others = [o for o in others if o.orders]
    if others:
        other = max(others, key=lambda o: o.orders)
        raise LedgerError(
            f"this API key already has a ledger for {other.base_url} ({other.orders} orders, "
            f"at {other.where}), and none for {base_url}. If both name one service, run "
            f"with --base-url {other.base_url}, or carry that ledger over with "
            f"`styldod-batch import-ledger {other.where}`; if {base_url} is another service, "
            "pass --separate-ledger to start its own ledger"
        )


def _read_file(path: Path, fingerprint: str) -> OtherRecord | None:
    """The base URL and order count of a local ledger of ``fingerprint``'s key, else None."""
    with contextlib.suppress(sqlite3.Error, OSError):
        connection = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
        try:
            meta = dict(connection.execute("SELECT name, value FROM meta").fetchall())
            if meta.get("key") != fingerprint or meta.get("carried_to"):
                return None
            (orders,) = connection.execute("SELECT count(*) FROM orders").fetchone()
            return OtherRecord(str(path), str(meta.get("base_url", "")), int(orders))
        finally:
            connection.close()
    return None


def _other_accounts(db: Dialect, fingerprint: str) -> Callable[[Tx], Awaitable[list[OtherRecord]]]:
    async def work(tx: Tx) -> list[OtherRecord]:
        rows = await tx.fetchall(
            "SELECT k.account, coalesce(b.value, ''), (SELECT count(*) FROM styldod_orders o"
            " WHERE o.account = k.account) FROM styldod_meta k LEFT JOIN styldod_meta b"
            " ON b.account = k.account AND b.name = 'base_url'"
            " WHERE k.name = 'key' AND k.value = $1 AND k.account <> $2",
            fingerprint,
            db.account,
        )
        return [OtherRecord(db.location, str(url), int(n)) for _account, url, n in rows]

    return work
