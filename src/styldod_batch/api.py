"""The Order API client: upload URLs, orders; auth, version header, idempotency, error mapping."""

from __future__ import annotations

import base64
import uuid
from typing import Any, Literal

import aiohttp
import orjson

from styldod_batch.budget import Budget
from styldod_batch.errors import NetworkError, ProtocolError, api_error, parse_retry_after
from styldod_batch.models import ImageItem, RequestCounters, UploadTarget
from styldod_batch.retry import retrying
from styldod_batch.settings import Settings

# The largest answer read whole: an upload-URL answer for 50 files is about 50 KB, an order
# of 100 images a few tens; past this the answer is not the contract's (a 400 MB one was
# seen to cost 870 MB of memory).
MAX_ANSWER_BYTES = 8 << 20
# Of an error answer only the start is read: its JSON error, or text for the message.
MAX_ERROR_ANSWER_BYTES = 64 << 10

# Defined where modules that never touch the API (the upload path) can import them cheaply.
__all__ = [
    "MAX_ANSWER_BYTES",
    "CountingMiddleware",
    "OrderAPIClient",
    "RequestCounters",
    "api_error",
    "parse_retry_after",
]


class OrderAPIClient:
    """Speaks the contract in ``settings.contract``; every call passes ``budget`` and is retried."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        budget: Budget,
        counters: RequestCounters,
    ) -> None:
        if not settings.api_key:
            from styldod_batch.errors import ConfigurationError

            raise ConfigurationError("no API key: pass --api-key or set STYLDOD_API_KEY")
        self.session = session
        self.settings = settings
        self.contract = settings.contract
        self.budget = budget
        self.counters = counters
        self._middlewares = (budget.middleware(), CountingMiddleware(counters))
        self._polling_middlewares = (
            budget.middleware(low_priority=True),
            CountingMiddleware(counters),
        )
        self._base = settings.base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=settings.api_timeout_s)
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if settings.api_secret is not None:
            pair = f"{settings.api_key}:{settings.api_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            headers[self.contract.api_key_header] = settings.api_key
        if settings.api_version:
            headers[self.contract.version_header] = settings.api_version
        self._headers = headers

    async def _once(
        self,
        method: str,
        path: str,
        body: bytes | None,
        idempotency_key: str | None,
        low_priority: bool = False,
    ) -> tuple[Any, bool]:
        headers = self._headers
        if idempotency_key is not None:
            headers = {**headers, self.contract.idempotency_header: idempotency_key}
        context = f"{method} {path}"
        try:
            async with self.session.request(
                method,
                self._base + path,
                data=body,
                headers=headers,
                timeout=self._timeout,
                middlewares=self._polling_middlewares if low_priority else self._middlewares,
                allow_redirects=False,
                # The run's session keeps outputs as sent (no decompression); an API answer
                # is JSON to read, whatever coding a gateway gave it (the limits below count
                # decompressed bytes, so a compression bomb stops at them).
                auto_decompress=True,
            ) as resp:
                if resp.status >= 400:
                    raw, _ = await read_at_most(resp, MAX_ERROR_ANSWER_BYTES)
                    raise api_error(resp.status, raw, resp.headers, context=context)
                if resp.status >= 300:
                    raise ProtocolError(f"{context}: unexpected HTTP {resp.status}")
                raw, whole = await read_at_most(resp, MAX_ANSWER_BYTES)
                if not whole:
                    raise ProtocolError(
                        f"{context}: the answer is larger than {MAX_ANSWER_BYTES >> 20} MiB"
                    )
                replayed = resp.headers.get(self.contract.replayed_header, "").lower() == "true"
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise NetworkError(f"{context}: {type(exc).__name__}: {exc}") from exc
        try:
            return (orjson.loads(raw) if raw else None), replayed
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"{context}: the answer is not JSON") from exc

    async def call(
        self,
        method: str,
        path: str,
        payload: Any | None = None,
        *,
        idempotency_key: str | None = None,
        low_priority: bool = False,
    ) -> tuple[Any, bool]:
        """One API call with retries; a POST keeps one ``Idempotency-Key`` across them.

        ``payload`` is JSON-encoded, unless it is ``bytes`` already (then sent as it is).
        """
        body = payload if payload is None or isinstance(payload, bytes) else orjson.dumps(payload)
        if method == "POST" and idempotency_key is None:
            idempotency_key = str(uuid.uuid4())

        def count_retry(_exc: BaseException) -> None:
            self.counters.retries += 1

        return await retrying(
            lambda: self._once(method, path, body, idempotency_key, low_priority),
            self.settings.retry,
            budget=self.budget,
            on_retry=count_retry,
        )

    async def upload_urls(self, items: list[ImageItem]) -> list[UploadTarget]:
        files = [
            {
                # A label for the stored object: its listing, then its name there.
                "file_name": f"{item.group}/{item.relative}",
                "content_type": item.content_type,
                "content_length": item.size,
            }
            for item in items
        ]
        answer, _ = await self.call("POST", self.contract.upload_urls_path, {"files": files})
        context = f"POST {self.contract.upload_urls_path}"
        urls = answer.get("upload_urls") if isinstance(answer, dict) else None
        if not isinstance(urls, list):
            raise ProtocolError(f"{context}: the answer has no upload_urls list")
        targets = []
        for url in urls:
            if not isinstance(url, dict) or not all(
                isinstance(url.get(name), str) and url[name] for name in ("upload_url", "image_url")
            ):
                raise ProtocolError(f"{context}: an entry without upload_url and image_url")
            expires_at = url.get("expires_at")
            targets.append(
                UploadTarget(
                    url["upload_url"],
                    url["image_url"],
                    expires_at if isinstance(expires_at, str) else "",
                )
            )
        if len(targets) != len(items):
            raise ProtocolError(
                f"{context}: asked for {len(items)} upload URLs, got {len(targets)}"
            )
        return targets

    async def create_order(
        self, payload: dict[str, Any] | bytes, idempotency_key: str
    ) -> tuple[dict[str, Any], bool]:
        answer, replayed = await self.call(
            "POST", self.contract.orders_path, payload, idempotency_key=idempotency_key
        )
        order_id = answer.get("orderID") if isinstance(answer, dict) else None
        if isinstance(order_id, bool) or not isinstance(order_id, str | int) or order_id == "":
            raise ProtocolError(f"POST {self.contract.orders_path}: the answer carries no orderID")
        assert isinstance(answer, dict)
        return answer, replayed

    async def get_order(self, order_id: str, *, low_priority: bool = False) -> dict[str, Any]:
        """``low_priority`` (polling) yields the budget to every other waiting request."""
        answer, _ = await self.call(
            "GET", self.contract.order_url_path(order_id), low_priority=low_priority
        )
        if not isinstance(answer, dict):
            raise ProtocolError(f"GET order {order_id}: the answer is not a JSON object")
        return answer


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the answer's body, and whether that was all of it (a larger
    answer is read no further: its connection is then closed, not reused)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        return b"", False
    data = bytearray()
    async for chunk in response.content.iter_any():
        data += chunk
        if len(data) > limit:
            return bytes(data[:limit]), False
    return bytes(data), True


class CountingMiddleware:
    """Counts attempts on the wire (it runs after the budget's grant), and the 429s among
    them, as ``kind`` (API calls or storage PUTs)."""

    __slots__ = ("counters", "storage")

    def __init__(self, counters: RequestCounters, kind: Literal["api", "storage"] = "api") -> None:
        self.counters = counters
        self.storage = kind == "storage"

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if self.storage:
            self.counters.storage += 1
        else:
            self.counters.api += 1
        response = await handler(request)
        if response.status == 429:
            self.counters.rate_limited += 1
        return response
