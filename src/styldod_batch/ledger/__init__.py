"""The ledger: exactly-once orders by what an image is, however the job is run.

One ledger per API account. A listing (a folder, or a manifest's ``order``) is claimed by one
run at a time; an image is known by its listing and ``client_image_id`` and by its content;
an order's ``Idempotency-Key`` and body are written before its first send and reused until the
service definitely refuses it.
"""

from __future__ import annotations

from pathlib import Path

from styldod_batch.errors import LedgerFailure, LedgerFull, LedgerUnavailable
from styldod_batch.ledger.core import SQLLedger
from styldod_batch.ledger.location import default_state_dir, ledger_file, ledgers_in
from styldod_batch.ledger.null import NullLedger
from styldod_batch.ledger.owner import Owner
from styldod_batch.ledger.records import (
    ClaimLost,
    Held,
    ImageRecord,
    LedgerError,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    OrderRecord,
    PlacedCopy,
)
from styldod_batch.ledger.siblings import refuse_fork
from styldod_batch.ledger.sqlite import SQLiteLedger
from styldod_batch.ledger.store import Ledger
from styldod_batch.settings import Settings

__all__ = [
    "ClaimLost",
    "Held",
    "ImageRecord",
    "Ledger",
    "LedgerError",
    "LedgerFailure",
    "LedgerFull",
    "LedgerUnavailable",
    "Listing",
    "ListingView",
    "NullLedger",
    "OrderDraft",
    "OrderItem",
    "OrderOutcome",
    "OrderRecord",
    "Owner",
    "PlacedCopy",
    "SQLiteLedger",
    "default_state_dir",
    "ledger_path",
    "open_ledger",
]


def is_postgres_url(state: object) -> bool:
    return isinstance(state, str) and state.startswith(("postgresql://", "postgres://"))


def ledger_path(settings: Settings) -> Path:
    """The file that holds this account's ledger, as ``settings`` place it."""
    return ledger_file(settings.state, settings.base_url, settings.api_key)[0]


async def open_ledger(settings: Settings, *, read_only: bool = False) -> Ledger:
    """The account's ledger as ``settings`` choose it; a null one when they opt out.

    Read-only (dry runs, ``status``): a ledger that does not exist yet reads as empty.
    """
    if not settings.ledger:
        return NullLedger()
    ledger: SQLLedger
    shared = is_postgres_url(settings.state)
    path, in_folder = ledger_file(settings.state, settings.base_url, settings.api_key)
    if shared:
        from styldod_batch.ledger.postgres import PostgresLedger

        ledger = await PostgresLedger.open(
            str(settings.state),
            base_url=settings.base_url,
            api_key=settings.api_key,
            force=settings.force_state,
        )
    else:
        if read_only and (not path.exists() or path.stat().st_size == 0):
            return NullLedger()  # (an empty file: another run is creating it this moment)
        ledger = await SQLiteLedger.open(
            path,
            base_url=settings.base_url,
            api_key=settings.api_key,
            force=settings.force_state,
            read_only=read_only,
        )
    if read_only or settings.separate_ledger or settings.force_state:
        return ledger
    try:
        await refuse_fork(
            ledger.db,
            base_url=settings.base_url,
            api_key=settings.api_key,
            own_path=path if in_folder and not shared else None,
            shared=shared,
        )
    except BaseException:
        await ledger.close()
        raise
    return ledger


def known_ledgers(settings: Settings) -> list[Path]:
    """Every ledger in the folder ``settings`` point at (for ``status`` without a key)."""
    path, in_folder = ledger_file(settings.state, settings.base_url, settings.api_key)
    return ledgers_in(path.parent) if in_folder else ([path] if path.exists() else [])
