"""A hostile (or merely broken) output server on 127.0.0.1, for the downloader's tests.

Routes:
  /ok/{name}            200, ``body_for(name)``
  /gzip/{name}          200, ``gzipped(name)`` with ``Content-Encoding: gzip``, whatever was asked
  /bomb                 200, ``BOMB`` (a few KB of gzip that inflate to ``BOMB_INFLATED`` bytes),
                        chunked
  /redirect?to=URL      302 to URL
  /trickle/{name}       200, ``body_for(name)`` in ``TRICKLE_PARTS`` parts, ``pause_s`` apart
  /stall                200 with a Content-Length, half the body, then nothing until closed
  /status/{code}        that status, no body
Every request is recorded (path, query and headers) in ``requests``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

BOMB_INFLATED = 20 * 1024 * 1024
BOMB = gzip.compress(b"\0" * BOMB_INFLATED, compresslevel=9)
TRICKLE_PARTS = 8


def body_for(name: str) -> bytes:
    """Distinct, deterministic bytes per name (about 40 KB)."""
    seed = hashlib.sha256(name.encode()).digest()
    return seed * 1280


def gzipped(name: str) -> bytes:
    return gzip.compress(body_for(name), mtime=0)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    path: str
    query: str
    headers: dict[str, str]


class HostileOutputs:
    def __init__(self, *, pause_s: float = 0.25) -> None:
        self.pause_s = pause_s
        self.requests: list[SeenRequest] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    def url(self, path_and_query: str) -> str:
        return f"http://127.0.0.1:{self.port}{path_and_query}"

    def paths_requested(self) -> list[str]:
        return [r.path for r in self.requests]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(SeenRequest(request.path, request.query_string, dict(request.headers)))
        response: web.StreamResponse = await handler(request)
        return response

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(body=body_for(request.match_info["name"]))

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzipped(request.match_info["name"]),
            headers={"Content-Encoding": "gzip", "Content-Type": "image/jpeg"},
        )

    async def _bomb(self, request: web.Request) -> web.StreamResponse:
        # Chunked: no Content-Length to betray a client that inflates it.
        response = web.StreamResponse(
            headers={"Content-Encoding": "gzip", "Content-Type": "image/jpeg"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BOMB)
        await response.write_eof()
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        body = body_for(request.match_info["name"])
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        step = -(-len(body) // TRICKLE_PARTS)
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            await asyncio.sleep(self.pause_s)  # a slow server, not a wait in the test
        await response.write_eof()
        return response

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        body = body_for("stall")
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await self._closing.wait()
        return response

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def __aenter__(self) -> HostileOutputs:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/ok/{name:.+}", self._ok)
        app.router.add_get("/gzip/{name:.+}", self._gzip)
        app.router.add_get("/bomb", self._bomb)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/trickle/{name:.+}", self._trickle)
        app.router.add_get("/stall", self._stall)
        app.router.add_get("/status/{code}", self._status)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site.port
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
