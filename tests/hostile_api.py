"""An Order API on 127.0.0.1 that answers by the contract unless a test queues something
else for a path: garbage, a wrong shape, a huge answer, a 429 with a strange Retry-After.
Its upload URLs point at a storage the test chooses (``tests.hostile_storage``)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import orjson
from aiohttp import web

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_answer(payload: object, status: int = 200, **headers: str) -> Answer:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=orjson.dumps(payload),
            content_type="application/json",
            headers=headers,
        )

    return answer


def raw_answer(body: bytes, status: int = 200, **headers: str) -> Answer:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return answer


class HostileOrderAPI:
    """``async with HostileOrderAPI(storage_url) as api: api.then(path, answer)``."""

    def __init__(self, storage_url: str = "http://127.0.0.1:9") -> None:
        self.storage_url = storage_url.rstrip("/")
        self.queued: dict[str, collections.deque[Answer]] = collections.defaultdict(
            collections.deque
        )
        self.received: list[tuple[str, str]] = []
        self._order_ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def then(self, path: str, *answers: Answer) -> None:
        """The next requests to ``path`` get these answers, one each, in order."""
        self.queued[path].extend(answers)

    def count(self, method: str, path: str) -> int:
        return self.received.count((method, path))

    async def __aenter__(self) -> HostileOrderAPI:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.received.append((request.method, request.path))
        queued = self.queued[request.path]
        if queued:
            return await queued.popleft()(request)
        if request.path == "/v2/upload-urls":
            files = (await request.json())["files"]
            return await json_answer({"upload_urls": [self._target(f) for f in files]})(request)
        if request.path == "/v2/orders" and request.method == "POST":
            order_id = str(next(self._order_ids))
            answer = {"orderID": order_id, "order_status": "pre_processing"}
            return await json_answer(answer)(request)
        return await json_answer({"error": {"code": "not_found", "message": "no"}}, 404)(request)

    def _target(self, file: dict[str, object]) -> dict[str, str]:
        name = quote(str(file["file_name"]))
        image_url = f"{self.storage_url}/bucket/{name}"
        return {
            "file_name": str(file["file_name"]),
            "upload_url": f"{image_url}?X-Amz-Signature=sig",
            "image_url": image_url,
            "expires_at": "2099-01-01T00:00:00Z",
        }
