"""Is a file the image its name says? Checked before its listing is ordered, cheaply.

An order costs money, so a file whose bytes are not the type its suffix names (an HTML error
page saved as ``broken.jpg``) or a JPEG or PNG cut off before its end marker fails alone,
named, instead of being ordered. Only the head (the magic number) and the tail (the end
marker) are read: two small reads at most, whatever the file's size.

Magic numbers: JPEG ``FF D8 FF``; PNG ``89 50 4E 47 0D 0A 1A 0A``; TIFF ``II*\\0`` or
``MM\\0*`` (BigTIFF ``+``); WebP ``RIFF....WEBP``; HEIC/HEIF an ``ftyp`` box naming a HEIF
brand. End markers: JPEG ``FF D9`` (in the last ``TAIL_BYTES``: some cameras append a few
bytes after it; entropy-coded data never holds it), PNG the ``IEND`` chunk. A JPEG with more
than that appended after its end (a phone's motion photo carries a video there) is taken for
one cut off.
"""

from __future__ import annotations

import os
from typing import Final

HEAD_BYTES: Final = 64
TAIL_BYTES: Final = 4096
_JPEG: Final = b"\xff\xd8\xff"
_JPEG_END: Final = b"\xff\xd9"
_PNG: Final = b"\x89PNG\r\n\x1a\n"
# The IEND chunk's type and CRC: the same bytes at the end of every complete PNG.
_PNG_END: Final = b"IEND\xaeB`\x82"
_TIFF: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_NAMES: Final = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/tiff": "TIFF",
    "image/webp": "WebP",
    "image/heic": "HEIC",
}


def sniff(head: bytes) -> str | None:
    """The image type the first bytes of a file say, or None."""
    if head.startswith(_JPEG):
        return "image/jpeg"
    if head.startswith(_PNG):
        return "image/png"
    if head[:4] in _TIFF:
        return "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = [head[8:12]] + [head[i : i + 4] for i in range(16, min(size, len(head)), 4)]
        if any(brand in _HEIF_BRANDS for brand in brands):
            return "image/heic"
    return None


def content_problem(head: bytes, tail: bytes, content_type: str) -> str | None:
    """Why a file whose name says ``content_type`` is not that image (``head``: its first
    ``HEAD_BYTES``, ``tail``: its last ``TAIL_BYTES``), or None."""
    expected = _NAMES.get(content_type)
    if expected is None:
        return None  # a type the check does not know: the API decides
    found = sniff(head)
    if found != content_type:
        what = _NAMES[found] if found is not None else _describe(head)
        return f"its name says {expected}, but its content is {what}"
    if content_type == "image/jpeg" and _JPEG_END not in tail:
        return "a JPEG cut off before its end marker (FF D9): incomplete"
    if content_type == "image/png" and not tail.endswith(_PNG_END):
        return "a PNG cut off before its end marker (IEND): incomplete"
    return None


def check_file(path: str, size: int, content_type: str) -> str | None:
    """``content_problem`` of the file at ``path`` (``size`` bytes): reads its head and its
    tail only (two ``pread``s, one for a small file). Raises ``OSError`` when it cannot be
    read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if size <= HEAD_BYTES + TAIL_BYTES:
            head = tail = os.pread(fd, size, 0)
        else:
            head = os.pread(fd, HEAD_BYTES, 0)
            tail = os.pread(fd, TAIL_BYTES, size - TAIL_BYTES)
    finally:
        os.close(fd)
    return content_problem(head[:HEAD_BYTES], tail[-TAIL_BYTES:], content_type)


def _describe(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith((b"<?xml", b"<")):
        return "XML or HTML text"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b")):
        return "an archive"
    return "not a known image format"
