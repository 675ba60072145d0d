"""``Sandbox``: SeaweedFS, the storage gateway and the Order API, started together."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from types import TracebackType

from aiohttp import web

from styldod_batch.sandbox.api import OrderAPI
from styldod_batch.sandbox.config import Faults, SandboxConfig
from styldod_batch.sandbox.gateway import StorageGateway, URLRevocations
from styldod_batch.sandbox.lifecycle import Lifecycle
from styldod_batch.sandbox.presign import Presigner
from styldod_batch.sandbox.requestlog import RequestLog
from styldod_batch.sandbox.seaweed import SeaweedS3, free_port

SHARED_BUCKET = "sandbox-shared"


class Sandbox:
    """``async with Sandbox() as sb:`` serves the Order API at ``sb.base_url``.

    Pass ``storage`` to share one running SeaweedFS between sandboxes (each gets its own
    bucket); otherwise the sandbox starts and stops its own.
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, storage: SeaweedS3 | None = None
    ) -> None:
        self.config = config or SandboxConfig()
        self.config.faults.validate()
        self._storage = storage
        self._owns_storage = storage is None
        self.log = RequestLog(self.config.log_path)
        self.revocations = URLRevocations()
        self._runners: list[web.AppRunner] = []
        self.base_url = ""
        self.storage_url = ""
        self.api: OrderAPI | None = None
        self.started_in_s = 0.0

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def faults(self) -> Faults:
        return self.config.faults

    @property
    def storage(self) -> SeaweedS3:
        assert self._storage is not None
        return self._storage

    def expire_upload_urls(self) -> None:
        """Every upload URL issued so far is refused from now on as expired."""
        self.revocations.expire_all_now()

    async def __aenter__(self) -> Sandbox:
        began = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        self.started_in_s = time.monotonic() - began
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start(self) -> None:
        config = self.config
        if self._storage is None:
            self._storage = SeaweedS3(config.host)
            await self._storage.start()
        api_port = config.port or free_port(config.host)
        storage_port = config.storage_port or free_port(config.host)
        self.base_url = f"http://{config.host}:{api_port}"
        self.storage_url = f"http://{config.host}:{storage_port}"
        presigner = Presigner(
            self.storage.credentials,
            public_endpoint=self.storage_url,
            direct_endpoint=self.storage.endpoint,
            # SeaweedFS grows seven volumes per bucket: sandboxes sharing one server share one
            # bucket (their object keys never collide), or a long test session runs out.
            bucket=SHARED_BUCKET if not self._owns_storage else f"sandbox-{secrets.token_hex(6)}",
        )
        await presigner.create_bucket()
        lifecycle = Lifecycle(
            log=self.log,
            step_s=config.order_step_s,
            retry_delays_s=config.webhook_retry_delays_s,
            timeout_s=config.webhook_timeout_s,
            output_base=self.base_url,
        )
        await lifecycle.start()
        self._lifecycle = lifecycle
        stored: dict[str, int] = {}  # what S3 stored through the gateway, for the API
        self.api = OrderAPI(
            config,
            presigner=presigner,
            log=self.log,
            lifecycle=lifecycle,
            revocations=self.revocations,
            stored=stored,
        )
        gateway = StorageGateway(
            upstream=self.storage.endpoint,
            faults=config.faults,
            log=self.log,
            revocations=self.revocations,
            keys=self.api,
            limit_per_key=config.limit_storage_per_key,
            stored=stored,
        )
        runner = await self._serve(gateway.app(), storage_port)
        # A second address of the gateway, where redirected PUTs go (as S3's regional
        # endpoints): the same app, so it serves and logs them alike.
        alias = web.TCPSite(runner, self.config.host, 0, backlog=1024, reuse_address=True)
        await alias.start()
        gateway.host = f"{self.config.host}:{storage_port}"
        gateway.alias_host = f"{self.config.host}:{_port_of(alias)}"
        await self._serve(self.api.app(), api_port)

    async def _serve(self, app: web.Application, port: int) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.host, port, backlog=1024, reuse_address=True)
        await site.start()
        return runner

    async def close(self) -> None:
        lifecycle = getattr(self, "_lifecycle", None)
        if lifecycle is not None:
            await lifecycle.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._owns_storage and self._storage is not None:
            self._storage.stop()
            self._storage = None
        self.log.close()


async def serve_until_signalled(config: SandboxConfig) -> None:
    """The ``styldod-batch sandbox`` command: serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Sandbox(config) as sandbox:
        # Scripts wait for this first line: it is printed only once everything serves.
        print(f"Order API: {sandbox.base_url}", flush=True)
        # A sandbox key is a throw-away secret: printed so that a user can try the runner.
        print(f"API key: {config.api_key}", flush=True)
        print(
            f"Storage: {sandbox.storage_url} (SeaweedFS S3 at {sandbox.storage.endpoint})",
            flush=True,
        )
        print(
            f"Rate limit: {config.rps} requests/s per key; ready in "
            f"{sandbox.started_in_s:.1f} s; Ctrl-C stops",
            flush=True,
        )
        await stop.wait()
        print("Stopping the sandbox", file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)


def _port_of(site: web.TCPSite) -> int:
    server = site._server
    assert server is not None
    return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
