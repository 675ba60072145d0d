"""Receiver for the service's order events (aiohttp.web).

Deliveries are authenticated by a secret token in the URL path (the seed names no signature
scheme). The receiver checks the payload's shape, records the event, and only then answers
200; it is idempotent (the service retries, so an event can arrive more than once) and an
order's status never goes backwards when events arrive out of order.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from styldod_batch.contract import ORDER_EVENTS
from styldod_batch.status import FINAL_RANK, event_rank


class MalformedEvent(ValueError):
    pass


def parse_event(body: bytes) -> dict[str, Any]:
    """The seed's payload: ``{"event", "orderID", "data": {"image_list", "order_status"...}}``."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise MalformedEvent("the body must be a JSON object")
    event, order_id, data = payload.get("event"), payload.get("orderID"), payload.get("data")
    if event not in ORDER_EVENTS:
        raise MalformedEvent(f"unknown event {event!r}")
    if not isinstance(order_id, str | int) or isinstance(order_id, bool) or not str(order_id):
        raise MalformedEvent("orderID is missing")
    if not isinstance(data, dict) or not isinstance(data.get("image_list"), list):
        raise MalformedEvent("data.image_list is missing")
    if not isinstance(data.get("order_status"), str):
        raise MalformedEvent("data.order_status is missing")
    for index, image in enumerate(data["image_list"]):
        if not isinstance(image, dict) or not isinstance(image.get("client_image_id"), str):
            raise MalformedEvent(f"data.image_list[{index}].client_image_id is missing")
    payload["orderID"] = str(order_id)
    return payload


@dataclass(slots=True)
class OrderState:
    order_id: str
    status: str = ""
    rank: int = 0
    events: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.rank >= FINAL_RANK


class WebhookReceiver:
    """``async with WebhookReceiver() as hooks:`` serves ``hooks.url`` until closed.

    ``on_event`` runs before the 200 is sent (a place to make the event durable).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(18)
        self.on_event = on_event
        self.orders: dict[str, OrderState] = {}
        self.deliveries = 0
        self.duplicates = 0
        self._seen: set[tuple[str, str, str]] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def path(self) -> str:
        return f"/hooks/{self.token}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application(client_max_size=16 * 1024**2)
        app.router.add_post("/hooks/{token}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if not secrets.compare_digest(request.match_info["token"], self.token):
            return web.json_response({"error": "not found"}, status=404)
        try:
            payload = parse_event(await request.read())
        except MalformedEvent as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.deliveries += 1
        if self.on_event is not None:
            outcome = self.on_event(payload)
            if asyncio.iscoroutine(outcome):
                await outcome
        self._record(payload)
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({"received": True})

    def _record(self, payload: dict[str, Any]) -> None:
        order_id, event = payload["orderID"], payload["event"]
        identity = (order_id, event, str(payload["data"].get("updatedAt", "")))
        if identity in self._seen:
            self.duplicates += 1
            return
        self._seen.add(identity)
        state = self.orders.setdefault(order_id, OrderState(order_id))
        state.events.append(event)
        rank = event_rank(event)
        if rank >= state.rank:
            state.rank = rank
            state.status = payload["data"]["order_status"]
            state.images = payload["data"]["image_list"]

    async def wait_final(self, order_ids: Iterable[str], timeout_s: float) -> bool:
        """True once every order has had its final event; False when the time runs out."""
        wanted = set(order_ids)

        def all_final() -> bool:
            return all(o in self.orders and self.orders[o].final for o in wanted)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(all_final), timeout_s)
            except TimeoutError:
                return False
        return True
