"""Following created orders to ``completed`` or ``error``: by webhook events, or by polling.

Polls take the rate budget at low priority (they wait while any upload or order request is
waiting), and each order is asked about at most once per ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from styldod_batch.api import OrderAPIClient
from styldod_batch.errors import AuthenticationError, StyldodError
from styldod_batch.journal import Journal
from styldod_batch.status import is_final_status, status_rank


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
        journal: Journal | None,
        *,
        poll: bool,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.api = api
        self.journal = journal
        self.poll = poll
        self.poll_interval_s = poll_interval_s
        self.orders: dict[str, FollowedOrder] = {}
        self.polls = 0
        self._changed = asyncio.Condition()

    def watch(
        self,
        key: str,
        order_id: str,
        status: str | None = None,
        image_list: list[dict[str, Any]] | None = None,
    ) -> None:
        followed = self.orders.setdefault(order_id, FollowedOrder(key, order_id))
        followed.key = key
        if status:
            followed.update(status, image_list or [])

    async def on_event(self, payload: dict[str, Any]) -> None:
        """A webhook event: durable in the journal first, then applied."""
        if self.journal is not None:
            await self.journal.record_event(payload)
        data = payload["data"]
        # An event may arrive before the order's creation returned to us: keep it.
        order_id = payload["orderID"]
        followed = self.orders.setdefault(order_id, FollowedOrder("", order_id))
        followed.events.append(payload["event"])
        followed.update(data["order_status"], data["image_list"])
        async with self._changed:
            self._changed.notify_all()

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
                images = list(answer.get("image_list") or [])
                order.update(status, images)
                if self.journal is not None:
                    self.journal.record_progress(order.order_id, status, images)
            pending = [o.next_poll for o in self.orders.values() if not o.final]
            if pending:
                await asyncio.sleep(max(0.0, min(pending) - time.monotonic()))
