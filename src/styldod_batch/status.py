"""How far along an order is: the one ranking of order statuses and events.

Events arrive late, twice or out of order, and polls race them: every place that keeps an
order's status (the follower, the webhook receiver, the journal) compares by this rank, so
a report of a lower status never overwrites a higher one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from styldod_batch.contract import (
    EVENT_COMPLETED,
    EVENT_ERROR,
    EVENT_EXPERT_ASSIGNED,
    EVENT_POST_PROCESSING,
    EVENT_PRE_PROCESSING,
)

STATUS_RANK: Final[Mapping[str, int]] = MappingProxyType(
    {
        "pre_processing": 1,
        "expert_assigned": 2,
        "post_processing": 3,
        "completed": 4,
        "error": 4,
    }
)
# The rank at which an order has nothing more to report.
FINAL_RANK: Final = STATUS_RANK["completed"]

# The order status each webhook event announces.
STATUS_OF_EVENT: Final[Mapping[str, str]] = MappingProxyType(
    {
        EVENT_PRE_PROCESSING: "pre_processing",
        EVENT_EXPERT_ASSIGNED: "expert_assigned",
        EVENT_POST_PROCESSING: "post_processing",
        EVENT_COMPLETED: "completed",
        EVENT_ERROR: "error",
    }
)


def status_rank(status: str | None) -> int:
    """The rank of an order status; 0 for none, or one this engine does not know."""
    return STATUS_RANK.get(status or "", 0)


def event_rank(event: str) -> int:
    """The rank of the status a webhook event announces; 0 for an unknown event."""
    return status_rank(STATUS_OF_EVENT.get(event))


def is_final_status(status: str | None) -> bool:
    return status_rank(status) >= FINAL_RANK
