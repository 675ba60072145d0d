"""Inputs -> items: a lazy folder walk in natural order, content types, sizes, bad input.

The walk holds one directory's listing at a time and yields as it goes; the engine runs it
in a thread behind a bounded queue, so a tree of a million files never sits in memory.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from styldod_batch.contract import CONTENT_TYPES_BY_SUFFIX
from styldod_batch.errors import ConfigurationError, InputError
from styldod_batch.models import ImageItem

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """``img2.jpg`` before ``img10.jpg``; case-insensitive otherwise."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.casefold())
        for part in _DIGITS.split(name)
        if part
    )


def content_type_for(path: str) -> str | None:
    return CONTENT_TYPES_BY_SUFFIX.get(os.path.splitext(path)[1].lower())


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not an image type the API accepts: skipped and counted, not an error."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class GroupEnd:
    """No more items of ``group`` follow (the walk left its folder)."""

    group: str


ScanEvent = ImageItem | Skipped | InputError | GroupEnd


def check_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every path given must exist: a missing one is a usage error, before anything is sent."""
    if not paths:
        raise ConfigurationError("no input path given")
    result = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigurationError(f"{raw}: no such file or directory")
        result.append(path)
    return result


def scan(paths: Sequence[str | os.PathLike[str]]) -> Iterator[ScanEvent]:
    """Walk every input; a folder's images form one group named after the folder.

    Each event is yielded as soon as it is known; ``GroupEnd`` follows a folder's last item.
    """
    roots = check_inputs(paths)
    prefix_roots = len(roots) > 1
    visited: set[tuple[int, int]] = set()
    for root in roots:
        if root.is_dir():
            yield from _walk(root, prefix_roots, visited)
        else:
            group = root.resolve().parent.name or "root"
            yield from _files(root.parent, [root.name], group, root.parent, prefix_roots=False)
            yield GroupEnd(group)


def _walk(root: Path, prefix_roots: bool, visited: set[tuple[int, int]]) -> Iterator[ScanEvent]:
    root_name = root.resolve().name or "root"
    stack: list[Path] = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError as exc:
            yield InputError(str(folder), _reason(exc))
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in visited:
            yield InputError(str(folder), "symlink loop: this folder was already visited")
            continue
        visited.add(identity)
        try:
            with os.scandir(folder) as entries:
                names = [(e.name, e.is_dir()) for e in entries]
        except OSError as exc:
            yield InputError(str(folder), _reason(exc))
            continue
        names.sort(key=lambda entry: natural_key(entry[0]))
        files = [name for name, is_dir in names if not is_dir]
        relative_folder = folder.relative_to(root).as_posix()
        if relative_folder == ".":
            group = root_name
        else:
            group = f"{root_name}/{relative_folder}" if prefix_roots else relative_folder
        yield from _files(folder, files, group, root, prefix_roots=prefix_roots)
        yield GroupEnd(group)
        # Reversed, so the stack pops sub-folders in natural order.
        stack.extend(folder / name for name, is_dir in reversed(names) if is_dir)


def _files(
    folder: Path, names: list[str], group: str, root: Path, *, prefix_roots: bool
) -> Iterator[ScanEvent]:
    root_name = root.resolve().name
    for name in names:
        path = folder / name
        shown = str(path)
        content_type = content_type_for(name)
        if content_type is None:
            yield Skipped(
                shown,
                "not an image type the API accepts "
                f"({', '.join(sorted(set(CONTENT_TYPES_BY_SUFFIX)))})",
            )
            continue
        try:
            info = path.stat()
        except OSError as exc:
            yield InputError(shown, _reason(exc))
            continue
        if not stat.S_ISREG(info.st_mode):
            yield InputError(shown, "not a regular file")
            continue
        if info.st_size == 0:
            yield InputError(shown, "empty file")
            continue
        if not os.access(path, os.R_OK):
            yield InputError(shown, "permission denied: the file is not readable")
            continue
        relative = path.relative_to(root).as_posix()
        if prefix_roots:
            relative = f"{root_name}/{relative}"
        yield ImageItem(
            path=shown,
            relative=relative,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            content_type=content_type,
            group=group,
        )


def _reason(exc: OSError) -> str:
    if exc.errno is not None and exc.errno == 40:  # ELOOP
        return "symlink loop"
    if isinstance(exc, FileNotFoundError):
        return "no such file (a broken symlink?)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
