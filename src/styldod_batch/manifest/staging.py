"""The staged manifest: a manifest read once into a temporary SQLite index, checked whole
(files, repeats), then taken back listing by listing."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.errors import ConfigurationError, InputError
from styldod_batch.manifest.parse import records
from styldod_batch.manifest.rows import (
    MAX_PROBLEMS,
    Fatal,
    ManifestProblem,
    ManifestRow,
    Record,
    check_file,
)
from styldod_batch.models import ImageItem
from styldod_batch.scan import GroupEnd


def validate_manifest(
    path: Path, *, max_images_per_order: int = 100, max_problems: int = MAX_PROBLEMS
) -> list[ManifestProblem]:
    """Every problem of the manifest, in one streaming pass, before any request is sent.

    Beyond what ``read_manifest`` reports: files that are missing, empty, unreadable or not an
    accepted image type; a ``client_image_id`` or file listed twice in one listing.
    """
    with stage_manifest(path, max_problems=max_problems) as staged:
        return staged.problems


def manifest_items(
    path: Path, *, max_images_per_order: int = 100
) -> Iterator[ImageItem | InputError | GroupEnd]:
    """The manifest as the engine's scan events, listing by listing.

    A row that cannot be used becomes an ``InputError`` (the batch goes on without it); a
    ``GroupEnd`` follows each listing's last row. Raises ``ConfigurationError`` when the
    manifest as a whole cannot be read.
    """
    with stage_manifest(path) as staged:
        yield from staged.events()


class StagedManifest:
    """A manifest read once into a temporary index, with its problems, taken back by listing.

    Use as a context manager (or ``close()``): the index is a file in a temporary folder.
    """

    def __init__(self, manifest: Path, folder: tempfile.TemporaryDirectory[str]) -> None:
        self.manifest = manifest
        self._folder = folder
        self.db = sqlite3.connect(os.path.join(folder.name, "rows.sqlite"), check_same_thread=False)
        # A throw-away index: nothing to recover after a crash, so no journal and no syncs.
        self.db.executescript(_STAGING_SCHEMA)
        self.problems: list[ManifestProblem] = []
        # A problem with the manifest as a whole: nothing of it can be used.
        self.fatal: ManifestProblem | None = None
        self.rows = 0
        # Every option name its good rows set: the runner warns about the unknown ones.
        self.option_names: set[str] = set()

    def __enter__(self) -> StagedManifest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        self._folder.cleanup()

    def events(self) -> Iterator[ImageItem | InputError | GroupEnd]:
        """Rows that cannot be used first (as ``InputError``), then each listing's rows in
        file order, each listing closed by a ``GroupEnd``."""
        if self.fatal is not None:
            raise ConfigurationError(str(self.fatal))
        shown_manifest = str(self.manifest)
        failed = self.db.execute(
            "SELECT r.line, r.path, GROUP_CONCAT(p.shown, '; ') FROM rows r"
            " JOIN problems p ON p.line = r.line WHERE r.bad = 1 GROUP BY r.line ORDER BY r.line"
        )
        for line, path, text in failed:
            # A row without a file: the manifest's line stands in for it.
            yield InputError(path if path is not None else f"{shown_manifest}:{line}", text)
        # Listings in the order the manifest first names them.
        listings = self.db.execute(
            "SELECT listing, MIN(line) AS first FROM rows WHERE bad = 0"
            " GROUP BY listing ORDER BY first"
        ).fetchall()
        for listing, _first in listings:
            yield from self.listing_events(listing)

    def listing_events(self, listing: str) -> Iterator[ImageItem | InputError | GroupEnd]:
        rows = self.db.execute(
            "SELECT line, path, client_image_id, order_name, listing_name, sequence, options"
            " FROM rows WHERE listing = ? AND bad = 0 ORDER BY line",
            (listing,),
        )
        for line, path, client_image_id, order, name, sequence, options in rows:
            row = ManifestRow(
                line, path, client_image_id, order, sequence, orjson.loads(options), listing, name
            )
            reason, info, content_type = check_file(path)
            if reason is not None or info is None or content_type is None:
                problem = ManifestProblem(str(self.manifest), line, "path", str(reason))
                yield InputError(path, str(problem))
            else:
                yield _item(row, info, content_type)
        yield GroupEnd(listing)


_STAGING_SCHEMA = """
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA cache_size = -16000;
CREATE TABLE rows (
    line INTEGER PRIMARY KEY,
    listing TEXT,
    listing_name TEXT,
    order_name TEXT,
    client_image_id TEXT,
    path TEXT,
    sequence INTEGER,
    options BLOB,
    bad INTEGER NOT NULL DEFAULT 0
);
-- Each problem of a row: as the list of problems shows it, and as a run's failure names it.
CREATE TABLE problems (
    line INTEGER NOT NULL,
    column_name TEXT,
    message TEXT NOT NULL,
    shown TEXT NOT NULL
);
"""
_INSERT_BATCH = 4096


def stage_manifest(path: Path, *, max_problems: int = MAX_PROBLEMS) -> StagedManifest:
    """Read and check the whole manifest into a temporary index (see ``StagedManifest``).

    Every problem is kept in the index (each bad row fails alone in a run); the first
    ``max_problems`` are also in ``problems``, followed by a count of the rest.
    """
    staged = StagedManifest(path, tempfile.TemporaryDirectory(prefix="styldod-manifest-"))
    try:
        _stage(staged, path)
        _find_repeats(staged)
        staged.db.execute("CREATE INDEX rows_by_listing ON rows (listing, line) WHERE bad = 0")
        staged.problems = _first_problems(staged, max_problems)
    except BaseException:
        staged.close()
        raise
    return staged


def _stage(staged: StagedManifest, path: Path) -> None:
    """One pass over the manifest: good rows and bad rows (with their problems) into the
    index, in batches; repeats are found afterwards, over the whole index."""
    shown_manifest = str(path)
    db = staged.db
    good: list[tuple[Any, ...]] = []
    bad: list[tuple[Any, ...]] = []
    problems: list[tuple[Any, ...]] = []

    def flush() -> None:
        db.executemany(
            "INSERT INTO rows (line, listing, listing_name, order_name, client_image_id, path,"
            " sequence, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            good,
        )
        db.executemany("INSERT INTO rows (line, listing, path, bad) VALUES (?, ?, ?, 1)", bad)
        db.executemany(
            "INSERT INTO problems (line, column_name, message, shown) VALUES (?, ?, ?, ?)",
            problems,
        )
        good.clear()
        bad.clear()
        problems.clear()

    def fail(record: Record, found: list[ManifestProblem], shown: list[str] | None = None) -> None:
        bad.append((record.line, record.listing, record.path))
        if shown is None:
            brief = record.path is None
            shown = [_brief(p) if brief else str(p) for p in found]
        problems.extend(
            (p.line, p.column, p.message, text) for p, text in zip(found, shown, strict=True)
        )

    db.execute("BEGIN")
    try:
        for record in records(path):
            staged.rows += 1
            if record.problems or record.row is None:
                fail(record, record.problems)
            else:
                row = record.row
                reason, _info, _type = check_file(row.path)
                if reason is not None:
                    # The run's failure names the file already; the list of problems does not.
                    named = ManifestProblem(
                        shown_manifest, row.line, "path", f"{reason}: {row.path}"
                    )
                    alone = ManifestProblem(shown_manifest, row.line, "path", reason)
                    fail(record, [named], [str(alone)])
                else:
                    staged.option_names.update(row.options)
                    good.append(
                        (
                            row.line,
                            row.listing,
                            row.listing_name,
                            row.order,
                            row.client_image_id,
                            row.path,
                            row.sequence,
                            orjson.dumps(row.options),
                        )
                    )
            if len(good) + len(bad) >= _INSERT_BATCH:
                flush()
    except Fatal as fatal:
        staged.fatal = fatal.problem
        problems.append((fatal.problem.line, fatal.problem.column, fatal.problem.message, ""))
    else:
        if staged.rows == 0:
            problems.append((1, None, "the manifest lists no images", ""))
    flush()
    db.execute("COMMIT")


def _find_repeats(staged: StagedManifest) -> None:
    """A ``client_image_id``, then a file, named twice in one listing: every row after the
    first fails (the ledger knows an image by its listing and ID)."""
    db = staged.db
    manifest = str(staged.manifest)
    for column, message in (
        ("client_image_id", "{value!r} is already used in this order (line {first})"),
        ("path", "this file is already listed in this order (line {first})"),
    ):
        db.execute(f"CREATE INDEX repeats ON rows (listing, {column}, line) WHERE bad = 0")
        repeats = db.execute(
            f"SELECT line, {column}, first FROM (SELECT line, {column}, MIN(line) OVER"  # noqa: S608
            f" (PARTITION BY listing, {column}) AS first FROM rows WHERE bad = 0)"
            " WHERE line != first"
        ).fetchall()
        db.execute("BEGIN")
        for line, value, first in repeats:
            problem = ManifestProblem(
                manifest, line, column, message.format(value=value, first=first)
            )
            db.execute("UPDATE rows SET bad = 1 WHERE line = ?", (line,))
            db.execute(
                "INSERT INTO problems (line, column_name, message, shown) VALUES (?, ?, ?, ?)",
                (line, column, problem.message, str(problem)),
            )
        db.execute("COMMIT")
        db.execute("DROP INDEX repeats")


def _first_problems(staged: StagedManifest, max_problems: int) -> list[ManifestProblem]:
    manifest = str(staged.manifest)
    found = [
        ManifestProblem(manifest, line, column, message)
        for line, column, message in staged.db.execute(
            "SELECT line, column_name, message FROM problems ORDER BY line, rowid LIMIT ?",
            (max_problems,),
        )
    ]
    (total,) = staged.db.execute("SELECT COUNT(*) FROM problems").fetchone()
    omitted = total - len(found)
    if omitted > 0:
        (first,) = staged.db.execute(
            "SELECT line FROM problems ORDER BY line, rowid LIMIT 1 OFFSET ?", (max_problems,)
        ).fetchone()
        message = f"... and {omitted} more problem{'s' if omitted > 1 else ''}"
        found.append(ManifestProblem(manifest, first, None, message))
    return found


def _item(row: ManifestRow, info: os.stat_result, content_type: str) -> ImageItem:
    return ImageItem(
        path=row.path,
        relative=row.client_image_id,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        content_type=content_type,
        group=row.listing_name,
        client_image_id=row.client_image_id,
        sequence=row.sequence or 0,
        options=row.options,
        listing=row.listing,
    )


def _brief(problem: ManifestProblem) -> str:
    return f"{problem.column}: {problem.message}" if problem.column else problem.message
