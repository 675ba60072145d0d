"""Reading a manifest's CSV or JSON Lines text, a line at a time, into checked rows."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from styldod_batch.contract import OPTION_TYPES
from styldod_batch.manifest.rows import (
    BOM,
    FIELDS,
    MAX_LINE_BYTES,
    Fatal,
    ManifestProblem,
    ManifestRow,
    Record,
    RowContext,
    manifest_format,
    os_reason,
)
from styldod_batch.options import show_value


def read_manifest(path: Path) -> Iterator[ManifestRow | ManifestProblem]:
    """Rows in file order; a row that cannot be used yields its problem(s) instead.

    A problem with the manifest as a whole (unreadable, no ``path`` column...) is yielded last.
    """
    try:
        for record in records(path):
            if record.problems:
                yield from record.problems
            elif record.row is not None:
                yield record.row
    except Fatal as fatal:
        yield fatal.problem


def records(path: Path) -> Iterator[Record]:
    context = RowContext(path)
    try:
        kind = manifest_format(path)
    except OSError as exc:
        message = f"cannot read the manifest: {os_reason(exc)}"
        raise Fatal(context.problem(0, None, message)) from None
    if kind == "jsonl":
        return _jsonl_records(path, context)
    return _csv_records(path, context)


def _csv_records(path: Path, context: RowContext) -> Iterator[Record]:
    line = 0
    try:
        with path.open("rb") as handle:
            reader = csv.reader(_text_lines(handle, context))
            header = next(reader, None)
            if header is None:
                raise Fatal(context.problem(1, None, "no header row: the manifest is empty"))
            columns = _check_header(header, context)
            line = reader.line_num
            for cells in reader:
                # ``line_num`` counts physical lines read so far: a quoted cell may span several.
                start, line = line + 1, reader.line_num
                if any(cell.strip() for cell in cells):
                    yield _csv_record(context, start, columns, cells)
    except OSError as exc:
        message = f"cannot read the manifest: {os_reason(exc)}"
        raise Fatal(context.problem(0, None, message)) from None
    except csv.Error as exc:
        raise Fatal(context.problem(line + 1, None, f"unreadable CSV: {exc}")) from None


def _text_lines(handle: BinaryIO, context: RowContext) -> Iterator[str]:
    """Decoded lines, each of bounded length, so a bad byte is reported at its own line."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if number == 1:
            raw = raw.removeprefix(BOM)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            message = f"line longer than {MAX_LINE_BYTES} bytes"
            raise Fatal(context.problem(number, None, message))
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Fatal(context.problem(number, None, "not UTF-8 text")) from None


def _check_header(header: list[str], context: RowContext) -> list[str]:
    columns = [name.strip() for name in header]
    while columns and not columns[-1]:
        columns.pop()  # trailing empty columns, as spreadsheets write them
    seen: set[str] = set()
    for index, name in enumerate(columns, 1):
        if not name:
            raise Fatal(context.problem(1, None, f"column {index} has no name"))
        if name in seen:
            raise Fatal(context.problem(1, name, "this column appears twice in the header"))
        seen.add(name)
    if "path" not in seen:
        raise Fatal(context.problem(1, "path", "the header has no path column"))
    return columns


def _csv_record(context: RowContext, line: int, columns: list[str], cells: list[str]) -> Record:
    record = Record(line)
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


def _jsonl_records(path: Path, context: RowContext) -> Iterator[Record]:
    line = 0
    try:
        with path.open("rb") as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                line += 1
                if line == 1:
                    raw = raw.removeprefix(BOM)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        pass
                    message = f"line longer than {MAX_LINE_BYTES} bytes"
                    yield Record(line, [context.problem(line, None, message)])
                elif raw.strip():
                    yield _jsonl_record(context, line, raw)
    except OSError as exc:
        message = f"cannot read the manifest: {os_reason(exc)}"
        raise Fatal(context.problem(0, None, message)) from None


def _jsonl_record(context: RowContext, line: int, raw: bytes) -> Record:
    record = Record(line)
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


def _options_field(context: RowContext, record: Record, value: Any) -> dict[str, Any]:
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
    context: RowContext, record: Record, from_field: dict[str, Any], own: dict[str, Any]
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
