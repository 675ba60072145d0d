"""Identity, in one place: what names an API key, an account, and a key's rate budget.

* A **key** is known by its fingerprint, never by itself: the ledger, the budgets, logs
  and the sandbox all name it so.
* An **account** is the service's base URL in its canonical spelling (RFC 3986) plus the
  key: ``HTTPS://Host:443/v2/./`` and ``https://host/v2`` are one account, one ledger.
* A key's **rate budget** belongs to the key alone: the 20 requests per second are the
  key's, however the base URL is spelled.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
# RFC 3986 "unreserved": decoding these never changes what a URL means.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def key_fingerprint(api_key: str | None) -> str:
    """Identifies a key without revealing it ("" for no key)."""
    if not api_key:
        return ""
    return hashlib.sha256(b"styldod-batch:" + api_key.encode()).hexdigest()[:16]


def key_label(api_key: str | None) -> str:
    """The fingerprint where a name must not be empty: "anonymous" for no key."""
    return key_fingerprint(api_key) or "anonymous"


def budget_scope(api_key: str | None, name: str) -> str:
    """``<key fingerprint>-<budget name>``: one shared budget per key and kind of request
    (the API's, storage's), whatever base URL or folder a process was started with."""
    return f"{key_label(api_key)}-{name}"


def _normalise_escapes(text: str) -> str:
    """Upper-case hex in escapes, and unreserved characters decoded (RFC 3986, 6.2.2)."""

    def fix(match: re.Match[str]) -> str:
        char = unquote(match.group(0))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _PERCENT.sub(fix, text)


def canonical_base_url(url: str) -> str:
    """The base URL as RFC 3986's syntax-based normalisation spells it: scheme and host in
    lower case, no default port, no dot segments, no trailing slash, escapes normalised.
    Raises ``ValueError`` for a URL without a scheme and host."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        raise ValueError(f"not an absolute URL: {url!r}")
    port = parts.port  # raises ValueError for a port out of range
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    if parts.username is not None:
        # Credentials never belong in an account's name: keep the user only as a marker.
        netloc = f"{quote(parts.username, safe='')}@{netloc}"
    path = _normalise_escapes(parts.path)
    if path:
        trailing = path.endswith(("/", "/.", "/.."))
        path = posixpath.normpath(path)
        # normpath keeps a leading "//" (POSIX); a URL path does not.
        path = "/" + path.lstrip("/") if path != "." else ""
        if trailing and path != "/":
            path += "/"
    path = path.rstrip("/")
    query = _normalise_escapes(parts.query)
    return urlunsplit((scheme, netloc, path, query, ""))


def account_id(base_url: str, api_key: str | None) -> str:
    """A short stable name for an account: its canonical base URL and key fingerprint."""
    return account_id_of(base_url, key_fingerprint(api_key))


def account_id_of(base_url: str, fingerprint: str) -> str:
    """``account_id`` for a key known by its fingerprint only (a rotated key's ledger)."""
    account = f"{canonical_base_url(base_url)}\0{fingerprint}"
    return hashlib.sha256(account.encode()).hexdigest()[:16]
