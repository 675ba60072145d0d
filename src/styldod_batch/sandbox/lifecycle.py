"""Orders after creation: their progress through the seed's events, and webhook deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from styldod_batch.contract import (
    EVENT_COMPLETED,
    EVENT_ERROR,
    EVENT_EXPERT_ASSIGNED,
    EVENT_POST_PROCESSING,
    EVENT_PRE_PROCESSING,
)
from styldod_batch.sandbox.requestlog import RequestLog


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class SandboxImage:
    client_image_id: str
    image_urls: list[str]
    object_keys: list[str]
    sequence: int | None
    options: dict[str, Any]
    bad: bool
    status: str = "pending"
    output_url: str | None = None

    def public(self, *, with_options: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"client_image_id": self.client_image_id, "image_status": self.status}
        if self.output_url is not None:
            out["output_url"] = self.output_url
        if self.sequence is not None:
            out["sequence"] = self.sequence
        if with_options:
            out["image_urls"] = self.image_urls
            out["options"] = self.options
        return out


@dataclass(slots=True)
class SandboxOrder:
    order_id: str
    key: str
    order_name: str | None
    webhook_url: str | None
    apply_to_all: dict[str, Any]
    images: list[SandboxImage]
    output_token: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    status: str = "pre_processing"
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.updated_at = self.created_at

    def data(self, *, with_options: bool = False) -> dict[str, Any]:
        return {
            "image_list": [image.public(with_options=with_options) for image in self.images],
            "order_status": self.status,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

    def view(self) -> dict[str, Any]:
        """``GET /v2/orders/{id}``: the webhook data plus ``orderID`` and effective options."""
        body = {"orderID": self.order_id, "order_name": self.order_name}
        body.update(self.data(with_options=True))
        return body


class Lifecycle:
    """Moves each order through its events at ``step_s`` and delivers them in order."""

    def __init__(
        self,
        *,
        log: RequestLog,
        step_s: float,
        retry_delays_s: tuple[float, ...],
        timeout_s: float,
        output_base: str,
    ) -> None:
        self._log = log
        self.step_s = step_s
        self._retry_delays = retry_delays_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._output_base = output_base
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()

    def begin(self, order: SandboxOrder) -> None:
        task = asyncio.create_task(self._run(order), name=f"order-{order.order_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, order: SandboxOrder) -> None:
        deliveries: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver_all(order, deliveries))
        try:
            deliveries.put_nowait(self._event(order, EVENT_PRE_PROCESSING))
            for event, status in (
                (EVENT_EXPERT_ASSIGNED, "expert_assigned"),
                (EVENT_POST_PROCESSING, "post_processing"),
            ):
                await asyncio.sleep(self.step_s)
                self._advance(order, status)
                for image in order.images:
                    image.status = "processing"
                deliveries.put_nowait(self._event(order, event))
            await asyncio.sleep(self.step_s)
            failed = False
            for index, image in enumerate(order.images):
                if image.bad:
                    image.status = "error"
                    failed = True
                else:
                    image.status = "completed"
                    image.output_url = (
                        f"{self._output_base}/outputs/{order.order_id}/{order.output_token}/{index}"
                    )
            self._advance(order, "error" if failed else "completed")
            deliveries.put_nowait(self._event(order, EVENT_ERROR if failed else EVENT_COMPLETED))
            deliveries.put_nowait(None)
            await sender
        finally:
            sender.cancel()

    @staticmethod
    def _advance(order: SandboxOrder, status: str) -> None:
        order.status = status
        order.updated_at = iso_now()

    @staticmethod
    def _event(order: SandboxOrder, event: str) -> dict[str, Any]:
        order.events.append(event)
        return {"event": event, "orderID": order.order_id, "data": order.data()}

    async def _deliver_all(
        self, order: SandboxOrder, deliveries: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        while (payload := await deliveries.get()) is not None:
            if order.webhook_url:
                await self._deliver(order.webhook_url, payload)

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        """POST one event; anything but 200 is retried up to len(retry_delays) times."""
        assert self._session is not None
        body = orjson.dumps(payload)
        for attempt in range(len(self._retry_delays) + 1):
            entry = self._log.start("webhook", "POST", url)
            entry.order_id = str(payload["orderID"])
            entry.event = str(payload["event"])
            entry.bytes_in = len(body)
            try:
                async with self._session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    entry.status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                entry.error_code = type(exc).__name__
            finally:
                self._log.finish(entry)
            if entry.status == 200:
                return
            if attempt < len(self._retry_delays):
                await asyncio.sleep(self._retry_delays[attempt])
