"""A listing's label: the name its orders and its download folder go by, unique in the
account and claimed with the listing (so two runs at once cannot both take it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import PurePath

from styldod_batch.ledger.dialect import Dialect, Tx

_MAX_PARENTS = 4


async def free_label(db: Dialect, tx: Tx, name: str, identity: str = "") -> str:
    """A listing's label, unique in the account: its order names and its download folder.
    A second listing of the same name is told apart by the folders above it, "Unit-1
    (bob)", so that its orders say which it is; "[2]" only when the path cannot tell."""
    for label in _labels(name, identity):
        if not await tx.fetchone(db.q("SELECT 1 FROM {p}listings WHERE {a}label = ?"), label):
            return label
    raise AssertionError("unreachable: the numbered labels never end")


def _labels(name: str, identity: str) -> Iterator[str]:
    yield name
    kind, _, where = identity.partition(":")
    if kind == "folder":
        parents = [p for p in PurePath(where).parent.parts if p not in ("/", "")]
        for depth in range(1, min(len(parents), _MAX_PARENTS) + 1):
            yield f"{name} ({'-'.join(parents[-depth:])})"
    yield from (f"{name} [{number}]" for number in itertools.count(2))
