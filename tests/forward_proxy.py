"""A small HTTP forward proxy on 127.0.0.1 for the tests: it forwards each absolute-form
request to where it names (loopback only) and remembers what it saw."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(slots=True)
class ForwardProxy:
    """``async with ForwardProxy() as proxy:`` serves ``proxy.url``; ``proxy.seen`` lists
    (method, absolute URL) of every request it forwarded."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _runner: web.ServerRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ForwardProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        server = web.Server(self._handle)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.url
        if target.host not in ("127.0.0.1", "localhost"):
            return web.Response(status=403, text="this proxy goes to loopback only")
        self.seen.append((request.method, str(target)))
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        assert self._session is not None
        body = await request.read() if request.can_read_body else None
        async with self._session.request(
            request.method,
            target,
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        ) as upstream:
            data = await upstream.read()
            out = CIMultiDict(
                (k, v)
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
            )
            return web.Response(status=upstream.status, headers=out, body=data)
