"""Superseded by ``styldod_batch.ledger``; kept while modules still import these names."""

from __future__ import annotations

from styldod_batch.ledger import Ledger as Journal
from styldod_batch.ledger.sqlite import STATUS_RANK

__all__ = ["STATUS_RANK", "Journal"]
