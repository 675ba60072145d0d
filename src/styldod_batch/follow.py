"""Following created orders to ``completed`` or ``error``: by webhook events, or by polling.

Polls take the rate budget at low priority (they wait while any upload or order request is
waiting), and each order is asked about at most once per ``poll_interval_s``.

Only the orders named by ``watch()`` are followed. An event for another order is recorded in
the ledger and otherwise ignored: it may be early (its order's creation has not returned to
us yet), so it waits in a bounded buffer until ``watch()`` names it, but it never starts a
download nor keeps the wait going.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from styldod_batch.api import OrderAPIClient
from styldod_batch.errors import AuthenticationError, StyldodError
from styldod_batch.ledger import Ledger
from styldod_batch.status import is_final_status, status_rank

# Orders whose events may wait for ``watch()``; beyond it the oldest are forgotten (the
# ledger still has them, and ``watch()`` is given the ledger's status).
EARLY_ORDERS_KEPT = 4096
# Event names remembered per order (repeats included); the status never depends on them.
EVENTS_KEPT = 32


@dataclass(slots=True)
class FollowedOrder:
    key: str
    order_id: str
    status: str = ""
    image_list: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    next_poll: float = 0.0

    @property
    def final(self) -> bool:
        return is_final_status(self.status)

    def update(self, status: str, image_list: list[dict[str, Any]]) -> None:
        """Never backwards: a late report of an earlier status is ignored."""
        if status_rank(status) >= status_rank(self.status):
            self.status = status
            self.image_list = image_list

    def note_event(self, event: str) -> None:
        if len(self.events) < EVENTS_KEPT:
            self.events.append(event)

    @property
    def image_errors(self) -> list[str]:
        return [
            str(i.get("client_image_id"))
            for i in self.image_list
            if i.get("image_status") == "error"
        ]


class OrderFollower:
    def __init__(
        self,
        api: OrderAPIClient | None,
        ledger: Ledger | None,
        *,
        poll: bool,
        poll_interval_s: float = 2.0,
        early_orders_kept: int = EARLY_ORDERS_KEPT,
    ) -> None:
        self.api = api
        self.ledger = ledger
        self.poll = poll
        self.poll_interval_s = poll_interval_s
        # The watched orders: only these are waited for and downloaded.
        self.orders: dict[str, FollowedOrder] = {}
        self.polls = 0
        # Events of orders not (yet) watched, oldest first.
        self.early: OrderedDict[str, FollowedOrder] = OrderedDict()
        self.early_orders_kept = early_orders_kept
        self.unwatched_events = 0
        self._changed = asyncio.Condition()

    def watch(
        self,
        key: str,
        order_id: str,
        status: str | None = None,
        image_list: list[dict[str, Any]] | None = None,
    ) -> None:
        followed = self.orders.get(order_id) or self.early.pop(order_id, None)
        if followed is None:
            followed = FollowedOrder(key, order_id)
        self.orders[order_id] = followed
        followed.key = key
        if status:
            followed.update(status, image_list or [])

    async def on_event(self, payload: dict[str, Any]) -> None:
        """A webhook event: durable in the ledger first, then applied to its order if watched,
        else kept for ``watch()`` (it may have arrived before its order's creation returned)."""
        if self.ledger is not None:
            await self.ledger.record_event(payload)
        data = payload["data"]
        order_id = payload["orderID"]
        followed = self.orders.get(order_id)
        if followed is None:
            self.unwatched_events += 1
            followed = self._keep_early(order_id)
        followed.note_event(payload["event"])
        followed.update(data["order_status"], data["image_list"])
        async with self._changed:
            self._changed.notify_all()

    def _keep_early(self, order_id: str) -> FollowedOrder:
        followed = self.early.get(order_id)
        if followed is None:
            followed = self.early[order_id] = FollowedOrder("", order_id)
            while len(self.early) > self.early_orders_kept:
                self.early.popitem(last=False)
        return followed

    def all_final(self) -> bool:
        return all(order.final for order in self.orders.values())

    async def wait(self, timeout_s: float) -> bool:
        """True once every watched order is final; False when ``timeout_s`` runs out."""
        try:
            async with asyncio.timeout(timeout_s):
                if self.poll:
                    await self._poll_until_final()
                else:
                    async with self._changed:
                        await self._changed.wait_for(self.all_final)
        except TimeoutError:
            return False
        return True

    async def _poll_until_final(self) -> None:
        assert self.api is not None
        while not self.all_final():
            now = time.monotonic()
            due = [o for o in self.orders.values() if not o.final and o.next_poll <= now]
            for order in due:
                try:
                    answer = await self.api.get_order(order.order_id, low_priority=True)
                except AuthenticationError:
                    raise
                except StyldodError:
                    order.next_poll = time.monotonic() + self.poll_interval_s
                    continue
                self.polls += 1
                order.next_poll = time.monotonic() + self.poll_interval_s
                status = str(answer.get("order_status", ""))
                listed = answer.get("image_list")
                images = (
                    [i for i in listed if isinstance(i, dict)] if isinstance(listed, list) else []
                )
                order.update(status, images)
                if self.ledger is not None:
                    self.ledger.record_progress(order.order_id, status, images)
            pending = [o.next_poll for o in self.orders.values() if not o.final]
            if pending:
                await asyncio.sleep(max(0.0, min(pending) - time.monotonic()))
