"""The write-behind: writes that may lag (an upload's result, an order's outcome) queue here
and are committed in batches, so the ledger costs the pipeline a queue append per file.

* A batch that fails is retried row by row: a row that still fails fails alone (it is logged,
  and named when the ledger is flushed or closed); the others are recorded.
* A full disk, or a ledger busy or away past its bound, stops the writer: every later write
  and call raises at once, naming what was not recorded.
* If the writer task itself dies, the same: the run stops at its next ledger call, not at
  close.
* The queue is bounded: past ``MAX_PENDING`` writes, the ledger's ``async`` calls wait for it
  to drain, which holds the run's pipeline back (a write itself is never dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from styldod_batch.errors import LedgerFailure, LedgerFull
from styldod_batch.ledger.dialect import Dialect, RowError, Tx
from styldod_batch.ledger.faults import not_recorded
from styldod_batch.logs import event as log_event

BATCH_ROWS = 512
BATCH_SECONDS = 0.05
MAX_PENDING = 20_000


@dataclass(slots=True)
class Write:
    #: What it records, for a message: "order batch-1 created as 123 (Idempotency-Key …)".
    what: str
    run: Callable[[Tx], Awaitable[None]]


class WriteBehind:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._pending: list[Write] = []
        self._wrote = asyncio.Event()
        self._drained = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failure: LedgerFailure | None = None
        #: The writes that failed on their own (the run goes on without them).
        self.unrecorded: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[Write] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="styldod-ledger-writer")
        self._task.add_done_callback(self._died)

    def put(self, write: Write) -> None:
        self.check()
        self._pending.append(write)
        self._wrote.set()

    def check(self) -> None:
        """Raise at once when the writer can record nothing more."""
        if self._failure is not None:
            raise self._failure

    async def room(self) -> None:
        """Wait while the queue is past its bound (back-pressure on the run)."""
        while len(self._pending) > MAX_PENDING:
            self.check()
            await self.drain()
        self.check()

    async def drain(self) -> None:
        """Commit everything queued so far; raise when the writer can record nothing more."""
        async with self._lock:
            while self._pending:
                self.check()
                batch, self._pending = self._pending[:BATCH_ROWS], self._pending[BATCH_ROWS:]
                self._inflight = batch
                try:
                    await self._commit(batch)
                except LedgerFailure:
                    raise
                except Exception as exc:  # a bug, not the database: nothing more is recorded
                    death = self._death(exc)
                    self._fail(death)
                    raise death from None
                self._inflight = []
        self.check()

    def owed(self) -> LedgerFailure | None:
        """The error that names every write this ledger failed to record, if any."""
        if self._failure is not None:
            return self._failure
        if self.unrecorded:
            return LedgerFailure(
                f"the ledger at {self.dialect.location} could not record: "
                f"{not_recorded(self.unrecorded)}. A later run does these again (an image is "
                "uploaded again; an order's outcome is asked again with its own key)"
            )
        return None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return  # a writer that died was reported by _died
        task.remove_done_callback(self._died)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- inside ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wrote.wait()
            await asyncio.sleep(BATCH_SECONDS)
            self._wrote.clear()
            with contextlib.suppress(LedgerFailure):  # kept in _failure: raised to callers
                await self.drain()

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._fail(self._death(task.exception()))

    def _death(self, exc: BaseException | None) -> LedgerFailure:
        lost = [w.what for w in [*self._inflight, *self._pending]]
        self._pending = []
        return LedgerFailure(
            f"the ledger's writer stopped ({type(exc).__name__}: {exc}); the run stops"
            + (f". Not recorded: {not_recorded(lost)}" if lost else "")
        )

    def _fail(self, failure: LedgerFailure) -> None:
        # Not logged: every later call raises it, and the run stops with it (one message).
        if self._failure is None:
            self._failure = failure

    async def _commit(self, batch: list[Write]) -> None:
        async def all_of(tx: Tx) -> None:
            for write in batch:
                await write.run(tx)

        try:
            await self.dialect.run(all_of, what=f"{len(batch)} results")
            return
        except RowError:
            pass  # one of them, or more: find which, row by row
        except LedgerFailure as exc:
            self._stop_with(exc, batch)
            return
        for position, write in enumerate(batch):
            try:
                await self.dialect.run(write.run, what=write.what)
            except RowError as exc:
                self.unrecorded.append(f"{write.what} ({exc.reason})")
                log_event(
                    logging.ERROR,
                    "ledger_row_failed",
                    f"{exc}; the run goes on without it",
                    location=self.dialect.location,
                )
            except LedgerFailure as exc:
                self._stop_with(exc, batch[position:])
                return

    def _stop_with(self, exc: LedgerFailure, lost: list[Write]) -> None:
        names = [w.what for w in [*lost, *self._pending]]
        self._pending = []
        failure = type(exc)(f"{exc}. Not recorded: {not_recorded(names)}. {_advice(exc)}")
        self._fail(failure)
        raise failure


def _advice(exc: LedgerFailure) -> str:
    if isinstance(exc, LedgerFull):
        return (
            "Free some space and run again: an order whose outcome was not recorded is asked "
            "again with its own Idempotency-Key, never created twice"
        )
    return "Run again once the ledger works: nothing recorded is done twice"
