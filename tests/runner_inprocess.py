"""The runner in this process: ``styldod_batch.cli.main`` with its own environment, output
captured, in a thread (it runs its own event loop). No interpreter start per run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any
from unittest import mock

import orjson

from styldod_batch import cli, runtime


class _ThreadLoop(asyncio.SelectorEventLoop):
    """Signals reach the main thread only: a runner in a test's thread leaves them alone."""

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:  # type: ignore[override]
        pass

    def remove_signal_handler(self, sig: int) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        body = orjson.loads(self.stdout)
        assert isinstance(body, dict)
        return body


# The runner patches this process's environment and logging while it runs: one at a time.
_ONE_AT_A_TIME = threading.Lock()


def _main(argv: list[str], env: dict[str, str]) -> Completed:
    if not _ONE_AT_A_TIME.acquire(blocking=False):
        raise RuntimeError("two in-process runners at once: run them as processes")
    try:
        return _main_alone(argv, env)
    finally:
        _ONE_AT_A_TIME.release()


def _main_alone(argv: list[str], env: dict[str, str]) -> Completed:
    out, err = io.StringIO(), io.StringIO()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STYLDOD_")}
    logger = logging.getLogger("styldod_batch")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    with (
        mock.patch.dict(os.environ, {**clean, **env}, clear=True),
        # The runner freezes its heap for the one job of its process; a test process has more.
        mock.patch.object(cli, "steady_heap", return_value=None),
        mock.patch.object(runtime, "loop_factory", return_value=_ThreadLoop),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            for handler in handlers:
                logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
    return Completed(code, out.getvalue(), err.getvalue())


async def run_main(*argv: str, env: dict[str, str] | None = None) -> Completed:
    """``styldod-batch ARGV`` with ``env`` (no other ``STYLDOD_*`` variable) in a thread."""
    return await asyncio.to_thread(_main, list(argv), env or {})


def run_main_sync(*argv: str, env: dict[str, str] | None = None) -> Completed:
    return _main(list(argv), env or {})
