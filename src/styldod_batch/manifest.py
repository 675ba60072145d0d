"""Manifests: a CSV or JSON Lines file that lists a job's images, read as a stream.

Each row names one image file::

    path,client_image_id,order,sequence,basic_editing,style
    listing-1/front.jpg,,listing-1,1,true,
    listing-1/kitchen.jpg,kitchen-01,listing-1,2,,modern

or, as JSON Lines (``.jsonl`` / ``.ndjson``, or any file whose first character is ``{``)::

    {"path": "listing-1/front.jpg", "order": "listing-1", "options": {"basic_editing": true}}

``path`` is required and relative to the manifest's folder unless absolute. ``order`` names
the order the image goes in: it is the listing's identity, so every manifest of an account that
names ``listing-42`` speaks of one listing. Rows without one belong to their file's folder,
exactly as a folder run sees it (the order is named after the folder). ``client_image_id``
defaults to the path as written (POSIX form) with an ``order``, to the file name without;
``sequence`` is a positive integer. Options
come from an ``options`` JSON object, or from one column (field) per option: every name that is
not one of the fields above is an option. In CSV an empty cell sets nothing, and an option cell
is read as JSON when it parses (``true``, ``3``, ``"x"``), else as the text itself; a known
string option (``style``, ``notes``) keeps its text as written. A null sets nothing.

The rows of one order need not be together (a spreadsheet sorted by another column is fine):
the manifest is read once, a line at a time, into a temporary SQLite index, and the engine
takes it back listing by listing. Within a listing a ``client_image_id`` or a file may appear
once (they are what the ledger knows an image by). A listing larger than the order size is
split into several orders, as a folder is.

Memory stays bounded whatever the manifest's length: rows live in the index on disk, and only
one listing is taken back at a time.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from styldod_batch.contract import CONTENT_TYPES_BY_SUFFIX, OPTION_TYPES
from styldod_batch.errors import ConfigurationError, InputError
from styldod_batch.models import ImageItem
from styldod_batch.options import coerce_option, option_problem, show_value
from styldod_batch.scan import GroupEnd, ScanEvent, content_checked, folder_listing, shown

FIELDS = frozenset({"path", "client_image_id", "order", "sequence", "options"})
MAX_PROBLEMS = 1000
# A JSON line longer than this is reported, not read: one runaway line must not fill memory.
MAX_LINE_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_ACCEPTED_SUFFIXES = ", ".join(sorted(CONTENT_TYPES_BY_SUFFIX))

ManifestFormat = Literal["csv", "jsonl"]


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One reason a manifest row (or the manifest itself, at line 0) cannot be used."""

    manifest: str
    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f" {self.column}:" if self.column else ""
        return f"{self.manifest}:{self.line}:{where} {self.message}"


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One valid row. ``path`` is absolute, or resolved against the manifest's folder."""

    line: int
    path: str
    client_image_id: str
    order: str | None
    sequence: int | None
    options: dict[str, Any]
    # The listing's identity and name (see the module docstring).
    listing: str = ""
    listing_name: str = ""


def manifest_format(path: Path) -> ManifestFormat:
    """By suffix; otherwise JSON Lines when the first non-blank character is ``{``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with path.open("rb") as handle:
        first = True
        while chunk := handle.read(64 * 1024):
            if first:
                chunk, first = chunk.removeprefix(_BOM), False
            chunk = chunk.lstrip()
            if chunk:
                return "jsonl" if chunk.startswith(b"{") else "csv"
    return "csv"


def read_manifest(path: Path) -> Iterator[ManifestRow | ManifestProblem]:
    """Rows in file order; a row that cannot be used yields its problem(s) instead.

    A problem with the manifest as a whole (unreadable, no ``path`` column...) is yielded last.
    """
    try:
        for record in _records(path):
            if record.problems:
                yield from record.problems
            elif record.row is not None:
                yield record.row
    except _Fatal as fatal:
        yield fatal.problem


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
            reason, info, content_type = _check_file(path)
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

    def fail(record: _Record, found: list[ManifestProblem], shown: list[str] | None = None) -> None:
        bad.append((record.line, record.listing, record.path))
        if shown is None:
            brief = record.path is None
            shown = [_brief(p) if brief else str(p) for p in found]
        problems.extend(
            (p.line, p.column, p.message, text) for p, text in zip(found, shown, strict=True)
        )

    db.execute("BEGIN")
    try:
        for record in _records(path):
            staged.rows += 1
            if record.problems or record.row is None:
                fail(record, record.problems)
            else:
                row = record.row
                reason, _info, _type = _check_file(row.path)
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
    except _Fatal as fatal:
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


class ManifestFeed:
    """A manifest as a run's input: staged once (in a thread), then taken back by listing."""

    can_relist = True

    def __init__(
        self, path: Path, *, staged: StagedManifest | None = None, check_content: bool = False
    ) -> None:
        self.path = path
        self._staged = staged
        self._owned = staged is None
        # Each image's head and tail read in the feed's thread (``scan.content_checked``).
        self._check = content_checked if check_content else iter

    def events(self) -> AsyncIterator[ScanEvent]:
        from styldod_batch.scan_thread import threaded

        def generate() -> Iterator[ScanEvent]:
            if self._staged is None:
                self._staged = stage_manifest(self.path)
            yield from self._check(self._staged.events())

        return threaded(generate)

    def relist(self, listing: str) -> AsyncIterator[ScanEvent]:
        from styldod_batch.scan_thread import threaded

        assert self._staged is not None
        staged = self._staged
        return threaded(lambda: self._check(staged.listing_events(listing)))

    def count(self, stop: threading.Event) -> int | None:
        # Staged already (by the runner): its rows; else the run stages it, and learns then.
        return self._staged.rows if self._staged is not None else None

    def close(self) -> None:
        if self._owned and self._staged is not None:
            self._staged.close()
            self._staged = None


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


# -- reading -----------------------------------------------------------------------------------


class _Fatal(Exception):
    """The manifest as a whole cannot be read further."""

    def __init__(self, problem: ManifestProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(slots=True)
class _Record:
    """One row as read: the row when valid, else its problems; path and listing when known."""

    line: int
    problems: list[ManifestProblem] = field(default_factory=list)
    row: ManifestRow | None = None
    path: str | None = None
    order: str | None = None
    listing: str | None = None


class _Context:
    """What turning raw values into rows needs: the manifest's name and folder."""

    def __init__(self, manifest: Path) -> None:
        self.shown = str(manifest)
        self.base = str(manifest.absolute().parent)
        # Real folder paths by folder path as written: one realpath per folder, not per row.
        self._real: dict[str, str] = {}

    def real_folder(self, path: str) -> str:
        folder = os.path.dirname(path)
        real = self._real.get(folder)
        if real is None:
            if len(self._real) > 100_000:
                self._real.clear()
            real = self._real[folder] = os.path.realpath(folder)
        return real

    def problem(self, line: int, column: str | None, message: str) -> ManifestProblem:
        return ManifestProblem(self.shown, line, column, message)

    def finish(
        self,
        record: _Record,
        raw_path: str | None,
        client_image_id: str | None,
        sequence: int | None,
        options: dict[str, Any],
    ) -> _Record:
        """Resolve the path and listing, check options, and build the row when nothing is
        wrong."""
        line = record.line
        # A boolean exported as TRUE, yes or 1 by a spreadsheet is still a boolean.
        options = {name: coerce_option(name, value) for name, value in options.items()}
        for option, value in options.items():
            reason = option_problem(option, value)
            if reason is not None:
                record.problems.append(self.problem(line, option, reason))
        relative = None
        if raw_path:
            if os.path.isabs(raw_path):
                record.path = os.path.normpath(raw_path)
                relative = os.path.relpath(record.path, self.base)
            else:
                relative = os.path.normpath(raw_path)
                record.path = os.path.join(self.base, relative)
            if os.sep != "/":
                relative = relative.replace(os.sep, "/")
        elif not any(p.column == "path" for p in record.problems):
            record.problems.append(self.problem(line, "path", "no path: every row needs one"))
        name: str | None = record.order
        default_id = relative
        if record.order is not None:
            record.listing = f"order:{record.order}"
        elif record.path is not None:
            real = self.real_folder(record.path)
            record.listing = folder_listing(real)
            name = os.path.basename(real) or "root"
            default_id = os.path.basename(record.path)
        if record.path is not None:
            try:
                record.path.encode("utf-8")
            except UnicodeEncodeError:
                message = "the path is not valid UTF-8"
                record.problems.append(self.problem(line, "path", message))
                record.path = shown(record.path)
        if not record.problems and record.path is not None and default_id is not None:
            assert record.listing is not None and name is not None
            record.row = ManifestRow(
                line=line,
                path=record.path,
                client_image_id=client_image_id or default_id,
                order=record.order,
                sequence=sequence,
                options={k: v for k, v in options.items() if v is not None},
                listing=record.listing,
                listing_name=name,
            )
        return record


def _records(path: Path) -> Iterator[_Record]:
    context = _Context(path)
    try:
        kind = manifest_format(path)
    except OSError as exc:
        message = f"cannot read the manifest: {_os_reason(exc)}"
        raise _Fatal(context.problem(0, None, message)) from None
    if kind == "jsonl":
        return _jsonl_records(path, context)
    return _csv_records(path, context)


def _csv_records(path: Path, context: _Context) -> Iterator[_Record]:
    line = 0
    try:
        with path.open("rb") as handle:
            reader = csv.reader(_text_lines(handle, context))
            header = next(reader, None)
            if header is None:
                raise _Fatal(context.problem(1, None, "no header row: the manifest is empty"))
            columns = _check_header(header, context)
            line = reader.line_num
            for cells in reader:
                # ``line_num`` counts physical lines read so far: a quoted cell may span several.
                start, line = line + 1, reader.line_num
                if any(cell.strip() for cell in cells):
                    yield _csv_record(context, start, columns, cells)
    except OSError as exc:
        message = f"cannot read the manifest: {_os_reason(exc)}"
        raise _Fatal(context.problem(0, None, message)) from None
    except csv.Error as exc:
        raise _Fatal(context.problem(line + 1, None, f"unreadable CSV: {exc}")) from None


def _text_lines(handle: BinaryIO, context: _Context) -> Iterator[str]:
    """Decoded lines, each of bounded length, so a bad byte is reported at its own line."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if number == 1:
            raw = raw.removeprefix(_BOM)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            message = f"line longer than {MAX_LINE_BYTES} bytes"
            raise _Fatal(context.problem(number, None, message))
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Fatal(context.problem(number, None, "not UTF-8 text")) from None


def _check_header(header: list[str], context: _Context) -> list[str]:
    columns = [name.strip() for name in header]
    while columns and not columns[-1]:
        columns.pop()  # trailing empty columns, as spreadsheets write them
    seen: set[str] = set()
    for index, name in enumerate(columns, 1):
        if not name:
            raise _Fatal(context.problem(1, None, f"column {index} has no name"))
        if name in seen:
            raise _Fatal(context.problem(1, name, "this column appears twice in the header"))
        seen.add(name)
    if "path" not in seen:
        raise _Fatal(context.problem(1, "path", "the header has no path column"))
    return columns


def _csv_record(context: _Context, line: int, columns: list[str], cells: list[str]) -> _Record:
    record = _Record(line)
    if len(cells) > len(columns) and any(cell.strip() for cell in cells[len(columns) :]):
        record.problems.append(
            context.problem(
                line, None, f"{len(cells)} cells, but the header names {len(columns)} columns"
            )
        )
    raw_path = client_image_id = None
    sequence: int | None = None
    from_field: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for name, raw in zip(columns, cells, strict=False):
        cell = raw.strip()
        if not cell:
            continue
        if name == "path":
            raw_path = cell
        elif name == "client_image_id":
            client_image_id = cell
        elif name == "order":
            record.order = cell
        elif name == "sequence":
            if cell.isascii() and cell.isdigit() and int(cell) > 0:
                sequence = int(cell)
            else:
                message = f"must be a positive integer, not {cell!r}"
                record.problems.append(context.problem(line, "sequence", message))
        elif name == "options":
            from_field = _options_field(context, record, _json_cell(cell))
        else:
            own[name] = _cell_value(name, cell)
    options = _merge_options(context, record, from_field, own)
    return context.finish(record, raw_path, client_image_id, sequence, options)


def _jsonl_records(path: Path, context: _Context) -> Iterator[_Record]:
    line = 0
    try:
        with path.open("rb") as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                line += 1
                if line == 1:
                    raw = raw.removeprefix(_BOM)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        pass
                    message = f"line longer than {MAX_LINE_BYTES} bytes"
                    yield _Record(line, [context.problem(line, None, message)])
                elif raw.strip():
                    yield _jsonl_record(context, line, raw)
    except OSError as exc:
        message = f"cannot read the manifest: {_os_reason(exc)}"
        raise _Fatal(context.problem(0, None, message)) from None


def _jsonl_record(context: _Context, line: int, raw: bytes) -> _Record:
    record = _Record(line)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        record.problems.append(context.problem(line, None, f"not valid JSON: {exc}"))
        return record
    if not isinstance(obj, dict):
        record.problems.append(context.problem(line, None, "each line must be a JSON object"))
        return record
    raw_path = obj.get("path")
    if raw_path is not None and not isinstance(raw_path, str):
        record.problems.append(
            context.problem(line, "path", f"must be a string, not {show_value(raw_path)}")
        )
        raw_path = None
    client_image_id = obj.get("client_image_id")
    if client_image_id is not None and not isinstance(client_image_id, str):
        message = f"must be a string, not {show_value(client_image_id)}"
        record.problems.append(context.problem(line, "client_image_id", message))
        client_image_id = None
    order = obj.get("order")
    if isinstance(order, str):
        record.order = order or None
    elif isinstance(order, int) and not isinstance(order, bool):
        record.order = str(order)
    elif order is not None:
        message = f"must be a string, not {show_value(order)}"
        record.problems.append(context.problem(line, "order", message))
    sequence = obj.get("sequence")
    if sequence is not None and (
        not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1
    ):
        message = f"must be a positive integer, not {show_value(sequence)}"
        record.problems.append(context.problem(line, "sequence", message))
        sequence = None
    from_field = _options_field(context, record, obj.get("options"))
    own = {name: value for name, value in obj.items() if name not in FIELDS}
    options = _merge_options(context, record, from_field, own)
    return context.finish(record, raw_path or None, client_image_id, sequence, options)


class _BadJSON:
    """A cell that should hold JSON but does not: carries the parser's message."""

    def __init__(self, message: str) -> None:
        self.message = message


def _json_cell(cell: str) -> Any:
    try:
        return orjson.loads(cell)
    except orjson.JSONDecodeError as exc:
        return _BadJSON(str(exc))


def _options_field(context: _Context, record: _Record, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, _BadJSON):
        message = f"not a JSON object: {value.message}"
        record.problems.append(context.problem(record.line, "options", message))
        return {}
    if not isinstance(value, dict):
        message = f"must be a JSON object, not {show_value(value)}"
        record.problems.append(context.problem(record.line, "options", message))
        return {}
    return value


def _merge_options(
    context: _Context, record: _Record, from_field: dict[str, Any], own: dict[str, Any]
) -> dict[str, Any]:
    if not from_field:
        return own  # the usual case; nulls are dropped later
    for name in from_field.keys() & own.keys():
        if from_field[name] is not None and own[name] is not None:
            message = "set both in its own column and in options"
            record.problems.append(context.problem(record.line, name, message))
    return {**from_field, **{k: v for k, v in own.items() if v is not None}}


def _cell_value(name: str, cell: str) -> Any:
    """JSON when it parses, else the text; a string option keeps unquoted text as written."""
    value = _json_cell(cell)
    if isinstance(value, _BadJSON):
        return cell
    if OPTION_TYPES.get(name) is str and not isinstance(value, str):
        return cell
    return value


# -- files ------------------------------------------------------------------------------------


def _check_file(path: str) -> tuple[str | None, os.stat_result | None, str | None]:
    """(why the file cannot be uploaded or None, its stat, its content type)."""
    content_type = CONTENT_TYPES_BY_SUFFIX.get(os.path.splitext(path)[1].lower())
    if content_type is None:
        return f"not an image type the API accepts ({_ACCEPTED_SUFFIXES})", None, None
    try:
        info = os.stat(path)
    except OSError as exc:
        return _os_reason(exc), None, None
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file", None, None
    if info.st_size == 0:
        return "empty file", None, None
    if not os.access(path, os.R_OK):
        return "permission denied: the file is not readable", None, None
    return None, info, content_type


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return str(exc.strerror or exc)
