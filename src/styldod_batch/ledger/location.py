"""Where an account's ledger lives, and who may read it.

One ledger per API account (base URL + key fingerprint), not one per invocation: whatever the
working folder, the inputs or the process, runs of one account see the same record. The
default home is ``$XDG_STATE_HOME/styldod-batch/`` (else ``~/.local/state/styldod-batch/``);
``--state PATH`` or ``Settings.state`` chooses a folder (one ledger per account inside) or a
file. Folders are created 0700 and files 0600: a ledger holds order bodies and webhook URLs,
whose path carries a secret token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from styldod_batch.identity import account_id as account_id
from styldod_batch.identity import key_fingerprint as key_fingerprint

LEDGER_SUFFIX = ".sqlite"
_FOLDER_MODE = 0o700
_FILE_MODE = 0o600


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_STATE_HOME", "").strip()
    # The XDG spec ignores a relative path here.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "styldod-batch"


def ledger_file(
    state: str | os.PathLike[str] | None, base_url: str, api_key: str | None
) -> tuple[Path, bool]:
    """(the ledger file for this account, whether it sits in a folder of ledgers).

    ``state`` names a folder when it is one, or when it does not exist and has no suffix;
    anything else names the ledger file itself.
    """
    name = account_id(base_url, api_key) + LEDGER_SUFFIX
    if state is None or str(state) == "":
        return default_state_dir() / name, True
    path = Path(state).expanduser()
    if path.is_dir() or (not path.exists() and not path.suffix):
        return path / name, True
    return path, False


def ledgers_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*" + LEDGER_SUFFIX) if p.is_file())


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700; a folder of ledgers is kept 0700."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            created.mkdir(mode=_FOLDER_MODE)
        os.chmod(created, _FOLDER_MODE)  # mkdir's mode passes through the umask


def make_private_file(path: Path) -> None:
    """Create ``path`` 0600 before SQLite opens it (SQLite gives its -wal and -shm files the
    database's mode); an existing ledger of ours is brought to 0600 too."""
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
    try:
        if os.fstat(descriptor).st_mode & 0o077:
            os.fchmod(descriptor, _FILE_MODE)
    finally:
        os.close(descriptor)
