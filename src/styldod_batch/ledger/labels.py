"""A listing's label: the name its orders and its download folder go by, unique in the
account and claimed with the listing (so two runs at once cannot both take it)."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator
from pathlib import PurePath

from styldod_batch.ledger.dialect import Dialect, Tx

_MAX_PARENTS = 4


async def free_label(
    db: Dialect, tx: Tx, name: str, identity: str = "", taken: Collection[str] = ()
) -> str:
    """A listing's label, unique in the account: its order names and its download folder.
    A second listing of the same name is told apart by the folders above it, "Unit-1
    (bob)", so that its orders say which it is; "[2]" only when the path cannot tell.
    ``taken``: labels handed out outside the ledger (a dry run's new listings)."""
    for label in candidate_labels(name, identity):
        if label in taken:
            continue
        if not await tx.fetchone(db.q("SELECT 1 FROM {p}listings WHERE {a}label = ?"), label):
            return label
    raise AssertionError("unreachable: the numbered labels never end")


def candidate_labels(name: str, identity: str) -> Iterator[str]:
    """A listing's labels in the order they are tried: its name, then with its folders."""
    yield name
    kind, _, where = identity.partition(":")
    if kind == "folder":
        parents = [p for p in PurePath(where).parent.parts if p not in ("/", "")]
        for depth in range(1, min(len(parents), _MAX_PARENTS) + 1):
            yield f"{name} ({'-'.join(parents[-depth:])})"
    yield from (f"{name} [{number}]" for number in itertools.count(2))
