"""A webhook is a hint (issue 18, point 10): a forged ``order.completed`` neither finishes an
order, nor names what is downloaded, nor reaches the ledger as the order's outputs; the
follower asks the API, and takes the status and outputs from its answer alone. The
receiver's token is a random secret kept per account, not computable from the key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from styldod_batch.api import OrderAPIClient
from styldod_batch.budget import local_budget
from styldod_batch.engine import Uploader
from styldod_batch.follow import OrderFollower, event_hint
from styldod_batch.ledger import SQLiteLedger, open_ledger
from styldod_batch.models import RequestCounters
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import Settings
from styldod_batch.webhook_secret import earlier_secret_path, webhook_secret
from styldod_batch.webhooks import WebhookReceiver
from tests.helpers import make_tree
from tests.hostile_api import HostileOrderAPI, json_answer
from tests.hostile_outputs import HostileOutputs


def event(order_id: str, name: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    status = name.removeprefix("order.")
    return {
        "event": name,
        "orderID": order_id,
        "data": {"image_list": images, "order_status": status, "updatedAt": f"{name}-{id(images)}"},
    }


def forged_images(ids: list[str], url: str) -> list[dict[str, Any]]:
    return [{"client_image_id": i, "image_status": "completed", "output_url": url} for i in ids]


async def post(http: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> int:
    async with http.post(url, json=payload) as answer:
        return answer.status


@pytest_asyncio.fixture(loop_scope="session")
async def journal(tmp_path: Path) -> AsyncIterator[SQLiteLedger]:
    opened = await SQLiteLedger.open(tmp_path / "j.sqlite", base_url="http://x", api_key="k")
    try:
        yield opened
    finally:
        await opened.close()


def test_an_event_reaches_the_ledger_as_a_hint_only() -> None:
    forged = event("7", "order.completed", forged_images(["a.jpg"], "http://127.0.0.1:9/x"))
    hint = event_hint(forged)
    assert hint["data"]["image_list"] == [], "no image state or output URL of an event is kept"
    assert hint["data"]["order_status"] is None, "a final event records no status"
    moving = event_hint(event("7", "order.expert_assigned", []))
    assert moving["data"]["order_status"] == "expert_assigned"
    # An event whose order_status claims more than its name says is shown as its name.
    lying = event("7", "order.pre_processing", forged_images(["a.jpg"], "http://x/y"))
    lying["data"]["order_status"] = "completed"
    assert event_hint(lying)["data"]["order_status"] == "pre_processing"


async def test_a_final_event_is_confirmed_by_the_api(journal: SQLiteLedger) -> None:
    """The API says "post_processing" while only the forged event has arrived, "completed"
    (with its own output) once the order is really done: the follower keeps asking (soon,
    then slower) and takes the status and the list from the API's answer."""
    real = [{"client_image_id": "a.jpg", "image_status": "completed", "output_url": "https://o/a"}]
    done = asyncio.Event()

    async def order_a(_request: web.Request) -> web.StreamResponse:
        if done.is_set():
            answer = {"orderID": "A", "order_status": "completed", "image_list": real}
        else:
            answer = {"orderID": "A", "order_status": "post_processing", "image_list": []}
        return await json_answer(answer)(_request)

    async with HostileOrderAPI() as api, aiohttp.ClientSession() as session:
        api.then("/v2/orders/A", *[order_a] * 1000)
        settings = Settings(base_url=api.url, api_key="k")
        client = OrderAPIClient(
            session, settings, local_budget(1000, name="api"), RequestCounters()
        )
        follower = OrderFollower(client, journal, poll=False, poll_interval_s=0.05)
        follower.watch("listing-01", "A", "pre_processing")
        async with (
            WebhookReceiver(token="t" * 32, on_event=follower.on_event) as hooks,
            aiohttp.ClientSession() as http,
        ):
            forged = event("A", "order.completed", forged_images(["a.jpg"], "http://evil/x"))
            assert await post(http, hooks.url, forged) == 200
            # The forged event alone finishes nothing: the API is asked, and says otherwise.
            assert await follower.wait(timeout_s=1.0) is False
            asked = api.count("GET", "/v2/orders/A")
            # 3 asks 0.05 s apart, then every 0.25 s: about 6 in the second, never 20.
            assert 3 <= asked <= 10, asked
            assert not follower.orders["A"].final
            assert follower.orders["A"].image_list == []
            done.set()
            genuine = event("A", "order.completed", real)
            genuine["data"]["updatedAt"] = "later"
            assert await post(http, hooks.url, genuine) == 200
            assert await follower.wait(timeout_s=10) is True
    assert follower.orders["A"].status == "completed"
    assert follower.orders["A"].image_list == real, "outputs come from the API's answer"


async def test_events_of_unwatched_orders_ask_nothing(journal: SQLiteLedger) -> None:
    async with HostileOrderAPI() as api, aiohttp.ClientSession() as session:
        client = OrderAPIClient(
            session,
            Settings(base_url=api.url, api_key="k"),
            local_budget(1000, name="api"),
            RequestCounters(),
        )
        follower = OrderFollower(client, journal, poll=False)
        await follower.on_event(event("STRANGER", "order.completed", []))
        assert await follower.wait(timeout_s=0.5) is True  # nothing watched: nothing to wait
    assert api.received == [], "an order outside the job is never asked about"
    assert "STRANGER" in follower.early


async def test_a_forged_completion_steers_neither_the_ledger_nor_the_download(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A job on the sandbox; while its order is still being processed, a forged
    ``order.completed`` names outputs on a loopback server (allowed: the API is on
    loopback). The ledger keeps no forged list, nothing is fetched from there, and the
    real outputs download."""
    make_tree(tmp_path / "job", folders=1, files=2, size=700)
    box = await sandbox_factory(rps=1000, order_step_s=0.5)
    out = tmp_path / "out"
    settings = Settings(base_url=box.base_url, api_key=box.api_key, state=tmp_path / "state")
    async with (
        HostileOutputs() as elsewhere,
        WebhookReceiver(token=await webhook_secret(settings)) as hooks,
    ):
        settings = settings.with_changes(webhook_url=hooks.url, poll_interval_s=0.2)
        async with Uploader(settings) as uploader, aiohttp.ClientSession() as http:
            uploader.listen(hooks)
            report = await uploader.run([tmp_path / "job"])
            (order,) = report.orders
            assert order.order_id
            forged = event(
                order.order_id,
                "order.completed",
                forged_images(["photo-1.jpg", "photo-2.jpg"], elsewhere.url("/ok/forged")),
            )
            assert await post(http, hooks.url, forged) == 200
            assert uploader.ledger is not None
            await uploader.ledger.flush()
            row = await uploader.ledger.order_by_id(order.order_id)
            assert row is not None
            assert not row.final, "a forged event does not finish the order in the ledger"
            assert elsewhere.url("") not in str(row.image_list)

            assert await uploader.follow(report, timeout_s=60)
            await uploader.download(report, out)
            await uploader.ledger.flush()
            row = await uploader.ledger.order_by_id(order.order_id)
    assert elsewhere.requests == [], "nothing was fetched from the forged URLs"
    assert report.outputs == {"downloaded": 2}
    for name in ("photo-1.jpg", "photo-2.jpg"):
        fetched = (out / order.label / name) if order.label else (out / order.key / name)
        assert fetched.read_bytes() == (tmp_path / "job" / "listing-01" / name).read_bytes()
    assert row is not None and row.final
    assert elsewhere.url("") not in str(row.image_list), "the ledger holds the API's list"


async def test_the_webhook_secret_is_random_and_kept_in_the_ledger(tmp_path: Path) -> None:
    one = Settings(base_url="https://orderapi.styldod.com", api_key="k1", state=tmp_path / "a")
    secret = await webhook_secret(one)
    assert len(secret) >= 32
    assert await webhook_secret(one) == secret, "kept across runs"
    ledger = await open_ledger(one, read_only=True)
    try:
        assert await ledger.webhook_secret() == secret, "in the ledger itself"
    finally:
        await ledger.close()
    assert not earlier_secret_path(one).exists(), "no file beside it any more"
    # Not computable from the key: the same account elsewhere draws another one, and the
    # old token (an HMAC of the key and base URL) is not it.
    elsewhere = one.with_changes(state=tmp_path / "b")
    assert await webhook_secret(elsewhere) != secret
    old = hmac.new(b"k1", b"webhook|https://orderapi.styldod.com", hashlib.sha256)
    assert secret != old.hexdigest()[:32]
    # Another account in the same folder has its own.
    assert await webhook_secret(one.with_changes(api_key="k2")) != secret


async def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    settings = Settings(base_url="https://orderapi.styldod.com", api_key="k", state=tmp_path)
    await (await open_ledger(settings)).close()  # the ledger exists; its secret does not yet

    def in_a_thread() -> str:  # each with a connection and an event loop of its own
        return asyncio.run(webhook_secret(settings))

    secrets = await asyncio.gather(*(asyncio.to_thread(in_a_thread) for _ in range(8)))
    assert len(set(secrets)) == 1


async def test_a_secret_an_earlier_version_kept_in_a_file_is_taken_over(tmp_path: Path) -> None:
    """Orders placed then carry it in their webhook URL: the ledger takes it, not a new one."""
    from styldod_batch.errors import ConfigurationError

    settings = Settings(base_url="https://orderapi.styldod.com", api_key="k", state=tmp_path)
    path = earlier_secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = "E" * 43
    path.write_text(kept + "\n")
    assert await webhook_secret(settings) == kept
    path.unlink()
    assert await webhook_secret(settings) == kept, "kept in the ledger from then on"
    # A damaged file is never silently replaced (for an account whose ledger has none yet).
    other = settings.with_changes(api_key="k2")
    damaged = earlier_secret_path(other)
    damaged.write_text("short\n")
    os.chmod(damaged, 0o644)
    with pytest.raises(ConfigurationError, match="not a webhook secret"):
        await webhook_secret(other)
    assert damaged.read_text() == "short\n"


async def test_download_asks_the_api_about_orders_the_ledger_does_not_know_finished(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A receiver records events as hints only, so a ledger learns an order finished from
    the API alone: the ``download`` command asks about the orders it does not know as
    finished, and downloads those the API says are."""
    from styldod_batch.workflow import download_from_ledger

    make_tree(tmp_path / "job", folders=1, files=2, size=600)
    box = await sandbox_factory(rps=1000)
    settings = Settings(base_url=box.base_url, api_key=box.api_key, state=tmp_path / "state")
    async with Uploader(settings) as uploader:
        report = await uploader.run([tmp_path / "job"])
    (order,) = report.orders
    assert order.order_id
    assert box.api is not None
    for _ in range(600):  # the sandbox finishes the order on its own clock (within 30 s)
        if box.api.orders[order.order_id].status == "completed":
            break
        await asyncio.sleep(0.05)

    fetched = await download_from_ledger(settings, tmp_path / "out")
    assert fetched.outputs == {"downloaded": 2}
    gets = box.log.select(kind="api", method="GET")
    assert len(gets) == 1, "one ask for the one unfinished order"
