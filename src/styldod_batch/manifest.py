"""Manifests: a CSV or JSON Lines file that lists a job's images, read as a stream.

Each row names one image file::

    path,client_image_id,order,sequence,basic_editing,style
    listing-1/front.jpg,,listing-1,1,true,
    listing-1/kitchen.jpg,kitchen-01,listing-1,2,,modern

or, as JSON Lines (``.jsonl`` / ``.ndjson``, or any file whose first character is ``{``)::

    {"path": "listing-1/front.jpg", "order": "listing-1", "options": {"basic_editing": true}}

``path`` is required and relative to the manifest's folder unless absolute. ``client_image_id``
defaults to that relative path (POSIX form); ``order`` names the order the image goes in (rows
without one are grouped by their file's folder); ``sequence`` is a positive integer. Options
come from an ``options`` JSON object, or from one column (field) per option: every name that is
not one of the fields above is an option. In CSV an empty cell sets nothing, and an option cell
is read as JSON when it parses (``true``, ``3``, ``"x"``), else as the text itself; a known
string option (``style``, ``notes``) keeps its text as written. A null sets nothing.

The rows of one order (or, without ``order``, of one folder) must be together: the engine
closes an order when its group ends. A group larger than the order size is split into several
orders, as a folder is; within each, a ``client_image_id`` or a file may appear once (the API
refuses a repeated ID, and the engine tracks an order's images by path).

Memory stays bounded whatever the manifest's length: the file is read a line at a time, and the
only state kept is the current order's IDs and paths plus the names of the groups already seen.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from styldod_batch.contract import CONTENT_TYPES_BY_SUFFIX, OPTION_TYPES, SERVICES
from styldod_batch.errors import ConfigurationError, InputError
from styldod_batch.models import ImageItem
from styldod_batch.scan import GroupEnd

FIELDS = frozenset({"path", "client_image_id", "order", "sequence", "options"})
# Image fields the uploader itself sets: an option of that name would clash in the payload.
_IMAGE_FIELDS = frozenset({"client_image_id", "image_urls", "sequence"})
MAX_PROBLEMS = 1000
# A JSON line longer than this is reported, not read: one runaway line must not fill memory.
MAX_LINE_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_TYPE_NAMES = {bool: "boolean (true or false)", str: "string", int: "integer", float: "number"}
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


def option_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be option ``name`` (the API's own checks), or None when it can.

    The message leaves the name out: callers say where the option was.
    """
    if name in _IMAGE_FIELDS:
        return "set by the uploader itself: it cannot be an option"
    expected = OPTION_TYPES.get(name)
    if expected is None or value is None:
        return None
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        kind = _TYPE_NAMES.get(expected, expected.__name__)
        return f"must be a {kind}, not {_show(value)}"
    if name == "service" and value not in SERVICES:
        return f"unknown service {value!r} (one of {', '.join(sorted(SERVICES))})"
    return None


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
    accepted image type; an order's (or, without ``order``, a folder's) rows that are not
    together; a ``client_image_id`` or file listed twice in one order. Orders are taken as the
    engine makes them: a group split into runs of ``max_images_per_order`` images.
    """
    problems: list[ManifestProblem] = []
    omitted = 0
    first_omitted = 0

    def add(problem: ManifestProblem) -> None:
        nonlocal omitted, first_omitted
        if len(problems) < max_problems:
            problems.append(problem)
            return
        omitted += 1
        first_omitted = first_omitted or problem.line

    orders = _Orders(max_images_per_order)
    shown = str(path)
    rows = 0
    try:
        for record in _records(path):
            rows += 1
            for problem in record.problems:
                add(problem)
            _, _, apart = orders.enter(record)
            if apart is not None:
                add(ManifestProblem(shown, record.line, _group_column(record), apart))
            if record.path is None:
                continue
            reason, _, _ = _check_file(record.path)
            if reason is not None:
                add(ManifestProblem(shown, record.line, "path", f"{reason}: {record.path}"))
            elif record.row is not None and not record.problems and apart is None:
                twice = orders.admit(record.row)
                if twice is not None:
                    add(ManifestProblem(shown, record.line, twice[0], twice[1]))
    except _Fatal as fatal:
        add(fatal.problem)
    else:
        if rows == 0:
            add(ManifestProblem(shown, 1, None, "the manifest lists no images"))
    if omitted:
        message = f"... and {omitted} more problem{'s' if omitted > 1 else ''}"
        problems.append(ManifestProblem(shown, first_omitted, None, message))
    return problems


def manifest_items(
    path: Path, *, max_images_per_order: int = 100
) -> Iterator[ImageItem | InputError | GroupEnd]:
    """The manifest as the engine's scan events, in file order.

    A row that cannot be used becomes an ``InputError`` (the batch goes on without it); a
    ``GroupEnd`` follows each group's last row. Raises ``ConfigurationError`` when the
    manifest as a whole cannot be read.
    """
    orders = _Orders(max_images_per_order)
    shown = str(path)
    try:
        for record in _records(path):
            ended, group, apart = orders.enter(record)
            if ended is not None:
                yield GroupEnd(ended)
            problems = record.problems
            if apart is not None:
                problems = [ManifestProblem(shown, record.line, _group_column(record), apart)]
            elif record.row is not None and not problems:
                reason, info, content_type = _check_file(record.row.path)
                twice = orders.admit(record.row) if reason is None else None
                if twice is not None:
                    problems = [ManifestProblem(shown, record.line, *twice)]
                elif reason is not None:
                    problems = [ManifestProblem(shown, record.line, "path", reason)]
                elif info is not None and content_type is not None and group is not None:
                    yield _item(record.row, info, content_type, group)
                    continue
            if record.path is not None:
                yield InputError(record.path, "; ".join(str(p) for p in problems))
            else:
                # No file to name: the manifest's line stands in for it.
                yield InputError(f"{shown}:{record.line}", "; ".join(_brief(p) for p in problems))
    except _Fatal as fatal:
        raise ConfigurationError(str(fatal.problem)) from None
    if orders.current is not None:
        yield GroupEnd(orders.current)


def _item(row: ManifestRow, info: os.stat_result, content_type: str, group: str) -> ImageItem:
    return ImageItem(
        path=row.path,
        relative=row.client_image_id,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        content_type=content_type,
        group=group,
        client_image_id=row.client_image_id,
        sequence=row.sequence or 0,
        options=row.options,
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
    """One row as read: the row when valid, else its problems; path and group when known."""

    line: int
    problems: list[ManifestProblem] = field(default_factory=list)
    row: ManifestRow | None = None
    path: str | None = None
    order: str | None = None
    group: str | None = None


class _Context:
    """What turning raw values into rows needs: the manifest's name and folder."""

    def __init__(self, manifest: Path) -> None:
        self.shown = str(manifest)
        self.base = str(manifest.absolute().parent)
        self.base_name = os.path.basename(self.base) or "root"

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
        """Resolve the path and group, check options, and build the row when nothing is wrong."""
        line = record.line
        for name, value in options.items():
            reason = option_problem(name, value)
            if reason is not None:
                record.problems.append(self.problem(line, name, reason))
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
        if record.order is not None:
            record.group = record.order
        elif relative is not None:
            record.group = os.path.dirname(relative) or self.base_name
        if not record.problems and record.path is not None and relative is not None:
            record.row = ManifestRow(
                line=line,
                path=record.path,
                client_image_id=client_image_id or relative,
                order=record.order,
                sequence=sequence,
                options={k: v for k, v in options.items() if v is not None},
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
            context.problem(line, "path", f"must be a string, not {_show(raw_path)}")
        )
        raw_path = None
    client_image_id = obj.get("client_image_id")
    if client_image_id is not None and not isinstance(client_image_id, str):
        message = f"must be a string, not {_show(client_image_id)}"
        record.problems.append(context.problem(line, "client_image_id", message))
        client_image_id = None
    order = obj.get("order")
    if isinstance(order, str):
        record.order = order or None
    elif isinstance(order, int) and not isinstance(order, bool):
        record.order = str(order)
    elif order is not None:
        message = f"must be a string, not {_show(order)}"
        record.problems.append(context.problem(line, "order", message))
    sequence = obj.get("sequence")
    if sequence is not None and (
        not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1
    ):
        message = f"must be a positive integer, not {_show(sequence)}"
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
        message = f"must be a JSON object, not {_show(value)}"
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


# -- groups and files --------------------------------------------------------------------------


class _Orders:
    """The contiguity rule, and the IDs and files of the order being filled.

    Holds one entry per group already finished (its name and last line) and the current
    order's IDs and paths: nothing per row beyond the current order.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.current: str | None = None
        self._last_line = 0
        self._finished: dict[str, int] = {}
        self._ids: dict[str, int] = {}
        self._paths: dict[str, int] = {}

    def enter(self, record: _Record) -> tuple[str | None, str | None, str | None]:
        """(the group this row ended, the row's group, why the row is out of place)."""
        group = record.group
        if group is None or group == self.current:
            if group is not None:
                self._last_line = record.line
            return None, group, None
        if group in self._finished:
            kind = "order" if record.order is not None else "folder"
            apart = (
                f"the rows of {kind} {group!r} must be together: they ended at line "
                f"{self._finished[group]} and other rows came between"
            )
            return None, group, apart
        ended = self.current
        if ended is not None:
            self._finished[ended] = self._last_line
        self.current, self._last_line = group, record.line
        self._ids.clear()
        self._paths.clear()
        return ended, group, None

    def admit(self, row: ManifestRow) -> tuple[str, str] | None:
        """Count ``row`` into the current order; (column, message) when it is listed twice."""
        if len(self._ids) >= self.size:
            self._ids.clear()
            self._paths.clear()
        earlier = self._ids.get(row.client_image_id)
        if earlier is not None:
            return (
                "client_image_id",
                f"{row.client_image_id!r} is already used in this order (line {earlier})",
            )
        earlier = self._paths.get(row.path)
        if earlier is not None:
            return "path", f"this file is already listed in this order (line {earlier})"
        self._ids[row.client_image_id] = row.line
        self._paths[row.path] = row.line
        return None


def _group_column(record: _Record) -> str:
    return "order" if record.order is not None else "path"


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


def _show(value: Any) -> str:
    """A value as the manifest spells it (JSON), for messages."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
