"""How the ledger fails, on real SQLite and PostgreSQL (issue 18, points 3 and 6): a busy
ledger waits (bounded) and says so, a full disk stops cleanly naming what was not recorded,
corrupt is said only after an integrity check, and misuse is one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from styldod_batch.errors import LedgerError, LedgerFailure, LedgerFull, LedgerUnavailable
from styldod_batch.ledger import (
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    Owner,
    SQLiteLedger,
)
from styldod_batch.ledger import dialect as ledger_dialect
from styldod_batch.ledger import sqlite as ledger_sqlite
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree, run_cli
from tests.servers import PostgresServer

LISTING = Listing("folder:/house", "house")


async def opened(path: Path) -> SQLiteLedger:
    return await SQLiteLedger.open(path, base_url="http://api", api_key="k")


def waiting_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "waiting" in r.getMessage()
    ]


# -- point 3: busy or locked ----------------------------------------------------------------


async def test_a_ledger_locked_by_another_process_is_waited_for_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sqlite, "BUSY_SLICE_S", 0.2, raising=False)
    path = tmp_path / "ledger.sqlite"
    ledger = await opened(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    caplog.set_level(logging.WARNING, logger="styldod_batch")
    try:
        claim = asyncio.create_task(ledger.claim(LISTING, Owner.for_this_run(), 30))
        await asyncio.sleep(1.5)
        assert not claim.done(), "nothing goes ahead while the ledger is locked"
        assert waiting_said(caplog), "the wait is said, not silent"
        other.execute("COMMIT")
        assert isinstance(await asyncio.wait_for(claim, 10), ListingView)
    finally:
        other.close()
        await ledger.close()


async def test_a_lock_held_past_the_bound_fails_closed_and_is_never_called_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sqlite, "BUSY_SLICE_S", 0.2, raising=False)
    monkeypatch.setattr(ledger_dialect, "MAX_WAIT_S", 1.0, raising=False)
    path = tmp_path / "ledger.sqlite"
    ledger = await opened(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            await asyncio.wait_for(ledger.claim(LISTING, Owner.for_this_run(), 30), 15)
        message = str(caught.value)
        assert "locked" in message and "corrupt" not in message and "move" not in message
    finally:
        other.close()
        await ledger.close()


# -- point 3: a full disk -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only: CI runs as root; elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    return filler


async def test_a_full_disk_stops_cleanly_naming_what_was_not_recorded(small_disk: Path) -> None:
    path = small_disk / "ledger.sqlite"
    ledger, owner = await opened(path), Owner.for_this_run()
    view = await ledger.claim(LISTING, owner, 30)
    assert isinstance(view, ListingView) and view.listing_id is not None
    item = OrderItem(view.listing_id, "1.jpg", "a" * 32, "/photos/1.jpg")
    draft = OrderDraft(view.listing_id, 1, 1, "house", b"{}", "key-1", [item])
    ref = await ledger.write_order_ahead(owner, draft)
    filler = fill(small_disk)
    ledger.settle_order(ref, OrderOutcome("created", order_id="ORD-1", status="pending"))
    for n in range(3000):
        record = ImageRecord(f"{n}.jpg", f"/photos/{n:0200}.jpg", 1, 1, "b" * 32, "u", "uploaded")
        ledger.record_image(view.listing_id, record)
    with pytest.raises(LedgerFull) as caught:
        await ledger.flush()
    message = str(caught.value)
    assert "out of space" in message and "ORD-1" in message and "Not recorded" in message
    assert "corrupt" not in message and "move it" not in message
    with pytest.raises(LedgerFull):
        await ledger.close()
    filler.unlink()
    again = await opened(path)
    try:
        orders = await again.orders()
        assert [(o.idempotency_key, o.state) for o in orders] == [("key-1", "sent")], (
            "the order stays sent: a re-run asks again with its key, never orders anew"
        )
    finally:
        await again.close()


# -- point 3: corrupt only after an integrity check -----------------------------------------


async def test_corrupt_is_said_only_after_an_integrity_check_and_never_move_it(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "ledger.sqlite"
    garbage.write_bytes(b"SQLite format 3\0" + b"\x13" * 8192)
    with pytest.raises(LedgerError) as caught:
        await opened(garbage)
    message = str(caught.value)
    assert "corrupt" in message and "integrity check" in message and str(garbage) in message
    assert "move it away" not in message and "Keep it" in message
    assert not isinstance(caught.value, LedgerFailure)


# -- point 6: PostgreSQL --------------------------------------------------------------------


async def test_postgres_at_max_connections_is_waited_for_and_said_so(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    from styldod_batch.ledger.postgres import PostgresLedger

    url = await postgres_server.create_database("at_max_connections")
    caplog.set_level(logging.WARNING, logger="styldod_batch")
    held: list[asyncpg.Connection] = []
    try:
        while True:
            try:
                held.append(await asyncpg.connect(url))
            except asyncpg.TooManyConnectionsError:
                break
            assert len(held) < 200
        opening = asyncio.create_task(PostgresLedger.open(url, base_url="http://api", api_key="k"))
        await asyncio.sleep(1.5)
        assert not opening.done(), "a full server is waited for, not an error"
        assert waiting_said(caplog)
        for connection in held[:5]:
            await connection.close()
        ledger = await asyncio.wait_for(opening, 20)
        await ledger.close()
    finally:
        for connection in held:
            await connection.close()


async def test_a_role_without_privileges_on_the_tables_is_told_which_at_start(
    postgres_server: PostgresServer,
) -> None:
    from styldod_batch.ledger.postgres import PostgresLedger

    url = await postgres_server.create_database("not_the_owner")
    owner_ledger = await PostgresLedger.open(url, base_url="http://api", api_key="k")
    await owner_ledger.close()
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("CREATE ROLE reader LOGIN")
        await admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    finally:
        await admin.close()
    as_reader = url.replace(f"{postgres_server.user}@", "reader@")
    with pytest.raises(LedgerError) as caught:
        await PostgresLedger.open(as_reader, base_url="http://api", api_key="k")
    message = str(caught.value)
    assert "reader lacks INSERT on table styldod_" in message and "\n" not in message


async def test_a_malformed_postgres_port_is_one_line_without_a_traceback() -> None:
    state = "postgresql://someone:hunter2@127.0.0.1:54x2/ledger"
    completed = await asyncio.to_thread(
        run_cli,
        "status",
        env={
            "STYLDOD_API_KEY": "k",
            "STYLDOD_BASE_URL": "http://127.0.0.1:9",
            "STYLDOD_STATE": state,
        },
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr and "port" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert "hunter2" not in completed.stderr


async def test_a_run_whose_ledger_disk_is_full_exits_5_naming_it_not_2(
    small_disk: Path, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    state = small_disk / "ledger.sqlite"
    await (await opened(state)).close()
    make_tree(tmp_path / "photos", folders=2, files=3, size=2048)
    box = await sandbox_factory(rps=1000)
    fill(small_disk)

    completed = await asyncio.to_thread(
        run_cli,
        "upload",
        str(tmp_path / "photos"),
        "--no-progress",
        env={
            "STYLDOD_API_KEY": box.api_key,
            "STYLDOD_BASE_URL": box.base_url,
            "STYLDOD_STATE": str(state),
        },
    )

    assert completed.returncode == 5, completed.stderr
    assert "out of space" in completed.stderr and "Traceback" not in completed.stderr
    assert "corrupt" not in completed.stderr and "move it" not in completed.stderr
    assert box.log.select(kind="api", path_prefix="/v2/orders") == [], "nothing ordered"
