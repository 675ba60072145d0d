"""Thumbnails for the review page: at most 256 px, JPEG, made in a thread pool (Pillow lets go
of the GIL while it decodes and resizes) and cached by content hash.

A thumbnail is named ``<content MD5>-<width>x<height>.jpg``: the name is the cache (one
directory listing tells what is there, and the page gets each image's size without opening
it), and an original and an output of the same bytes share one file. So a second report of
the same night reads no image at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

THUMB_PX = 256
_NAME = re.compile(r"^([0-9a-f]{32})-(\d{1,4})x(\d{1,4})\.jpg$")


@dataclass(frozen=True, slots=True)
class Thumb:
    name: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Wanted:
    """A thumbnail to make: of ``path``, whose content has MD5 ``key`` when its size (and, if
    given, mtime) still match what the ledger recorded."""

    path: str
    size: int | None = None
    mtime_ns: int | None = None


def cached(folder: Path) -> dict[str, Thumb]:
    """The thumbnails already in ``folder``, by content hash."""
    found: dict[str, Thumb] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match is not None:
                found[match.group(1)] = Thumb(entry.name, int(match.group(2)), int(match.group(3)))
    return found


def make_thumbnails(
    folder: Path,
    wanted: Mapping[str, Wanted],
    *,
    size: int = THUMB_PX,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Thumb | str], int]:
    """A thumbnail (or why there is none) for each content hash in ``wanted``, and how many
    were made: only the ones not in ``folder`` yet."""
    folder.mkdir(parents=True, exist_ok=True)
    have = cached(folder)
    try:
        import PIL  # noqa: F401
    except ImportError:  # a core dependency; a page without pictures rather than none
        missing = "no preview: Pillow is not installed"
        return {key: have.get(key) or missing for key in wanted}, 0
    results: dict[str, Thumb | str] = {key: have[key] for key in wanted if key in have}
    todo = [(key, w) for key, w in wanted.items() if key not in have]
    if not todo:
        return results, 0
    count = workers or min(8, (os.cpu_count() or 2) + 1)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="thumbnail") as pool:
        # A slice at a time: 60,000 pending futures would cost more memory than the work.
        for start in range(0, len(todo), 256):
            chunk = todo[start : start + 256]
            made = pool.map(lambda job: _thumbnail(folder, job[0], job[1], size), chunk)
            for (key, _wanted), result in zip(chunk, made, strict=True):
                results[key] = result
            if progress is not None:
                progress(start + len(chunk))
    return results, len(todo)


def _thumbnail(folder: Path, key: str, wanted: Wanted, size: int) -> Thumb | str:
    from PIL import Image, ImageOps

    try:
        stat = os.stat(wanted.path)
    except OSError:
        return "no preview: the file is no longer there"
    if (wanted.size is not None and stat.st_size != wanted.size) or (
        wanted.mtime_ns is not None and stat.st_mtime_ns != wanted.mtime_ns
    ):
        return "no preview: the file changed after it was recorded"
    partial: Path | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(wanted.path) as opened:
                # JPEG: decode at a fraction of the size straight away (much faster).
                opened.draft("RGB", (size * 2, size * 2))
                image = ImageOps.exif_transpose(opened) or opened
                image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
                if image.mode in ("RGBA", "LA", "P", "PA"):
                    image = image.convert("RGBA")
                    flat = Image.new("RGB", image.size, (255, 255, 255))
                    flat.paste(image, mask=image.getchannel("A"))
                    image = flat
                elif image.mode not in ("RGB", "L"):
                    image = image.convert("RGB")
                width, height = image.size
                name = f"{key}-{width}x{height}.jpg"
                partial = folder / f".{name}.{os.getpid()}.part"
                image.save(partial, "JPEG", quality=82)
        os.replace(partial, folder / name)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:120]
        return f"no preview: {reason}"
    return Thumb(name, width, height)
