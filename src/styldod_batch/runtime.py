"""Running coroutines on the fastest event loop the platform has (uvloop where available)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def steady_heap() -> None:
    """For a process about to run one job: what it has built so far (modules, parsers,
    settings) lives to the end, so the cyclic collector stops walking it. A full collection
    of the imported engine took ~70 ms on a 2-core machine (~100 ms in a test process), long
    enough to hold a granted request past the rate window's margin, or a sandbox's arrival
    stamp. (No collection first: at start-up there is little garbage, and one would cost
    that same pause.) Only the runner and the sandbox's fixtures call this, never the
    library. The collector also comes back on here if ``python -m styldod_batch`` kept it
    off while importing."""
    gc.freeze()
    gc.enable()
