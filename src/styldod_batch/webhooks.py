"""Receiver for the service's order events (aiohttp's low-level web server).

Deliveries are authenticated by a secret token in the URL path (the seed names no signature
scheme). The receiver checks the payload's shape, hands the event to ``on_event`` (the order
tracker's, ``follow.OrderFollower.on_event``, which records it and takes it as a hint), and
only then answers 200. It tracks no order itself: repeats are counted here (the service
retries, so an event can arrive more than once), and an order's status, which never goes
backwards, is the tracker's alone.

Slow or stalled clients cannot hold it: a connection must complete its request line and
headers within ``header_timeout_s`` (also the idle time allowed between deliveries on a
kept-alive connection) and its body within ``body_timeout_s``, and at most
``max_connections`` are open at once (a new one closes the oldest that is not delivering).
A body is at most 1 MiB (aiohttp's default; an order of 100 images is far below it).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from styldod_batch.contract import ORDER_EVENTS
from styldod_batch.follow import FollowedOrder, OrderFollower

HOOK_PATH_PREFIX = "/hooks/"
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
# After an answer given before the body was read (404, 408), how long the rest is drained.
LINGER_S = 1.0
MAX_CONNECTIONS = 256
# Memory a long-running receiver keeps: this many event identities to recognise repeats (the
# journal recognises older ones).
IDENTITIES_KEPT = 100_000


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


class _BoundedServer(web.Server):
    """aiohttp's low-level server holding at most ``max_connections`` connections: one more
    closes the oldest connection that is not inside a delivery (stalled or idle), or itself
    when every other one is busy."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.delivering: set[web.RequestHandler] = set()
        self.shed = 0

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        # A closed connection stays listed until its task ends: count the open ones only.
        open_now = [c for c in self.connections if c.transport is not None]
        if len(open_now) > self.max_connections:
            oldest_idle = next(c for c in open_now if c not in self.delivering)
            self.shed += 1
            oldest_idle.force_close()


class WebhookReceiver:
    """``async with WebhookReceiver() as hooks:`` serves ``hooks.url`` until closed.

    ``on_event`` runs before the 200 is sent (a place to make the event durable); it is
    given every valid event, whatever its order. When it is an order tracker's
    (``OrderFollower.on_event``, as ``Uploader.listen`` sets it), ``tracker``, ``orders`` and
    ``wait_final`` are that tracker's.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        hold_until_handled: bool = False,
    ) -> None:
        self.host = host
        # Answer 503 (the service retries) while no ``on_event`` is set: an event is never
        # acknowledged before there is somewhere to record it.
        self.hold_until_handled = hold_until_handled
        self.port = port
        self.token = token or secrets.token_urlsafe(18)
        self.tracker: OrderFollower | None = None
        self.on_event = on_event
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.deliveries = 0
        self.duplicates = 0
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._server: _BoundedServer | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def on_event(self) -> Callable[[dict[str, Any]], Any] | None:
        return self._on_event

    @on_event.setter
    def on_event(self, handler: Callable[[dict[str, Any]], Any] | None) -> None:
        # A tracker's handler: the tracker stays known after the handler is unset.
        owner = getattr(handler, "__self__", None)
        if isinstance(owner, OrderFollower):
            self.tracker = owner
        self._on_event = handler

    @property
    def orders(self) -> dict[str, FollowedOrder]:
        """The tracker's orders (status and images from the API's answers), or none."""
        return self.tracker.orders if self.tracker is not None else {}

    @property
    def path(self) -> str:
        return f"{HOOK_PATH_PREFIX}{self.token}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def connections_shed(self) -> int:
        """Connections closed because ``max_connections`` were open."""
        return self._server.shed if self._server is not None else 0

    async def __aenter__(self) -> WebhookReceiver:
        self._server = _BoundedServer(
            self._handle,
            max_connections=self.max_connections,
            # Closes a connection that has not completed a request's headers in time, from
            # its start or from its previous answer.
            keepalive_timeout=self.header_timeout_s,
            lingering_time=LINGER_S,
            # A delivery whose client went away still finishes recording its event.
            handler_cancellation=False,
            access_log=None,
        )
        self._runner = web.ServerRunner(self._server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site.port
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _token_matches(self, token: str) -> bool:
        # Bytes, not str: compare_digest refuses non-ASCII str (a TypeError, hence a 500).
        return secrets.compare_digest(
            token.encode("utf-8", "surrogatepass"), self.token.encode("utf-8", "surrogatepass")
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        token = request.path.removeprefix(HOOK_PATH_PREFIX)
        if token == request.path or not self._token_matches(token):
            return web.json_response({"error": "not found"}, status=404)
        if request.method != "POST":
            return web.json_response(
                {"error": "method not allowed"}, status=405, headers={"Allow": "POST"}
            )
        assert self._server is not None
        self._server.delivering.add(request.protocol)
        try:
            return await self._deliver(request)
        finally:
            self._server.delivering.discard(request.protocol)

    async def _deliver(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await request.read()
        except TimeoutError:
            answer = web.json_response({"error": "the body did not arrive in time"}, status=408)
            answer.force_close()
            return answer
        except ConnectionError:  # the client left mid-body: nothing to answer, nothing to log
            gone = web.Response(status=400)
            gone.force_close()
            return gone
        try:
            payload = parse_event(body)
        except MalformedEvent as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.on_event is None and self.hold_until_handled:
            return web.json_response(
                {"error": "not ready to record events yet"},
                status=503,
                headers={"Retry-After": "1"},
            )
        self.deliveries += 1
        if self.on_event is not None:
            outcome = self.on_event(payload)
            if asyncio.iscoroutine(outcome):
                await outcome
        self._count_repeat(payload)
        return web.json_response({"received": True})

    def _count_repeat(self, payload: dict[str, Any]) -> None:
        identity = (payload["orderID"], payload["event"], str(payload["data"].get("updatedAt", "")))
        if identity in self._seen:
            self.duplicates += 1
            return
        self._seen[identity] = None
        if len(self._seen) > IDENTITIES_KEPT:
            self._seen.popitem(last=False)

    async def wait_final(self, order_ids: Iterable[str], timeout_s: float) -> bool:
        """True once the tracker holds every order final (a final event is confirmed by the
        API first); False when the time runs out, or without a tracker."""
        if self.tracker is None:
            return False
        return await self.tracker.wait_for(order_ids, timeout_s)
