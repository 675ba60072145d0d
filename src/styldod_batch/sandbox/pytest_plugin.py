"""Pytest fixtures built on ``Sandbox``: ``seaweed`` (one SeaweedFS per test session),
``sandbox`` (a fresh Order API and bucket per test) and ``sandbox_factory`` (custom settings).

Enable with ``pytest_plugins = ["styldod_batch.sandbox.pytest_plugin"]`` in a conftest.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from styldod_batch.runtime import steady_heap
from styldod_batch.sandbox.config import SandboxConfig
from styldod_batch.sandbox.seaweed import SeaweedS3
from styldod_batch.sandbox.server import Sandbox

# Fast order lifecycle and webhook retries, so tests wait on events, not on clocks.
FAST = {"order_step_s": 0.05, "webhook_retry_delays_s": (0.05, 0.1, 0.2)}

SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def seaweed() -> AsyncIterator[SeaweedS3]:
    async with SeaweedS3() as storage:
        yield storage


@pytest_asyncio.fixture(loop_scope="session")
async def sandbox_factory(seaweed: SeaweedS3) -> AsyncIterator[SandboxFactory]:
    # While sandboxes serve, the test process's heap stays out of full collections (see
    # runtime.steady_heap): a pause there would stamp a request's arrival late.
    steady_heap()
    stack = contextlib.AsyncExitStack()
    try:
        async with stack:

            async def make(**overrides: Any) -> Sandbox:
                config = SandboxConfig(**{**FAST, **overrides})
                return await stack.enter_async_context(Sandbox(config, storage=seaweed))

            yield make
    finally:
        gc.unfreeze()


@pytest_asyncio.fixture(loop_scope="session")
async def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    return await sandbox_factory()
