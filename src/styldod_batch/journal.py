"""The job's durable state in SQLite (WAL): what is uploaded, which orders exist, their keys.

Upload results are written in batches by one writer thread, so the journal costs the
pipeline a queue append per file. An order is different: its ``Idempotency-Key`` and exact
body are committed *before* the request is sent (write-ahead), so a request whose outcome
is unknown after a crash is re-sent with the same key and body, never under a new key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.errors import ConfigurationError

SCHEMA_VERSION = "1"
JOURNAL_DIR = ".styldod-batch"
BATCH_ROWS = 512
BATCH_SECONDS = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    md5 TEXT,
    client_image_id TEXT,
    group_key TEXT,
    image_url TEXT,
    state TEXT NOT NULL,            -- uploaded | failed | skipped
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    state TEXT NOT NULL,            -- sent | created | failed
    order_id TEXT,
    status TEXT,
    images INTEGER NOT NULL,
    error TEXT,
    -- The latest image list the service reported (statuses, output URLs), as JSON.
    result BLOB,
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


class JournalError(ConfigurationError):
    """The journal cannot be used as it is (corrupt, or written for another job)."""


def key_fingerprint(api_key: str | None) -> str:
    """Identifies a key without revealing it."""
    if not api_key:
        return ""
    return hashlib.sha256(b"styldod-batch:" + api_key.encode()).hexdigest()[:16]


def default_path(inputs: list[str], working_dir: Path | None = None) -> Path:
    """``.styldod-batch/job-<hash of the absolute inputs>.sqlite`` in the working folder."""
    resolved = sorted(str(Path(p).resolve()) for p in inputs)
    digest = hashlib.sha256("\0".join(resolved).encode()).hexdigest()[:12]
    return (working_dir or Path.cwd()) / JOURNAL_DIR / f"job-{digest}.sqlite"


@dataclass(frozen=True, slots=True)
class InputRow:
    path: str
    size: int
    mtime_ns: int
    md5: str | None
    image_url: str | None
    state: str


# How far along a status is; a report of a lower one never overwrites a higher one.
STATUS_RANK = {
    "pre_processing": 1,
    "expert_assigned": 2,
    "post_processing": 3,
    "completed": 4,
    "error": 4,
}


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_key: str
    body: bytes
    idempotency_key: str
    state: str
    order_id: str | None
    status: str | None
    images: int
    error: str | None
    result: bytes | None = None

    @property
    def image_list(self) -> list[dict[str, Any]]:
        return list(orjson.loads(self.result)) if self.result else []

    @property
    def final(self) -> bool:
        return STATUS_RANK.get(self.status or "", 0) >= STATUS_RANK["completed"]


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL loses nothing a process crash can take; only an OS crash could.
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class Journal:
    """One job's journal. Reads run on the caller's thread; writes on one writer thread."""

    def __init__(self, path: Path, reader: sqlite3.Connection, *, writable: bool = True) -> None:
        self.path = path
        self._reader = reader
        self._queue: queue.Queue[tuple[str, tuple[Any, ...], Any] | None] = queue.Queue()
        self._writer = threading.Thread(
            target=self._write_loop, name="styldod-journal", daemon=True
        )
        self._writer_error: BaseException | None = None
        if writable:
            self._writer.start()

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        identity: Mapping[str, Any],
        force: bool = False,
        read_only: bool = False,
    ) -> Journal:
        """Open or create; refuse a corrupt file, or one written for another job."""
        existed = path.exists()
        if existed and path.stat().st_size == 0:
            raise JournalError(f"{path}: the journal is empty (truncated?); it was left as is")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            reader = _connect(path)
            check = reader.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check says {check}")
            if existed:
                tables = {
                    row[0]
                    for row in reader.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if "meta" not in tables:
                    raise sqlite3.DatabaseError("it holds no styldod-batch journal")
            if read_only:
                return cls(path, reader, writable=False)
            reader.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"{path}: the journal is corrupt or not a styldod-batch journal ({exc}); "
                "it was left as is: move it away, or pass another --journal"
            ) from exc
        cls._check_identity(reader, path, identity, force=force)
        return cls(path, reader)

    @staticmethod
    def _check_identity(
        reader: sqlite3.Connection, path: Path, identity: Mapping[str, Any], *, force: bool
    ) -> None:
        stored = dict(reader.execute("SELECT name, value FROM meta").fetchall())
        wanted = {
            name: orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
            for name, value in identity.items()
        }
        wanted["schema"] = SCHEMA_VERSION
        if stored:
            different = sorted(name for name in wanted if stored.get(name) != wanted[name])
            if different and not force:
                raise JournalError(
                    f"{path} was written for another job (different {', '.join(different)}); "
                    "pass --force to use it anyway, or --journal for a new one"
                )
        reader.executemany(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", list(wanted.items())
        )

    # -- reads -------------------------------------------------------------------------------

    def input(self, path: str) -> InputRow | None:
        row = self._reader.execute(
            "SELECT path, size, mtime_ns, md5, image_url, state FROM inputs WHERE path = ?", (path,)
        ).fetchone()
        return InputRow(*row) if row else None

    def order(self, order_key: str) -> OrderRow | None:
        row = self._reader.execute(
            "SELECT order_key, body, idempotency_key, state, order_id, status, images, error,"
            " result FROM orders WHERE order_key = ?",
            (order_key,),
        ).fetchone()
        return OrderRow(*row) if row else None

    def orders(self) -> list[OrderRow]:
        rows = self._reader.execute(
            "SELECT order_key, body, idempotency_key, state, order_id, status, images, error,"
            " result FROM orders ORDER BY order_key"
        ).fetchall()
        return [OrderRow(*row) for row in rows]

    def order_by_id(self, order_id: str) -> OrderRow | None:
        row = self._reader.execute(
            "SELECT order_key, body, idempotency_key, state, order_id, status, images, error,"
            " result FROM orders WHERE order_id = ?",
            (order_id,),
        ).fetchone()
        return OrderRow(*row) if row else None

    def output(self, order_id: str, client_image_id: str) -> tuple[str, int, str] | None:
        row = self._reader.execute(
            "SELECT path, size, md5 FROM outputs WHERE order_id = ? AND client_image_id = ?",
            (order_id, client_image_id),
        ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def counts(self) -> dict[str, int]:
        return dict(
            self._reader.execute("SELECT state, COUNT(*) FROM inputs GROUP BY state").fetchall()
        )

    def failures(self, limit: int = 1000) -> list[tuple[str, str]]:
        return self._reader.execute(
            "SELECT path, last_error FROM inputs WHERE state = 'failed' ORDER BY path LIMIT ?",
            (limit,),
        ).fetchall()

    def events(self, order_id: str) -> list[str]:
        return [
            row[0]
            for row in self._reader.execute(
                "SELECT event FROM events WHERE order_id = ? ORDER BY received_at", (order_id,)
            )
        ]

    def meta(self) -> dict[str, str]:
        return dict(self._reader.execute("SELECT name, value FROM meta").fetchall())

    # -- writes (batched) --------------------------------------------------------------------

    def record_input(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        *,
        state: str,
        md5: str | None = None,
        client_image_id: str | None = None,
        group_key: str | None = None,
        image_url: str | None = None,
        attempts: int = 0,
        error: str | None = None,
    ) -> None:
        self._put(
            "input",
            (
                path,
                size,
                mtime_ns,
                md5,
                client_image_id,
                group_key,
                image_url,
                state,
                attempts,
                error,
                time.time(),
            ),
        )

    async def write_order_ahead(
        self, order_key: str, body: bytes, idempotency_key: str, images: int
    ) -> None:
        """Durable before it returns: everything queued before it is committed with it."""
        await self._sync(
            "order_ahead",
            (
                order_key,
                hashlib.sha256(body).hexdigest(),
                body,
                idempotency_key,
                images,
                time.time(),
            ),
        )

    def record_order(
        self,
        order_key: str,
        *,
        state: str,
        order_id: str | None = None,
        status: str | None = None,
        error: str | None = None,
    ) -> None:
        self._put("order", (state, order_id, status, error, time.time(), order_key))

    async def record_event(self, payload: dict[str, Any]) -> bool:
        """Durable before it returns; False when this event was recorded already."""
        data = payload["data"]
        result: bool = await self._sync(
            "event",
            (
                str(payload["orderID"]),
                payload["event"],
                str(data.get("updatedAt", "")),
                orjson.dumps(payload),
                time.time(),
                data.get("order_status"),
                orjson.dumps(data.get("image_list", [])),
            ),
        )
        return result

    def record_progress(self, order_id: str, status: str, image_list: list[dict[str, Any]]) -> None:
        """What a poll saw; like an event, it never moves an order's status backwards."""
        self._put("progress", (order_id, status, orjson.dumps(image_list)))

    def record_output(
        self, order_id: str, client_image_id: str, path: str, size: int, md5: str
    ) -> None:
        self._put("output", (order_id, client_image_id, path, size, md5))

    async def flush(self) -> None:
        await self._sync("flush", ())

    def close(self) -> None:
        """Commit what is queued and stop the writer (safe to call twice)."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        with contextlib.suppress(sqlite3.Error):
            self._reader.close()

    def _put(self, kind: str, args: tuple[Any, ...]) -> None:
        if self._writer_error is not None:
            raise JournalError(f"{self.path}: writing failed: {self._writer_error}")
        self._queue.put((kind, args, None))

    async def _sync(self, kind: str, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def resolve(value: Any, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(JournalError(f"{self.path}: writing failed: {error}"))
            else:
                done.set_result(value)

        self._put(kind, args)
        self._queue.put(("notify", (), lambda v, e: loop.call_soon_threadsafe(resolve, v, e)))
        return await done

    def _write_loop(self) -> None:
        connection = _connect(self.path)
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                deadline = time.monotonic() + BATCH_SECONDS
                closing = False
                while len(batch) < BATCH_ROWS and first[0] != "notify":
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        closing = True
                        break
                    batch.append(item)
                    if item[0] == "notify":
                        break
                self._commit(connection, batch)
                if closing:
                    return
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, batch: list[Any]) -> None:
        results: list[Any] = []
        error: BaseException | None = None
        try:
            connection.execute("BEGIN")
            for kind, args, _ in batch:
                if kind != "notify":
                    results.append(_WRITES[kind](connection, args))
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            error = self._writer_error = exc
        last = results[-1] if results else None
        for kind, _args, notify in batch:
            if kind == "notify":
                notify(last, error)


def _write_input(connection: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    connection.execute(
        "INSERT INTO inputs (path, size, mtime_ns, md5, client_image_id, group_key, image_url,"
        " state, attempts, last_error, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,"
        " md5=excluded.md5, client_image_id=excluded.client_image_id,"
        " group_key=excluded.group_key, image_url=excluded.image_url, state=excluded.state,"
        " attempts=inputs.attempts + excluded.attempts, last_error=excluded.last_error,"
        " updated_at=excluded.updated_at",
        args,
    )


def _write_order_ahead(connection: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    connection.execute(
        "INSERT INTO orders (order_key, body_hash, body, idempotency_key, images, updated_at,"
        " state) VALUES (?,?,?,?,?,?, 'sent') ON CONFLICT(order_key) DO NOTHING",
        args,
    )


def _write_order(connection: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    connection.execute(
        "UPDATE orders SET state=?, order_id=COALESCE(?, order_id), status=COALESCE(?, status),"
        " error=?, updated_at=? WHERE order_key=?",
        args,
    )


def _write_event(connection: sqlite3.Connection, args: tuple[Any, ...]) -> bool:
    order_id, event, updated_at, payload, received_at, status, image_list = args
    cursor = connection.execute(
        "INSERT OR IGNORE INTO events (order_id, event, updated_at, payload, received_at)"
        " VALUES (?,?,?,?,?)",
        (order_id, event, updated_at, payload, received_at),
    )
    if cursor.rowcount and status:
        _write_progress(connection, (order_id, status, image_list))
    return bool(cursor.rowcount)


def _write_progress(connection: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    order_id, status, image_list = args
    row = connection.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is not None and STATUS_RANK.get(row[0] or "", 0) > STATUS_RANK.get(status, 0):
        return  # an older event arriving late
    connection.execute(
        "UPDATE orders SET status = ?, result = ?, updated_at = ? WHERE order_id = ?",
        (status, image_list, time.time(), order_id),
    )


def _write_output(connection: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO outputs (order_id, client_image_id, path, size, md5)"
        " VALUES (?,?,?,?,?)",
        args,
    )


def _write_nothing(_connection: sqlite3.Connection, _args: tuple[Any, ...]) -> None:
    return None


_WRITES = {
    "progress": _write_progress,
    "output": _write_output,
    "input": _write_input,
    "order_ahead": _write_order_ahead,
    "order": _write_order,
    "event": _write_event,
    "flush": _write_nothing,
}


def iter_journals(working_dir: Path | None = None) -> Iterator[Path]:
    folder = (working_dir or Path.cwd()) / JOURNAL_DIR
    if folder.is_dir():
        yield from sorted(folder.glob("*.sqlite"))
