"""The secret token in the webhook receiver's URL path: random, one per account, kept in the
account's ledger.

The path token is what authenticates a delivery (the seed names no signature scheme), so it
must not be computable from anything a third party may hold, the API key included. It is
drawn once per account and kept in the ledger (``Ledger.webhook_secret``), so that orders
placed by an earlier run (whose webhook URL carries it) still reach a later run, whatever
port or public URL that run listens on, and a ledger carried to a new home keeps it.

Earlier versions kept it in a 0600 file beside the ledger (``<ledger file>.webhook-secret``,
or in the default state folder for a PostgreSQL ledger); a ledger that has none yet takes
that one, so the orders placed then still reach the receiver.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from styldod_batch.errors import ConfigurationError
from styldod_batch.ledger import is_postgres_url, ledger_path, open_ledger
from styldod_batch.ledger.location import account_id, default_state_dir
from styldod_batch.settings import Settings

FILE_SUFFIX: Final = ".webhook-secret"
_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")


def earlier_secret_path(settings: Settings) -> Path:
    """Where an earlier version kept the account's webhook secret."""
    if settings.ledger and not is_postgres_url(settings.state):
        ledger = ledger_path(settings)
        return ledger.with_name(ledger.name + FILE_SUFFIX)
    name = account_id(settings.base_url, settings.api_key) + FILE_SUFFIX
    return default_state_dir() / name


def earlier_secret(settings: Settings) -> str | None:
    """The secret an earlier version kept in a file, if there is one."""
    path = earlier_secret_path(settings)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the webhook secret: {exc.strerror}") from exc
    with os.fdopen(descriptor, "r", encoding="ascii", errors="replace") as handle:
        secret = handle.read(256).strip()
    if not _SHAPE.fullmatch(secret):
        raise ConfigurationError(
            f"{path}: this is not a webhook secret (32 to 128 URL-safe characters); "
            "orders placed before may carry it in their webhook URL: restore it, or remove "
            "the file"
        )
    return secret


async def webhook_secret(settings: Settings) -> str:
    """The account's webhook path token, from its ledger (drawn and kept there once)."""
    ledger = await open_ledger(settings)
    try:
        return await ledger.webhook_secret(earlier_secret(settings))
    finally:
        await ledger.close()
