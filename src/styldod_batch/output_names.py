"""Where an output goes and what may be fetched: the download folder checked for writing, a
path under it from the names the service gives (no way out of the folder, within the file
system's limits), temporary names beside it, and output URLs checked as http(s) and shown
without their query strings (pre-signed signatures)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path, PurePosixPath
from typing import Final

from yarl import URL

from styldod_batch.errors import (
    ConfigurationError,
    StyldodError,
)

# The longest file name (one path component) common file systems take, in bytes.
NAME_MAX_BYTES: Final = 255
# ".<name>.part-<8 hex>": what a temporary name adds to the final one.
_PART_SUFFIX_BYTES: Final = len(".part-") + 8


class UnusableOutput(StyldodError):
    """An output that cannot be fetched or saved as the service names it; never retried."""


def check_download_folder(directory: Path) -> None:
    """Make ``directory`` if missing and prove a file can be written there, before any work
    is sent; raises ``ConfigurationError`` naming the folder."""
    probe = directory / f".styldod-batch-probe-{secrets.token_hex(4)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"{directory}: cannot save downloads there: {reason}") from exc


def _checked_parts(name: str, *, what: str) -> list[str]:
    """The path components of ``name`` ('/' or '\\' separated), or why it cannot name a file."""
    if "\0" in name:
        raise UnusableOutput(f"the {what} contains a NUL character")
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if ".." in parts:
        raise UnusableOutput(f"the {what} has a '..' part")
    for part in parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX_BYTES:
            raise UnusableOutput(
                f"the {what} has a part of {size} bytes; file names are limited to "
                f"{NAME_MAX_BYTES} bytes"
            )
    return parts


def output_path(directory: Path, order_key: str, client_image_id: str) -> Path:
    """``DIR/<order>/<client_image_id>``, with no way out of ``DIR``.

    Raises ``UnusableOutput`` for an ID that cannot name a file there: empty, with a NUL, a
    '..' part, or a part longer than the file system takes.
    """
    order_parts = _checked_parts(order_key, what="order name")
    image_parts = _checked_parts(client_image_id, what="client_image_id")
    if not image_parts:
        raise UnusableOutput("the client_image_id names no file")
    return directory.joinpath(*order_parts, *image_parts)


def temporary_path(dest: Path) -> Path:
    """A fresh name beside ``dest`` for the bytes in transit, within the file name limit."""
    room = NAME_MAX_BYTES - 1 - _PART_SUFFIX_BYTES
    stem = dest.name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return dest.with_name(f".{stem}.part-{secrets.token_hex(4)}")


def _before_query(text: str) -> str:
    return re.split(r"[?#]", text, maxsplit=1)[0]


def shown_url(url: str | URL) -> str:
    """A URL fit for messages and reports: no query or fragment (a pre-signed URL's signature
    is there), no user info."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError):
        return _before_query(str(url))
    if not parsed.absolute:
        return _before_query(str(url))
    return str(parsed.with_query(None).with_fragment(None).with_user(None))


# Any "scheme://..." in a message, up to its query or fragment.
_URL_WITH_QUERY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'\"<>]*)[?#][^\s'\"<>]*")


def without_queries(message: str) -> str:
    """The last line of defence: whatever an exception said, no query string leaves here."""
    return _URL_WITH_QUERY.sub(r"\1", message)


def http_url(raw: object) -> URL:
    """``raw`` as an absolute http(s) URL, or ``UnusableOutput`` saying why not."""
    if not isinstance(raw, str):
        raise UnusableOutput(f"the output URL is a {type(raw).__name__}, not a string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise UnusableOutput(f"the output URL {_before_query(raw)!r} contains control characters")
    try:
        url = URL(raw)
    except (ValueError, TypeError) as exc:
        raise UnusableOutput(f"the output URL {shown_url(raw)!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UnusableOutput(f"the output URL {shown_url(raw)!r} is not an http(s) URL")
    return url
