"""The secret token in the webhook receiver's URL path: random, one per account, kept.

The path token is what authenticates a delivery (the seed names no signature scheme), so it
must not be computable from anything a third party may hold, the API key included. It is
drawn once per account and kept, so that orders placed by an earlier run (whose webhook URL
carries it) still reach a later run, whatever port or public URL that run listens on.

It lives in a 0600 file beside the account's ledger (for a PostgreSQL ledger, or none, in
the account's default state folder): ``<ledger file name>.webhook-secret``. It belongs in
the ledger itself; this file is where it waits until the ledger has a place for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Final

from styldod_batch.errors import ConfigurationError
from styldod_batch.ledger import is_postgres_url, ledger_path
from styldod_batch.ledger.location import account_id, default_state_dir, make_private_folder
from styldod_batch.settings import Settings

FILE_SUFFIX: Final = ".webhook-secret"
# 32 bytes of randomness, URL-safe (it goes into a URL path as it is).
_SECRET_BYTES: Final = 32
_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")
_FILE_MODE: Final = 0o600


def secret_path(settings: Settings) -> Path:
    """Where the account's webhook secret is kept."""
    if settings.ledger and not is_postgres_url(settings.state):
        ledger = ledger_path(settings)
        return ledger.with_name(ledger.name + FILE_SUFFIX)
    name = account_id(settings.base_url, settings.api_key) + FILE_SUFFIX
    return default_state_dir() / name


def webhook_secret(settings: Settings) -> str:
    """The account's webhook path token: read from its file, or drawn and written there once
    (0600, in a 0700 folder). Two processes starting at once agree on one secret."""
    path = secret_path(settings)
    try:
        make_private_folder(path.parent)
        if not path.exists():
            _write_once(path, secrets.token_urlsafe(_SECRET_BYTES))
        return _read(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"{path}: cannot keep the webhook secret there: {reason}") from exc


def _write_once(path: Path, secret: str) -> None:
    """Written whole under a temporary name, then linked into place: a reader never sees a
    part of it, and of two writers the first one's secret stays."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(temporary, flags, _FILE_MODE)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: its secret
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read(path: Path) -> str:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "r", encoding="ascii", errors="replace") as handle:
        if os.fstat(handle.fileno()).st_mode & 0o077:
            os.fchmod(handle.fileno(), _FILE_MODE)
        secret = handle.read(256).strip()
    if not _SHAPE.fullmatch(secret):
        raise ConfigurationError(
            f"{path}: this is not a webhook secret (32 to 128 URL-safe characters); "
            "orders placed before may carry it in their webhook URL, so it is not replaced: "
            "restore it, or remove the file to draw a new one"
        )
    return secret
