"""Manifest rows: what a row is, what a problem is, and turning one row's raw values into a
checked row (path and listing resolved, options checked); the checks of a row's file."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from styldod_batch.contract import CONTENT_TYPES_BY_SUFFIX
from styldod_batch.options import coerce_option, option_problem
from styldod_batch.scan import folder_listing, shown

FIELDS = frozenset({"path", "client_image_id", "order", "sequence", "options"})
MAX_PROBLEMS = 1000
# A JSON line longer than this is reported, not read: one runaway line must not fill memory.
MAX_LINE_BYTES = 1024 * 1024
BOM = b"\xef\xbb\xbf"
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
                chunk, first = chunk.removeprefix(BOM), False
            chunk = chunk.lstrip()
            if chunk:
                return "jsonl" if chunk.startswith(b"{") else "csv"
    return "csv"


class Fatal(Exception):
    """The manifest as a whole cannot be read further."""

    def __init__(self, problem: ManifestProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(slots=True)
class Record:
    """One row as read: the row when valid, else its problems; path and listing when known."""

    line: int
    problems: list[ManifestProblem] = field(default_factory=list)
    row: ManifestRow | None = None
    path: str | None = None
    order: str | None = None
    listing: str | None = None


class RowContext:
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
        record: Record,
        raw_path: str | None,
        client_image_id: str | None,
        sequence: int | None,
        options: dict[str, Any],
    ) -> Record:
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


def check_file(path: str) -> tuple[str | None, os.stat_result | None, str | None]:
    """(why the file cannot be uploaded or None, its stat, its content type)."""
    content_type = CONTENT_TYPES_BY_SUFFIX.get(os.path.splitext(path)[1].lower())
    if content_type is None:
        return f"not an image type the API accepts ({_ACCEPTED_SUFFIXES})", None, None
    try:
        info = os.stat(path)
    except OSError as exc:
        return os_reason(exc), None, None
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file", None, None
    if info.st_size == 0:
        return "empty file", None, None
    if not os.access(path, os.R_OK):
        return "permission denied: the file is not readable", None, None
    return None, info, content_type


def os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return str(exc.strerror or exc)
