"""The one order tracker (``follow.OrderFollower``), fed by webhook hints and by polls alike,
on in-memory fakes: a fake Order API client and the virtual clock; no socket, no sleep.

- a webhook hint and a poll answer about one order make one transition, and one GET;
- a forged ``completed`` hint sets no output and no final status: the API's answer does;
- polls (and confirmations of a final hint) back off per the tracker's rule.
"""

from __future__ import annotations

from typing import Any, cast

from styldod_batch.api import OrderAPIClient
from styldod_batch.follow import CONFIRM_ASKS_FAST, CONFIRM_SLOWDOWN, OrderFollower
from styldod_batch.status import STATUS_OF_EVENT
from tests.virtual_clock import VirtualClock

INTERVAL = 2.0
EVENT_OF_STATUS = {status: event for event, status in STATUS_OF_EVENT.items()}
OUTPUT = {"client_image_id": "a.jpg", "image_status": "completed", "output_url": "https://x/a"}
FORGED = {"client_image_id": "a.jpg", "image_status": "completed", "output_url": "https://evil/a"}


class FakeAPI:
    """``get_order`` answers from ``answers`` (order ID -> status, image list); every call is
    recorded with the virtual time it was made at."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.answers: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.calls: list[tuple[str, float]] = []

    async def get_order(self, order_id: str, *, low_priority: bool = False) -> dict[str, Any]:
        assert low_priority, "the tracker's GETs take the budget at low priority"
        self.calls.append((order_id, self.clock.now()))
        status, images = self.answers[order_id]
        return {"order_id": order_id, "order_status": status, "image_list": images}


def tracker(*, poll: bool) -> tuple[OrderFollower, FakeAPI, VirtualClock]:
    clock = VirtualClock()
    api = FakeAPI(clock)
    follower = OrderFollower(
        cast(OrderAPIClient, api), None, poll=poll, poll_interval_s=INTERVAL, clock=clock.now
    )
    return follower, api, clock


def hint(order_id: str, status: str, images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "event": EVENT_OF_STATUS[status],
        "orderID": order_id,
        "data": {"order_status": status, "image_list": images or [], "updatedAt": "t"},
    }


async def test_a_hint_then_a_poll_of_one_order_make_one_transition() -> None:
    follower, api, _clock = tracker(poll=False)
    follower.watch("listing-1", "A")
    await follower.on_event(hint("A", "completed", [FORGED]))
    assert follower.orders["A"].history == [], "a final hint is not a transition"
    api.answers["A"] = ("completed", [OUTPUT])
    assert await follower.ask_due() == 1, "the hint's confirmation: the API says completed"
    await follower.on_event(hint("A", "completed", [FORGED]))  # the service's repeat
    assert await follower.ask_due() == 0, "a final order is not asked about again"
    order = follower.orders["A"]
    assert order.history == ["completed"], "one transition"
    assert [c[0] for c in api.calls] == ["A"], "one GET for the hint and its confirmation"
    assert order.image_list == [OUTPUT]


async def test_a_poll_answer_then_a_hint_of_one_order_make_one_transition() -> None:
    follower, api, _clock = tracker(poll=True)
    follower.watch("listing-1", "A")
    api.answers["A"] = ("completed", [OUTPUT])
    assert await follower.ask_due() == 1
    await follower.on_event(hint("A", "completed", [FORGED]))
    await follower.on_event(hint("A", "post_processing"))  # late: never moves it backwards
    assert await follower.ask_due() == 0, "the hint of a final order asks nothing"
    order = follower.orders["A"]
    assert order.history == ["completed"]
    assert order.status == "completed" and not order.confirming
    assert len(api.calls) == 1
    assert order.image_list == [OUTPUT]


async def test_a_forged_completed_hint_sets_no_outputs_until_the_api_says_so() -> None:
    follower, api, clock = tracker(poll=False)
    follower.watch("listing-1", "A")
    api.answers["A"] = ("post_processing", [])
    await follower.on_event(hint("A", "completed", [FORGED]))
    order = follower.orders["A"]
    assert not order.final and order.image_list == [] and order.images == []
    assert await follower.ask_due() == 1, "a final hint is asked about at once"
    assert not order.final, "the API says it is still being processed"
    assert order.status == "post_processing" and order.image_list == []
    assert order.confirming, "still to be confirmed: asked again later"
    assert not follower.all_final()
    # The service finishes: the next confirmation takes the API's outputs, never the hint's.
    api.answers["A"] = ("completed", [OUTPUT])
    clock.advance(INTERVAL)
    assert await follower.ask_due() == 1
    assert order.final and order.image_list == [OUTPUT]
    assert order.history == ["post_processing", "completed"]
    assert follower.all_final()


async def test_a_non_final_hint_moves_progress_forward_without_asking() -> None:
    follower, api, _clock = tracker(poll=False)
    follower.watch("listing-1", "A")
    await follower.on_event(hint("A", "expert_assigned"))
    await follower.on_event(hint("A", "pre_processing"))  # out of order: ignored
    assert follower.orders["A"].status == "expert_assigned"
    assert follower.orders["A"].history == ["expert_assigned"]
    assert await follower.ask_due() == 0 and api.calls == []


async def test_polling_asks_once_per_interval() -> None:
    follower, api, clock = tracker(poll=True)
    follower.watch("listing-1", "A")
    api.answers["A"] = ("pre_processing", [])
    assert await follower.ask_due() == 1
    clock.advance(INTERVAL - 0.01)
    assert await follower.ask_due() == 0, "not before the interval is over"
    clock.advance(0.01)
    assert await follower.ask_due() == 1
    times = [t - api.calls[0][1] for _, t in api.calls]
    assert times == [0.0, INTERVAL]


async def test_an_unconfirmed_final_hint_is_asked_about_ever_more_slowly() -> None:
    follower, api, clock = tracker(poll=False)
    follower.watch("listing-1", "A")
    api.answers["A"] = ("post_processing", [])
    await follower.on_event(hint("A", "completed"))
    start = clock.now()
    for _ in range(CONFIRM_ASKS_FAST + 3):  # step the clock to each due ask
        while await follower.ask_due() == 0:
            clock.advance(0.25)
    gaps = [b[1] - a[1] for a, b in zip(api.calls, api.calls[1:], strict=False)]
    assert api.calls[0][1] == start, "the first confirmation is at once"
    fast, slow = INTERVAL, INTERVAL * CONFIRM_SLOWDOWN
    assert gaps == [fast] * CONFIRM_ASKS_FAST + [slow] * 2, "fast asks, then slower"
    assert follower.confirmations == CONFIRM_ASKS_FAST + 3
    assert not follower.orders["A"].final
