"""API answers behind a gzipping proxy (issue 18, point 11): they are decompressed, so every
call still reads its JSON and an order the service created is reported as created. Outputs
are still saved exactly as sent (their coding untouched)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from styldod_batch.engine import Uploader
from styldod_batch.errors import AuthenticationError, RunAborted
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import Settings
from tests.forward_proxy import HOP_BY_HOP
from tests.helpers import make_tree


class GzippingGateway:
    """A reverse proxy on 127.0.0.1 in front of ``upstream``: every answer it relays is
    compressed (gzip, or deflate when ``coding`` says so), as some gateways do when the
    request says ``Accept-Encoding: gzip``."""

    def __init__(self, upstream: str, coding: str = "gzip", only: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.coding = coding
        # Compress the answers to this path alone (None: every answer).
        self.only = only
        self.compressed = 0
        self.url = ""
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GzippingGateway:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.ServerRunner(web.Server(self._handle), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site.port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._session is not None
        headers = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "accept-encoding")
        )
        body = await request.read() if request.can_read_body else None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            out = CIMultiDict(
                (k, v)
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_BY_HOP
                and k.lower() not in ("content-length", "content-encoding")
            )
        wanted = self.only is None or request.path == self.only
        if wanted and self.coding in request.headers.get("Accept-Encoding", "") and data:
            self.compressed += 1
            data = gzip.compress(data) if self.coding == "gzip" else zlib.compress(data)
            out["Content-Encoding"] = self.coding
        return web.Response(status=upstream.status, headers=out, body=data)


async def test_orders_are_placed_and_followed_through_a_gzipping_gateway(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=2, files=3, size=500)
    box = await sandbox_factory(rps=1000)
    async with GzippingGateway(box.base_url) as gateway:
        settings = Settings(
            base_url=gateway.url, api_key=box.api_key, state=tmp_path / "state", rps=1000
        )
        async with Uploader(settings) as uploader:
            report = await uploader.run([tmp_path / "job"])
            assert [o.error for o in report.orders] == [None, None]
            assert [o.status for o in report.orders] == ["created", "created"]
            assert await uploader.follow(report, timeout_s=30)
    assert gateway.compressed >= 4, "upload URLs, two orders and the polls came compressed"
    assert {o.order_status for o in report.orders} == {"completed"}
    assert report.uploaded == 6 and report.failures == []


async def test_an_order_created_behind_the_gateway_is_reported_created(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Only the order POST's answer is compressed: before, the order the service created
    was reported as "outcome unknown"."""
    make_tree(tmp_path / "job", folders=1, files=2, size=500)
    box = await sandbox_factory(rps=1000)
    async with GzippingGateway(box.base_url, only="/v2/orders") as gateway:
        settings = Settings(base_url=gateway.url, api_key=box.api_key, state=tmp_path / "state")
        async with Uploader(settings) as uploader:
            report = await uploader.run([tmp_path / "job"])
    assert gateway.compressed == 1
    (order,) = report.orders
    assert order.status == "created" and order.order_id, order.error
    assert order.error is None


async def test_a_deflated_error_answer_is_read_as_the_error_it_is(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=1, files=1, size=500)
    box = await sandbox_factory(rps=1000)
    async with GzippingGateway(box.base_url, coding="deflate") as gateway:
        settings = Settings(base_url=gateway.url, api_key="not-the-key", state=tmp_path / "s")
        async with Uploader(settings) as uploader:
            with pytest.raises(RunAborted) as aborted:
                await uploader.run([tmp_path / "job"])
    assert isinstance(aborted.value.cause, AuthenticationError), repr(aborted.value.cause)
    assert "The API key is invalid or expired" in str(aborted.value.cause), "the service's words"
    assert gateway.compressed >= 1
