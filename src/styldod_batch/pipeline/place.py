"""Orders: batch numbers, the write-ahead of each order's key and body, the send (retried
with the same key), the re-send of an order whose outcome is unknown, and what a refusal
means. At most ORDER_WORKERS sends at once; at ORDER_BACKLOG orders waiting, settling
uploads wait for one to end."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson

from styldod_batch.budget import Budget
from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    Conflict,
    PermissionDenied,
    RateLimited,
    StyldodError,
    UnprocessableEntity,
)
from styldod_batch.ledger import ClaimLost, OrderDraft, OrderItem, OrderOutcome, OrderRecord, Owner
from styldod_batch.logs import event as log_event
from styldod_batch.models import OrderResult, RequestCounters
from styldod_batch.orders import OrderNamer, OrderPart, item_key, order_payload
from styldod_batch.pipeline.claims import Claims, ListingRun, absolute
from styldod_batch.pipeline.ports import SYSTEM_CLOCK, BatchLedger, Clock, OrderLedger, OrderSink
from styldod_batch.retry import retrying
from styldod_batch.settings import RetryPolicy, Settings

ORDER_WORKERS = 4
# Orders placed and not yet done: at this many, settling uploads wait for one to end, so that
# placing orders pushes back on uploads (many small orders keep memory flat, not a task each).
ORDER_BACKLOG = 32
_IMAGE_PARAM = re.compile(r"image_list\[(\d+)\]")


class BatchSlot(Protocol):
    """Where a listing's batch number is kept once chosen (``ListingRun``)."""

    batch: int | None

    @property
    def known_id(self) -> int | None: ...


def order_namer(settings: Settings) -> OrderNamer:
    """How this run names its orders: ``--order-name``, the day it started, the job."""
    today = datetime.date.today().isoformat()
    return OrderNamer(settings.order_name, today, settings.job_name or "styldod-batch")


class BatchNumbers:
    """The batch numbers of a run's orders, the same for a run and its dry run: every part
    of a listing takes the listing's next batch in the ledger (kept in its ``slot``), and
    each fixed-size batch takes the account's next number, in the order the batches formed
    (a small last batch is often placed first: it still gets the last number). A dry run's
    ledger only peeks (``peek``): it answers the same number until one is written, so the
    numbers after its first are counted here. The lock keeps two parts numbered at once from
    reading the ledger on either side of the other's write."""

    def __init__(self, ledger: BatchLedger, *, peek: bool = False) -> None:
        self._ledger = ledger
        self._peek = peek
        self._lock = asyncio.Lock()
        self._last_fixed = 0
        self._fixed: dict[int, int] = {}  # a fixed-size part's number in the run -> batch

    async def of(self, part: OrderPart, slot: BatchSlot | None) -> int:
        async with self._lock:
            if not part.listing:  # fixed-size batches are numbered across the account
                # Parts formed before this one and not yet placed take their numbers first.
                # Each number is claimed in the ledger: another run may number batches too.
                while part.number not in self._fixed:
                    number = await self._ledger.next_batch(None)
                    if self._peek:
                        number = max(number, self._last_fixed + 1)
                    self._last_fixed = number
                    self._fixed[len(self._fixed) + 1] = number
                return self._fixed[part.number]
            assert slot is not None
            if slot.batch is None:
                known = slot.known_id
                slot.batch = 1 if known is None else await self._ledger.next_batch(known)
            return slot.batch


class Placer:
    def __init__(
        self,
        ledger: OrderLedger,
        owner: Owner,
        claims: Claims,
        sink: OrderSink,
        *,
        order_events: Callable[[OrderResult], Awaitable[None]],
        budget: Budget | None,
        counters: RequestCounters,
        retry: RetryPolicy,
        options: Mapping[str, Any],
        webhook_url: str | None,
        stopping: asyncio.Event,
        spawn: Callable[..., object],
        on_backlog: Callable[[int], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        namer: OrderNamer | None = None,
    ) -> None:
        self.ledger = ledger
        self.owner = owner
        self.claims = claims
        self.sink = sink
        self._tell = order_events
        self.budget = budget
        self.counters = counters
        self.retry = retry
        self.options = options
        self.webhook_url = webhook_url
        self.stopping = stopping
        self._spawn = spawn
        self._on_backlog = on_backlog
        self.clock = clock
        self.namer = namer or OrderNamer()
        self.batches = BatchNumbers(ledger)
        self.slots = asyncio.Semaphore(ORDER_WORKERS)
        # Order tasks not yet done; ``_room`` is set while there are fewer than ORDER_BACKLOG.
        self.pending = 0
        self._room = asyncio.Event()
        self._room.set()

    async def room(self) -> None:
        await self._room.wait()

    def place(self, part: OrderPart) -> None:
        # Several of a part's last uploads can find it settled: each waited on a slow reader
        # of ``stream()`` after recording its result. Only the first places it.
        if part.placed or self.stopping.is_set():
            return  # (when stopping, a re-run places it: its uploads are in the ledger)
        part.placed = True
        self.pending += 1
        if self._on_backlog is not None:
            self._on_backlog(self.pending)
        if self.pending >= ORDER_BACKLOG:
            self._room.clear()
        self._spawn(self._create_order(part), name=f"order {part.base_name}")

    async def _create_order(self, part: OrderPart) -> None:
        try:
            await self._place_order(part)
        finally:
            self.pending -= 1
            if self.pending < ORDER_BACKLOG:
                self._room.set()
            await self.claims.part_done(part)

    async def _place_order(self, part: OrderPart) -> None:
        states: dict[str, ListingRun] = {}
        for identity in part.listings:
            held = self.claims.get(identity)
            if held is None:
                raise KeyError(identity)
            states[identity] = held
        state = states.get(part.listing)
        batch = await self.batches.of(part, state)
        name = self.namer.name(part, state.view.label if state else "", batch)
        await self._leave_out_live(part, states)
        payload = order_payload(part, name, options=self.options, webhook_url=self.webhook_url)
        images = payload["image_list"]
        result = OrderResult(
            name,
            "failed",
            len(images),
            listing=part.base_name,
            label=state.view.label if state else name,
            follow_up=batch > 1 and bool(part.listing),
        )
        if not images:
            result.error = "no image of this order was uploaded"
            await self._tell(result)
            return
        items = [
            OrderItem(
                states[item.listing].listing_id,
                item.client_image_id,
                str(part.results[item_key(item)].md5),
                absolute(item.path),
            )
            for item in sorted(part.items, key=lambda i: i.sequence)
            if part.results[item_key(item)].status == "uploaded"
        ]
        body, key = orjson.dumps(payload), str(uuid.uuid4())
        draft = OrderDraft(
            state.listing_id if state else None, batch, part.number, name, body, key, items
        )
        async with self.slots:
            try:
                ref = await self.ledger.write_order_ahead(self.owner, draft)
            except ClaimLost as exc:
                result.error = str(exc)
                await self._tell(result)
                return
            await self.send(result, ref, body, key, items)

    async def _leave_out_live(self, part: OrderPart, states: dict[str, ListingRun]) -> None:
        """An image whose very content is in a live order already (it went A -> B -> A) is
        left out of this order, and said so; the rest of the order goes on."""
        uploaded = [
            (item, result, OrderItem(states[item.listing].listing_id, item.client_image_id,
                                     str(result.md5), absolute(item.path)))
            for item in part.items
            if (result := part.results.get(item_key(item))) is not None
            and result.status == "uploaded" and result.md5 and item.listing in states
        ]  # fmt: skip
        taken = await self.ledger.in_live_orders([entry[2] for entry in uploaded])
        for item, result, entry in uploaded:
            if entry in taken:
                result.status, result.resumed = "ordered", True
                result.error = "this content is already in a live order: left out of this one"
                log_event(
                    logging.WARNING,
                    "left_out",
                    f"{item.path}: {result.error}",
                    path=item.path,
                    client_image_id=item.client_image_id,
                )

    def resend_later(self, state: ListingRun, order: OrderRecord) -> None:
        """``Claims`` hands over each order of a newly held listing whose outcome is unknown."""
        self._spawn(self.resend(state, order))

    async def resend(self, state: ListingRun, order: OrderRecord) -> None:
        """An order sent before whose outcome is unknown: the same key, the same body."""
        result = OrderResult(
            order.name,
            "failed",
            order.images,
            listing=state.view.listing.name,
            label=order.label,
            follow_up=order.batch > 1,
        )
        state.reported.add(order.ref)
        try:
            async with self.slots:
                await self.send(
                    result, order.ref, order.body, order.idempotency_key, [], resent=True
                )
        finally:
            await self.claims.resend_done(state)

    async def send(
        self,
        result: OrderResult,
        ref: int,
        body: bytes,
        key: str,
        items: list[OrderItem],
        *,
        resent: bool = False,
    ) -> None:
        result.idempotency_key = key
        # Once an attempt with this key may have reached the service (an earlier run's, or
        # an earlier try of this one), a 4xx is no definite refusal: the images stay bound
        # to this key and body until ``release``.
        tries = 1 if resent else 0

        async def attempt() -> tuple[dict[str, Any], bool]:
            nonlocal tries
            tries += 1
            return await self.sink.create_order(body, key)

        def retried(_exc: BaseException) -> None:
            self.counters.retries += 1

        try:
            answer, replayed = await retrying(
                attempt, self.retry, budget=self.budget, on_retry=retried, clock=self.clock
            )
        except (AuthenticationError, PermissionDenied) as exc:
            if tries > 1:
                self.ledger.settle_order(ref, OrderOutcome("sent", error=unknown(exc, tries)))
            else:
                self.ledger.settle_order(ref, OrderOutcome("refused", error=str(exc)))
            raise
        except Conflict as exc:
            self.ledger.settle_order(ref, OrderOutcome("conflict", error=str(exc)))
            result.error = f"{exc}: kept as it is, never created again under a new key"
            await self._tell(result)
            return
        except StyldodError as exc:
            if isinstance(exc, APIError) and definite_refusal(exc) and tries <= 1:
                bad = bad_image(exc, items)
                self.ledger.settle_order(
                    ref, OrderOutcome("refused", error=str(exc), bad_image=bad)
                )
                result.error = f"refused: {exc}"
            else:
                # Unknown outcome: the ledger keeps it as sent, so a re-run asks again with
                # the same key and body.
                self.ledger.settle_order(ref, OrderOutcome("sent", error=unknown(exc, tries)))
                result.error = f"{unknown(exc, tries)}; a re-run asks again with the same key"
            await self._tell(result)
            return
        order_id, status = str(answer["orderID"]), answer.get("order_status")
        self.ledger.settle_order(ref, OrderOutcome("created", order_id=order_id, status=status))
        result.status, result.order_id, result.order_status = "created", order_id, status
        result.replayed = replayed
        await self._tell(result)


def unknown(exc: BaseException, tries: int) -> str:
    if isinstance(exc, APIError) and definite_refusal(exc) and tries > 1:
        return f"outcome unknown: a retry was refused ({exc})"
    return f"outcome unknown: {exc}"


def definite_refusal(exc: APIError) -> bool:
    """A 4xx other than 409 and 429: the service did not create the order, and says so."""
    return 400 <= exc.status < 500 and not isinstance(exc, Conflict | RateLimited)


def bad_image(exc: APIError, items: list[OrderItem]) -> tuple[int, str] | None:
    """The image a 422 names (``image_list[3].image_urls[0]``): its upload is not usable."""
    if not isinstance(exc, UnprocessableEntity) or not exc.param:
        return None
    match = _IMAGE_PARAM.match(exc.param)
    if match is None or int(match.group(1)) >= len(items):
        return None
    item = items[int(match.group(1))]
    return item.listing_id, item.client_image_id
