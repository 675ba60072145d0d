"""The one order tracker: following created orders to ``completed`` or ``error``, fed by
webhook events (``on_event``, from ``webhooks.WebhookReceiver``) and by polling alike.

A webhook event is a hint, never the truth: anyone who reaches the receiver's URL can send
one. An event moves an order's shown progress forward; a ``completed`` or ``error`` event
makes the follower ask the API (GET /v2/orders/{id}), and an order's final status, image
states and output URLs are taken from that answer alone. The ledger likewise records an
event as a hint (``event_hint``): its image list never reaches the ledger.

Polls and those confirmations take the rate budget at low priority (they wait while any
upload or order request is waiting), and each order is asked about at most once per
``poll_interval_s``.

Only the orders named by ``watch()`` are followed. An event for another order is recorded in
the ledger and otherwise ignored: it may be early (its order's creation has not returned to
us yet), so it waits in a bounded buffer until ``watch()`` names it, but it never starts a
download nor keeps the wait going.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from styldod_batch.api import OrderAPIClient
from styldod_batch.errors import AuthenticationError, StyldodError
from styldod_batch.ledger import Ledger
from styldod_batch.status import STATUS_OF_EVENT, is_final_status, status_rank

# Orders whose events may wait for ``watch()``; beyond it the oldest are forgotten (the
# ledger still has them, and ``watch()`` is given the ledger's status).
EARLY_ORDERS_KEPT = 4096
# Event names remembered per order (repeats included); the status never depends on them.
EVENTS_KEPT = 32
# A final event makes the follower ask the API until the order is final: ``poll_interval_s``
# apart for this many asks (the service may answer a moment behind its own event), then
# ``CONFIRM_SLOWDOWN`` times slower (a forged event costs a slow poll of a watched order).
CONFIRM_ASKS_FAST = 3
CONFIRM_SLOWDOWN = 5


def event_hint(payload: dict[str, Any]) -> dict[str, Any]:
    """What a webhook event may tell the ledger: that the order moved to the status its event
    names, if that is not final, and nothing else. Neither its image states nor its output
    URLs are kept, and a final event records no status: the API's answer will."""
    status = STATUS_OF_EVENT.get(str(payload["event"]), "")
    data = payload["data"]
    updated = data.get("updatedAt", "") if isinstance(data, dict) else ""
    return {
        "event": payload["event"],
        "orderID": str(payload["orderID"]),
        "data": {
            "order_status": None if is_final_status(status) else status or None,
            "image_list": [],
            "updatedAt": updated if isinstance(updated, str) else str(updated),
        },
    }


@dataclass(slots=True)
class FollowedOrder:
    key: str
    order_id: str
    status: str = ""
    image_list: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    next_poll: float = 0.0
    # A final event (or a final status not read from the API now) waits to be confirmed.
    confirming: bool = False
    confirm_asks: int = 0
    # Every status the order moved to, in order: one entry per transition.
    history: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return is_final_status(self.status)

    def update(self, status: str, image_list: list[dict[str, Any]]) -> None:
        """Never backwards: a late report of an earlier status is ignored."""
        if status_rank(status) >= status_rank(self.status):
            if status != self.status:
                self.history.append(status)
            self.status = status
            self.image_list = image_list

    @property
    def images(self) -> list[dict[str, Any]]:
        """The image list of the API's latest answer (never an event's)."""
        return self.image_list

    def note_event(self, event: str) -> None:
        if len(self.events) < EVENTS_KEPT:
            self.events.append(event)

    def hint(self, status: str) -> None:
        """A status someone claims: a non-final one is shown, a final one is asked about."""
        if is_final_status(status):
            if not self.final and not self.confirming:
                self.confirming, self.confirm_asks = True, 0
                self.next_poll = 0.0
        elif status_rank(status) > status_rank(self.status):
            self.history.append(status)
            self.status = status

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
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
        # GETs that confirmed (or not) a final event.
        self.confirmations = 0
        self._changes = 0
        self._changed = asyncio.Condition()

    def watch(
        self,
        key: str,
        order_id: str,
        status: str | None = None,
        image_list: list[dict[str, Any]] | None = None,
    ) -> None:
        """Follow ``order_id``. A final ``status`` (the ledger's, from an earlier run) is
        asked about again before the order counts as finished."""
        followed = self.orders.get(order_id) or self.early.pop(order_id, None)
        if followed is None:
            followed = FollowedOrder(key, order_id)
        self.orders[order_id] = followed
        followed.key = key
        if status and not is_final_status(status):
            followed.update(status, image_list or [])
        elif status:
            followed.hint(status)

    async def on_event(self, payload: dict[str, Any]) -> None:
        """A webhook event: durable in the ledger first (as a hint), then noted on its order
        if watched, else kept for ``watch()`` (it may have arrived before its order's
        creation returned). A final event is confirmed by asking the API (in ``wait``)."""
        if self.ledger is not None:
            await self.ledger.record_event(event_hint(payload))
        order_id = payload["orderID"]
        followed = self.orders.get(order_id)
        if followed is None:
            self.unwatched_events += 1
            followed = self._keep_early(order_id)
        followed.note_event(payload["event"])
        followed.hint(STATUS_OF_EVENT.get(payload["event"], ""))
        async with self._changed:
            self._changes += 1
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

    async def wait_for(self, order_ids: Iterable[str], timeout_s: float) -> bool:
        """``wait`` for these orders (watched now if they were not, under their own ID)."""
        for order_id in order_ids:
            if order_id not in self.orders:
                self.watch(order_id, order_id)
        return await self.wait(timeout_s)

    async def wait(self, timeout_s: float) -> bool:
        """True once every watched order is final; False when ``timeout_s`` runs out."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._follow_until_final()
        except TimeoutError:
            return False
        return True

    async def refresh(self) -> None:
        """Ask the API once about every watched order that is not final (``download``)."""
        for order in [o for o in self.orders.values() if not o.final]:
            await self._ask(order)

    def _askable(self, order: FollowedOrder) -> bool:
        return not order.final and (self.poll or order.confirming) and self.api is not None

    async def ask_due(self) -> int:
        """Ask the API about every order whose next ask is due (polled, or a final hint being
        confirmed); returns how many were asked."""
        now = self.clock()
        due = [o for o in self.orders.values() if self._askable(o) and o.next_poll <= now]
        for order in due:
            await self._ask(order)
        return len(due)

    async def _follow_until_final(self) -> None:
        while True:
            seen = self._changes
            await self.ask_due()
            if self.all_final():
                return
            pending = [o.next_poll for o in self.orders.values() if self._askable(o)]
            delay = max(0.0, min(pending) - self.clock()) if pending else None
            async with self._changed:  # until the next ask is due, or an event arrives
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(self._changed_since(seen)), delay)

    def _changed_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self._changes != seen

    async def _ask(self, order: FollowedOrder) -> None:
        """GET the order; its status and image list are taken from the answer alone."""
        assert self.api is not None
        confirming = order.confirming
        try:
            answer = await self.api.get_order(order.order_id, low_priority=True)
        except AuthenticationError:
            raise
        except StyldodError:
            order.next_poll = self.clock() + self.poll_interval_s
            return
        self.polls += 1
        slower = confirming and order.confirm_asks >= CONFIRM_ASKS_FAST
        interval = self.poll_interval_s * (CONFIRM_SLOWDOWN if slower else 1)
        order.next_poll = self.clock() + interval
        status = str(answer.get("order_status", ""))
        listed = answer.get("image_list")
        images = [i for i in listed if isinstance(i, dict)] if isinstance(listed, list) else []
        order.update(status, images)
        if confirming:
            self.confirmations += 1
            # Not final after all (a forged event, or the service a moment behind): asked
            # again, soon a few times, then slower, until the API says it is final.
            order.confirm_asks += 1
            order.confirming = not order.final
        if self.ledger is not None:
            self.ledger.record_progress(order.order_id, status, images)
