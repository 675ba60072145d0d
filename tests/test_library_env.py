"""The library as the runner: ``Settings.from_env`` reads the environment as the runner does,
and leaving ``async with Uploader(...)`` after an error leaves no session open."""

from __future__ import annotations

import asyncio
import gc
import os
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from styldod_batch import Settings, Uploader, storage
from styldod_batch.cli import build_parser
from styldod_batch.cli.common import settings_from_args
from styldod_batch.errors import ConfigurationError
from styldod_batch.models import RequestCounters
from styldod_batch.sandbox import Faults
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree

ENV = {
    "STYLDOD_BASE_URL": "https://orders.example.com",
    "STYLDOD_API_KEY": "key-1",
    "STYLDOD_RPS": "7.5",
    "STYLDOD_CONCURRENCY": "3",
    "STYLDOD_ORDER_BY": "none",
    "STYLDOD_FOLLOW_UPS": "no",
    "STYLDOD_STATE": "/tmp/somewhere",
    "STYLDOD_BUDGET_URL": "process",
    "STYLDOD_POLL_INTERVAL_S": "4",
}


def test_from_env_reads_the_environment_as_the_runner_does() -> None:
    with mock.patch.dict(os.environ, ENV, clear=True):
        library = Settings.from_env()
        runner = settings_from_args(build_parser().parse_args(["upload", "photos"]))
        overridden = Settings.from_env(rps=2.0, options={"basic_editing": True})

    assert library == runner
    assert (library.rps, library.concurrency, library.order_by) == (7.5, 3, "none")
    assert library.follow_ups is False and library.budget == "process"
    assert library.api_key == "key-1" and library.poll_interval_s == 4.0
    assert overridden.rps == 2.0 and overridden.concurrency == 3
    assert dict(overridden.options) == {"basic_editing": True}
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"STYLDOD_RPS": ""}).rps == Settings().rps  # empty: unset


def test_from_env_names_a_variable_that_does_not_parse() -> None:
    with pytest.raises(ConfigurationError, match=r"\$STYLDOD_CONCURRENCY"):
        Settings.from_env({"STYLDOD_CONCURRENCY": "many"})


class _Unclosed:
    """Collects what a session left open says: its ResourceWarning, and the loop's report."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(str(context.get("message")))

    def collect(self, caught: list[warnings.WarningMessage]) -> list[str]:
        gc.collect()
        return [m for m in self.seen + [str(w.message) for w in caught] if "nclosed" in m]


async def test_an_error_inside_async_with_leaves_no_session_open(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=3, files=30, size=3000)
    box = await sandbox_factory(rps=1000, faults=Faults(latency_ms=30))
    settings = Settings(base_url=box.base_url, api_key=box.api_key, state=str(tmp_path / "s"))
    loop = asyncio.get_running_loop()
    unclosed = _Unclosed()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(unclosed.handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started: list[asyncio.Task[Any]] = []

            async def caller() -> None:
                async with Uploader(settings) as up:
                    started.append(asyncio.create_task(up.run([tmp_path / "photos"])))
                    for _ in range(600):  # until some PUTs went out
                        if box.log.select(kind="storage"):
                            break
                        await asyncio.sleep(0.05)
                    raise ValueError("in the caller's code")

            raised = ""
            try:  # (not pytest.raises: its traceback would keep the Uploader alive)
                await caller()
            except ValueError as exc:
                raised = str(exc)
            assert raised == "in the caller's code"
            await asyncio.wait(started, timeout=60)  # the orphaned run ends, in error
            for run in started:
                if run.done() and not run.cancelled():
                    run.exception()
            started.clear()
            found = unclosed.collect(caught)
    finally:
        loop.set_exception_handler(previous)

    assert found == []


async def test_a_failure_while_entering_closes_what_was_opened(tmp_path: Path) -> None:
    settings = Settings(
        base_url="http://127.0.0.1:9", api_key="k", state=str(tmp_path / "s"), budget="process"
    )
    loop = asyncio.get_running_loop()
    unclosed = _Unclosed()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(unclosed.handler)
    uploader = Uploader(settings)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            async def enter() -> None:
                async with uploader:
                    pass

            failing = mock.patch.object(storage, "FileUploader", side_effect=OSError("no TLS"))
            with failing, pytest.raises(OSError, match="no TLS"):
                await enter()
            found = unclosed.collect(caught)
    finally:
        loop.set_exception_handler(previous)

    assert found == []
    assert uploader.ledger is None, "the ledger was closed too"
    async with Uploader(settings) as again:  # and the ledger is free to open again
        assert again.ledger is not None


async def test_a_closed_file_uploader_never_opens_a_new_session() -> None:
    """A run still going after its Uploader closed must not open a session nobody closes."""
    uploader = storage.FileUploader(Settings(), None, RequestCounters())
    opened = uploader.session
    await uploader.close()

    assert opened.closed
    with pytest.raises(RuntimeError, match="closed"):
        _ = uploader.session
