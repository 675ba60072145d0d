"""Inputs -> items: a lazy folder walk in natural order, listings, content types, bad input.

Every folder that holds images is a listing, known by its real path: its images' order name
is the folder's own name and their ``client_image_id`` their file name, however the folder was
reached (from which working folder, through which input, alongside which other inputs).
Inputs given twice, or nested inside another input, yield each file once.

The walk holds one folder's listing at a time and yields as it goes; the engine runs it in a
thread behind a bounded queue, so a tree of a million files never sits in memory.

With ``check_content``, each image's head and tail are read in that thread too: a file whose
bytes are not the type its name says, or a JPEG or PNG cut off, fails alone before its
listing is ordered (``content.check_file``).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from styldod_batch.content import check_file
from styldod_batch.contract import CONTENT_TYPES_BY_SUFFIX
from styldod_batch.errors import ConfigurationError, InputError
from styldod_batch.models import ImageItem

_DIGITS = re.compile(r"(\d+)")
FOLDER_LISTING = "folder:"


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """``img2.jpg`` before ``img10.jpg``; case-insensitive otherwise."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.casefold())
        for part in _DIGITS.split(name)
        if part
    )


def content_type_for(path: str) -> str | None:
    return CONTENT_TYPES_BY_SUFFIX.get(os.path.splitext(path)[1].lower())


def folder_listing(real_folder: str) -> str:
    """The identity of the listing a folder's images belong to."""
    return FOLDER_LISTING + real_folder


def shown(path: str) -> str:
    """A path as text that can be printed and stored, whatever bytes its name holds."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not an image type the API accepts, or a link left out: skipped and
    counted, not an error."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class GroupEnd:
    """No more items of listing ``group`` (its identity) follow."""

    group: str


ScanEvent = ImageItem | Skipped | InputError | GroupEnd


def check_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every path given must exist: a missing one is a usage error, before anything is sent."""
    if isinstance(paths, str | bytes | os.PathLike):
        raise ConfigurationError(
            f"inputs must be a list of paths, not the single {type(paths).__name__} "
            f"{os.fsdecode(paths)!r}: pass [{os.fsdecode(paths)!r}]"
        )
    if not paths:
        raise ConfigurationError("no input path given")
    result = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigurationError(f"{shown(os.fspath(raw))}: no such file or directory")
        result.append(path)
    return result


@dataclass(slots=True)
class _Inputs:
    """The inputs once overlaps are gone: folders to walk, and loose files by folder."""

    folders: list[tuple[Path, str]]
    files: dict[str, list[Path]]
    roots: list[str]


def _sort_out(roots: list[Path]) -> _Inputs:
    folders: dict[str, Path] = {}
    loose: list[Path] = []
    for root in roots:
        real = os.path.realpath(root)
        if os.path.isdir(real):
            folders.setdefault(real, root)
        else:
            loose.append(root)
    # A folder inside another folder input is walked as part of it.
    outermost = [
        real
        for real in folders
        if not any(_inside(real, other) for other in folders if other != real)
    ]
    # A file named on its own belongs to the folder it is in (even when it is a link).
    files: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for given in loose:
        folder = os.path.realpath(given.parent)
        located = os.path.join(folder, given.name)
        if located in seen or any(_inside(located, walked) for walked in outermost):
            continue
        seen.add(located)
        files.setdefault(folder, []).append(given)
    return _Inputs([(folders[real], real) for real in outermost], files, outermost)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class FolderScan:
    """The events of folder and file inputs, and of any one listing again (``relist``)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        follow_symlinks: bool = False,
        check_content: bool = False,
    ) -> None:
        self.inputs = _sort_out(check_inputs(paths))
        self.follow_symlinks = follow_symlinks
        self.check_content = check_content

    def events(self, *, check_content: bool = True) -> Iterator[ScanEvent]:
        """Walk every input; each folder's images form one listing.

        Each event is yielded as soon as it is known; ``GroupEnd`` follows a folder's last
        item. A link found in the walk that leads outside every input folder is skipped
        unless ``follow_symlinks``; inputs named on their own are always followed.
        ``check_content`` False leaves the content unread (a count needs names only).
        """
        check = self.check_content and check_content
        visited: set[tuple[int, int]] = set()
        for given, _real in self.inputs.folders:
            yield from self._walk(given, visited, check)
        for folder, files in self.inputs.files.items():
            names = [f.name for f in files]
            yield from self._listing(files[0].parent, folder, names, check, named=True)

    def relist(self, listing: str) -> Iterator[ScanEvent]:
        """The events of one listing of these inputs, scanned again."""
        if not listing.startswith(FOLDER_LISTING):
            return
        real = listing[len(FOLDER_LISTING) :]
        names = self.inputs.files.get(real)
        check = self.check_content
        if names is not None:
            yield from self._listing(Path(real), real, [f.name for f in names], check, named=True)
            return
        files, _folders, skipped = self._entries(Path(real))
        yield from skipped
        yield from self._listing(Path(real), real, files, check)

    def _listing(
        self, folder: Path, real: str, names: list[str], check: bool, *, named: bool = False
    ) -> Iterator[ScanEvent]:
        names.sort(key=natural_key)
        listing = folder_listing(real)
        yield from _files(folder, real, names, listing, check=check, named=named)
        yield GroupEnd(listing)

    def _walk(self, root: Path, visited: set[tuple[int, int]], check: bool) -> Iterator[ScanEvent]:
        stack: list[Path] = [root]
        while stack:
            folder = stack.pop()
            try:
                info = folder.stat()
            except OSError as exc:
                yield InputError(shown(str(folder)), _reason(exc))
                continue
            identity = (info.st_dev, info.st_ino)
            if identity in visited:
                continue  # reached twice (through a link): its files were yielded once already
            visited.add(identity)
            try:
                files, folders, skipped = self._entries(folder)
            except OSError as exc:
                yield InputError(shown(str(folder)), _reason(exc))
                continue
            yield from skipped
            if files:
                yield from self._listing(folder, os.path.realpath(folder), files, check)
            # Reversed, so the stack pops sub-folders in natural order.
            stack.extend(folder / name for name in reversed(folders))

    def _entries(self, folder: Path) -> tuple[list[str], list[str], list[Skipped]]:
        """(file names, folder names, links left out), in natural order."""
        with os.scandir(folder) as entries:
            names = [(e.name, _is_dir(e), e.is_symlink()) for e in entries]
        names.sort(key=lambda entry: natural_key(entry[0]))
        files: list[str] = []
        folders: list[str] = []
        skipped: list[Skipped] = []
        for name, is_dir, is_link in names:
            if is_link and not self.follow_symlinks:
                target = os.path.realpath(folder / name)
                if not any(_inside(target, root) for root in self.inputs.roots):
                    skipped.append(
                        Skipped(
                            shown(str(folder / name)),
                            "a symbolic link to outside the input folders "
                            "(pass --follow-symlinks to follow it)",
                        )
                    )
                    continue
            (folders if is_dir else files).append(name)
        return files, folders, skipped


def scan(
    paths: Sequence[str | os.PathLike[str]],
    *,
    follow_symlinks: bool = False,
    check_content: bool = False,
) -> Iterator[ScanEvent]:
    """The events of folder and file inputs (see ``FolderScan.events``)."""
    scanner = FolderScan(paths, follow_symlinks=follow_symlinks, check_content=check_content)
    return scanner.events()


def _files(
    folder: Path,
    real_folder: str,
    names: list[str],
    listing: str,
    *,
    check: bool = False,
    named: bool = False,
) -> Iterator[ScanEvent]:
    """The images among ``names``; a file that is not one is skipped, or, when it was
    ``named`` on its own as an input, fails (as a manifest row naming it does)."""
    group = os.path.basename(real_folder) or "root"
    for name in names:
        path = folder / name
        text = str(path)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            yield InputError(shown(text), "the file or folder name is not valid UTF-8")
            continue
        content_type = content_type_for(name)
        if content_type is None:
            reason = (
                "not an image type the API accepts "
                f"({', '.join(sorted(set(CONTENT_TYPES_BY_SUFFIX)))})"
            )
            yield InputError(text, reason) if named else Skipped(text, reason)
            continue
        try:
            info = path.stat()
        except OSError as exc:
            yield InputError(text, _reason(exc))
            continue
        if not stat.S_ISREG(info.st_mode):
            yield InputError(text, "not a regular file")
            continue
        if info.st_size == 0:
            yield InputError(text, "empty file")
            continue
        if not os.access(path, os.R_OK):
            yield InputError(text, "permission denied: the file is not readable")
            continue
        problem = _content_problem(text, info.st_size, content_type) if check else None
        if problem is not None:
            yield InputError(text, problem)
            continue
        yield ImageItem(
            path=text,
            relative=name,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            content_type=content_type,
            group=group,
            listing=listing,
        )


def content_checked(events: Iterable[ScanEvent]) -> Iterator[ScanEvent]:
    """``events`` with each image whose content is not what its name says (or that is cut
    off) turned into an ``InputError``: for inputs that are not a folder walk (a manifest)."""
    for event in events:
        if isinstance(event, ImageItem):
            problem = _content_problem(event.path, event.size, event.content_type)
            if problem is not None:
                yield InputError(event.path, problem)
                continue
        yield event


def _content_problem(path: str, size: int, content_type: str) -> str | None:
    try:
        return check_file(path, size, content_type)
    except OSError as exc:
        return _reason(exc)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A folder, or a link to one; an entry that cannot be followed (a link loop) is taken as
    a file, which then fails alone with its reason."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    if exc.errno is not None and exc.errno == 40:  # ELOOP
        return "symlink loop"
    if isinstance(exc, FileNotFoundError):
        return "no such file (a broken symlink?)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
