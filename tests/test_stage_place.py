"""The order stage on an in-memory ledger and order API and a virtual clock: batch numbers,
the write-ahead, one key per order however often it is sent, what each refusal means, the
re-send of an unknown order, images already in a live order left out, and the backlog that
pushes back on uploads."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import orjson
import pytest

from styldod_batch.errors import (
    BadRequest,
    Conflict,
    ServerError,
    UnprocessableEntity,
)
from styldod_batch.ledger import (
    ClaimLost,
    Held,
    ImageRecord,
    Listing,
    ListingView,
    OrderDraft,
    OrderItem,
    OrderOutcome,
    OrderRecord,
    Owner,
)
from styldod_batch.models import ImageItem, ImageResult, OrderResult, RequestCounters
from styldod_batch.orders import Grouper, OrderPart
from styldod_batch.pipeline.claims import Claims, ListingRun
from styldod_batch.pipeline.place import ORDER_BACKLOG, Placer, bad_image, definite_refusal
from styldod_batch.settings import RetryPolicy
from tests.virtual_clock import VirtualClock


class Ledger:
    def __init__(self, next_batch: int = 1) -> None:
        self.batch = next_batch
        self.drafts: list[OrderDraft] = []
        self.outcomes: dict[int, OrderOutcome] = {}
        self.live: list[OrderItem] = []
        self.lost = False
        self.released: list[int | None] = []

    async def claim(self, listing: Listing, owner: Owner, lease_s: float) -> ListingView | Held:
        return ListingView(listing, listing_id=7)

    async def renew(self, owner: Owner, lease_s: float) -> None:
        return None

    async def release(self, owner: Owner, listing_id: int | None = None) -> None:
        self.released.append(listing_id)

    def record_image(
        self, listing_id: int, image: ImageRecord, *, attempts: int = 0, error: str | None = None
    ) -> None:
        return None

    def record_failure(self, path: str, error: str) -> None:
        return None

    async def next_batch(self, listing_id: int | None) -> int:
        return self.batch

    async def in_live_orders(self, items: list[OrderItem]) -> list[OrderItem]:
        return [i for i in items if i in self.live]

    async def write_order_ahead(self, owner: Owner, draft: OrderDraft) -> int:
        if self.lost:
            raise ClaimLost("another process took house over")
        self.drafts.append(draft)
        return len(self.drafts)

    def settle_order(self, ref: int, outcome: OrderOutcome) -> None:
        self.outcomes[ref] = outcome


class API:
    """``POST /v2/orders``: answers ``script`` first (exceptions), then creates the order."""

    def __init__(self, *script: Exception) -> None:
        self.script = list(script)
        self.sent: list[tuple[bytes, str]] = []
        self.gate: asyncio.Event | None = None

    async def create_order(
        self, payload: dict[str, Any] | bytes, idempotency_key: str
    ) -> tuple[dict[str, Any], bool]:
        assert isinstance(payload, bytes)
        self.sent.append((payload, idempotency_key))
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            raise self.script.pop(0)
        return {"orderID": f"o-{len(self.sent)}", "order_status": "received"}, False


class Stage:
    def __init__(self, api: API, ledger: Ledger | None = None) -> None:
        self.ledger = ledger or Ledger()
        self.api = api
        self.clock = VirtualClock()
        self.told: list[OrderResult] = []
        self.tasks: list[asyncio.Task[None]] = []
        owner = Owner.for_this_run()
        self.claims = Claims(self.ledger, owner, lease_s=30.0, stopping=asyncio.Event())
        self.claims.wire(self.spawn, lambda s, o: None)
        self.placer = Placer(
            self.ledger,
            owner,
            self.claims,
            api,
            order_events=self.tell,
            budget=None,
            counters=RequestCounters(),
            retry=RetryPolicy(max_attempts=3),
            options={"basic_editing": True},
            webhook_url=None,
            stopping=asyncio.Event(),
            spawn=self.spawn,
            clock=self.clock,
        )

    def spawn(self, work: Coroutine[Any, Any, None], name: str | None = None) -> object:
        task = asyncio.ensure_future(work)
        self.tasks.append(task)
        return task

    async def tell(self, result: OrderResult) -> None:
        self.told.append(result)

    async def held(self, listing: str = "order:house") -> ListingRun:
        state = await self.claims.enter(item(0, listing), can_relist=True)
        assert state is not None
        return state

    async def settled_part(self, n: int = 2, listing: str = "order:house") -> OrderPart:
        await self.held(listing)
        grouper = Grouper(order_size=100, by_folder=True)
        for k in range(n):
            part, _ = grouper.add(item(k, listing))
        self.claims.part_opened(listing)
        [part] = grouper.end_all()
        for one in part.items:
            part.results[(one.listing, one.client_image_id)] = ImageResult(
                one.path, "uploaded", one.client_image_id, one.group, image_url=f"u{one.path}",
                md5=f"m{one.client_image_id}",
            )  # fmt: skip
        self.claims.mark_ended(listing)
        return part

    async def done(self) -> None:
        while self.tasks:
            await self.tasks.pop(0)


def item(n: int, listing: str = "order:house") -> ImageItem:
    group = listing.partition(":")[2]
    return ImageItem(f"/in/{n}.jpg", f"{n}.jpg", 10, 1, "image/jpeg", group, listing=listing)


async def test_an_order_is_written_ahead_then_created_and_its_listing_let_go() -> None:
    stage = Stage(API(), Ledger(next_batch=2))
    part = await stage.settled_part()
    stage.placer.place(part)
    stage.placer.place(part)  # its other last upload finds it settled too: placed once
    await stage.done()
    [draft] = stage.ledger.drafts
    assert (draft.name, draft.batch, draft.listing_id) == ("house (2)", 2, 7)
    body = orjson.loads(draft.body)
    assert body["apply_to_all"] == {"basic_editing": True}
    assert [i["client_image_id"] for i in body["image_list"]] == ["0.jpg", "1.jpg"]
    assert stage.api.sent == [(draft.body, draft.idempotency_key)]
    [told] = stage.told
    assert (told.status, told.order_id, told.follow_up) == ("created", "o-1", True)
    assert stage.ledger.outcomes[1].state == "created"
    assert stage.ledger.released == [7] and stage.placer.pending == 0


async def test_a_retried_order_keeps_its_key_and_body() -> None:
    stage = Stage(API(ServerError("busy", status=503)))
    stage.placer.place(await stage.settled_part())
    await stage.done()
    assert len(stage.api.sent) == 2 and len(set(stage.api.sent)) == 1
    assert stage.placer.counters.retries == 1 and len(stage.clock.sleeps) == 1
    assert stage.told[0].status == "created"


@pytest.mark.parametrize(
    ("script", "state", "says"),
    [
        ([BadRequest("no images", status=400)], "refused", "refused: HTTP 400"),
        ([Conflict("key reused", status=409)], "conflict", "never created again"),
        ([ServerError("down", status=503)] * 3, "sent", "outcome unknown: HTTP 503"),
        (
            [ServerError("down", status=503), BadRequest("odd", status=400)],
            "sent",
            "a retry was refused",
        ),
    ],
)
async def test_what_each_failure_leaves_in_the_ledger(
    script: list[Exception], state: str, says: str
) -> None:
    stage = Stage(API(*script))
    stage.placer.place(await stage.settled_part())
    await stage.done()
    assert stage.ledger.outcomes[1].state == state
    assert stage.told[0].status == "failed" and says in (stage.told[0].error or "")


async def test_a_422_names_the_image_whose_upload_is_unusable() -> None:
    refusal = UnprocessableEntity("not uploaded", param="image_list[1].image_urls[0]")
    stage = Stage(API(refusal))
    stage.placer.place(await stage.settled_part())
    await stage.done()
    assert stage.ledger.outcomes[1].bad_image == (7, "1.jpg")
    items = [OrderItem(7, "a", "m", "/a")]
    assert bad_image(UnprocessableEntity("x", param="image_list[5].image_urls[0]"), items) is None
    assert definite_refusal(BadRequest("x")) and not definite_refusal(Conflict("x"))


async def test_a_lost_claim_sends_nothing() -> None:
    ledger = Ledger()
    ledger.lost = True
    stage = Stage(API(), ledger)
    stage.placer.place(await stage.settled_part())
    await stage.done()
    assert stage.api.sent == [] and "took house over" in (stage.told[0].error or "")


async def test_content_already_in_a_live_order_is_left_out() -> None:
    ledger = Ledger()
    ledger.live = [OrderItem(7, "0.jpg", "m0.jpg", "/in/0.jpg")]
    stage = Stage(API(), ledger)
    part = await stage.settled_part()
    stage.placer.place(part)
    await stage.done()
    body = orjson.loads(stage.ledger.drafts[0].body)
    assert [i["client_image_id"] for i in body["image_list"]] == ["1.jpg"]
    assert part.results[("order:house", "0.jpg")].status == "ordered"


async def test_an_unknown_order_is_sent_again_with_its_own_key_and_body() -> None:
    stage = Stage(API(BadRequest("odd", status=400)))
    state = await stage.held()
    order = OrderRecord(3, 7, 1, 1, "house", b'{"x":1}', "k-3", "sent", None, None, 2, "lost")
    state.open += 1  # (as Claims counts it when it hands the order over)
    stage.claims.mark_ended("order:house")
    await stage.placer.resend(state, order)
    assert stage.api.sent == [(b'{"x":1}', "k-3")]
    # A 4xx on a re-send is no definite refusal: the order stays sent.
    assert stage.ledger.outcomes[3].state == "sent"
    assert stage.ledger.released == [7]


async def test_a_full_backlog_pushes_back_until_an_order_ends() -> None:
    api = API()
    api.gate = asyncio.Event()
    stage = Stage(api)
    parts = []
    for n in range(ORDER_BACKLOG):
        parts.append(await stage.settled_part(1, listing=f"order:l{n}"))
    for part in parts:
        stage.placer.place(part)
    room = asyncio.ensure_future(stage.placer.room())
    await asyncio.sleep(0)
    assert stage.placer.pending == ORDER_BACKLOG and not room.done()
    api.gate.set()
    await stage.done()
    await asyncio.wait_for(room, 1)
    assert len(stage.told) == ORDER_BACKLOG
