"""The files each workload sends, and the job files that hand pre-signed URLs to the drivers.

Contents are pseudo-random (seeded), so no server or filesystem can take a short cut on
repeated bytes; the large files of workload (e) are sparse, which is fine for a memory bound.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

CONTENT_TYPE = "image/jpeg"
WRITE_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileSet:
    """Files under ``root``: relative names (``folder/img00001.jpg``) and their sizes."""

    root: Path
    files: tuple[tuple[str, int], ...]
    content_type: str = CONTENT_TYPE

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.files]

    @property
    def folders(self) -> list[str]:
        return sorted({name.rpartition("/")[0] for name, _ in self.files})

    def sizes(self) -> dict[str, int]:
        return dict(self.files)


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    """Random bytes framed as a JPEG (its magic number and end marker), so that the content
    check takes them for one."""
    with path.open("wb") as handle:
        remaining = size
        while remaining > 0:
            step = min(WRITE_CHUNK, remaining)
            chunk = bytearray(rng.randbytes(step))
            if remaining == size and step >= 4:
                chunk[:4] = b"\xff\xd8\xff\xe0"
            if remaining == step and size >= 6:
                chunk[-2:] = b"\xff\xd9"
            handle.write(chunk)
            remaining -= step


def make_files(root: Path, *, count: int, size: int, folders: int = 0, seed: int = 7) -> FileSet:
    """``count`` files of ``size`` random bytes, flat or spread evenly over ``folders``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = []
    for index in range(count):
        name = f"img{index:06d}.jpg"
        if folders:
            name = f"listing-{index % folders:03d}/{name}"
            (root / name).parent.mkdir(exist_ok=True)
        _write_random(root / name, size, rng)
        files.append((name, size))
    return FileSet(root, tuple(sorted(files)))


def make_tiny_files(root: Path, *, count: int, folders: int) -> FileSet:
    """Many six-byte files framed as JPEGs (the scanner refuses empty ones, the content
    check anything else), for the planning workload."""
    files = []
    per_folder = -(-count // folders)
    for folder in range(folders):
        directory = root / f"listing-{folder:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(folder * per_folder, min(count, (folder + 1) * per_folder)):
            name = f"img{index:07d}.jpg"
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"\xff\xd8\xff\xe0\xff\xd9")
            finally:
                os.close(fd)
            files.append((f"{directory.name}/{name}", 6))
    return FileSet(root, tuple(files))


def make_sparse_files(root: Path, *, count: int, size: int) -> FileSet:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        name = f"large{index:03d}.jpg"
        with (root / name).open("wb") as handle:
            handle.truncate(size)  # sparse, framed as a JPEG for the content check
            handle.write(b"\xff\xd8\xff\xe0")
            handle.seek(size - 2)
            handle.write(b"\xff\xd9")
        files.append((name, size))
    return FileSet(root, tuple(files))


def write_job(fileset: FileSet, urls: list[str], path: Path) -> Path:
    """One line per file for the drivers: absolute path, size, content type, URL (tab-separated)."""
    lines = [
        f"{fileset.root / name}\t{size}\t{fileset.content_type}\t{url}\n"
        for (name, size), url in zip(fileset.files, urls, strict=True)
    ]
    path.write_text("".join(lines))
    return path
