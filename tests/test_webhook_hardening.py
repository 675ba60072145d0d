"""The webhook receiver and the order follower against hostile senders on 127.0.0.1: events
for other orders (also through a whole ``upload --listen --download`` on the sandbox),
stalled clients, odd tokens."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from styldod_batch.api import OrderAPIClient
from styldod_batch.budget import local_budget
from styldod_batch.contract import ORDER_EVENTS
from styldod_batch.follow import OrderFollower
from styldod_batch.ledger import Ledger, SQLiteLedger
from styldod_batch.models import RequestCounters
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import Settings
from styldod_batch.webhook_secret import webhook_secret
from styldod_batch.webhooks import WebhookReceiver
from tests.helpers import json_report, make_tree, run_cli
from tests.hostile_api import HostileOrderAPI, json_answer
from tests.hostile_outputs import HostileOutputs

TOKEN = "right-token"


def event(order_id: str, name: str, *, output_url: str | None = None) -> dict[str, Any]:
    status = name.removeprefix("order.")
    image: dict[str, Any] = {"client_image_id": "a.jpg", "image_status": status}
    if output_url is not None:
        image["output_url"] = output_url
    return {
        "event": name,
        "orderID": order_id,
        "data": {"image_list": [image], "order_status": status, "updatedAt": name},
    }


@pytest_asyncio.fixture(loop_scope="session")
async def order_api() -> AsyncIterator[tuple[HostileOrderAPI, OrderAPIClient]]:
    """An Order API on 127.0.0.1 (answers queued by the test) and a client for it: a final
    event is only a hint, which the follower confirms with GET /v2/orders/{id}."""
    async with HostileOrderAPI() as api, aiohttp.ClientSession() as session:
        settings = Settings(base_url=api.url, api_key="k")
        yield (
            api,
            OrderAPIClient(session, settings, local_budget(1000, name="api"), RequestCounters()),
        )


def completed_answer(order_id: str) -> Any:
    image = {"client_image_id": "a.jpg", "image_status": "completed", "output_url": "https://o/a"}
    return json_answer({"orderID": order_id, "order_status": "completed", "image_list": [image]})


@pytest_asyncio.fixture(loop_scope="session")
async def journal(tmp_path: Path) -> AsyncIterator[SQLiteLedger]:
    opened = await SQLiteLedger.open(tmp_path / "j.sqlite", base_url="http://x", api_key="k")
    try:
        yield opened
    finally:
        await opened.close()


async def post(http: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> int:
    """Deliver as the service does: a 503 (a receiver not ready yet) is delivered again."""
    for _ in range(20):
        async with http.post(url, json=payload) as answer:
            if answer.status != 503:
                return answer.status
        await asyncio.sleep(0.25)
    return 503


def recorded_orders(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT order_id FROM events ORDER BY order_id")]


async def test_events_of_orders_outside_the_job_are_recorded_and_ignored(
    journal: SQLiteLedger, order_api: tuple[HostileOrderAPI, OrderAPIClient]
) -> None:
    api, client = order_api
    api.then("/v2/orders/A", completed_answer("A"))
    follower = OrderFollower(client, journal, poll=False)
    follower.watch("listing-01", "A")
    async with WebhookReceiver(token=TOKEN, on_event=follower.on_event) as hooks:
        async with aiohttp.ClientSession() as http:
            # Not ours: one that never finishes, one that points at some file to fetch.
            assert await post(http, hooks.url, event("STRANGER", "order.pre_processing")) == 200
            foreign = event("FOREIGN", "order.completed", output_url="http://127.0.0.1:9/x")
            assert await post(http, hooks.url, foreign) == 200
            assert await post(http, hooks.url, event("A", "order.completed")) == 200
        # Only A is waited for: the stranger that never finishes does not hold the wait.
        assert await follower.wait(timeout_s=30) is True
    assert set(follower.orders) == {"A"}, "only watched orders are followed (and downloaded)"
    assert follower.orders["A"].status == "completed"
    await journal.flush()
    assert recorded_orders(journal.path) == ["A", "FOREIGN", "STRANGER"], "every event recorded"
    assert hooks.deliveries == 3
    assert api.received == [("GET", "/v2/orders/A")], "only the watched order was asked about"


async def test_an_early_event_waits_for_its_order_in_a_bounded_buffer(
    journal: Ledger, order_api: tuple[HostileOrderAPI, OrderAPIClient]
) -> None:
    api, client = order_api
    api.then("/v2/orders/EARLY", completed_answer("EARLY"))
    follower = OrderFollower(client, journal, poll=False, early_orders_kept=3)
    async with (
        WebhookReceiver(token=TOKEN, on_event=follower.on_event) as hooks,
        aiohttp.ClientSession() as http,
    ):
        # The order's creation has not returned yet when its events arrive.
        assert await post(http, hooks.url, event("EARLY", "order.post_processing")) == 200
        assert await post(http, hooks.url, event("EARLY", "order.completed")) == 200
        assert follower.orders == {}
        follower.watch("listing-01", "EARLY")
        assert follower.orders["EARLY"].confirming, "its final event waits to be confirmed"
        assert follower.orders["EARLY"].key == "listing-01"
        assert await follower.wait(timeout_s=30) is True
        assert follower.orders["EARLY"].final

        for index in range(5):
            assert await post(http, hooks.url, event(f"X{index}", "order.completed")) == 200
    assert list(follower.early) == ["X2", "X3", "X4"], "the oldest unknown orders are dropped"
    assert set(follower.orders) == {"EARLY"}


async def test_a_non_ascii_token_is_not_found() -> None:
    async with WebhookReceiver(token=TOKEN) as hooks:
        base = f"http://127.0.0.1:{hooks.port}/hooks/"
        async with aiohttp.ClientSession() as http:
            for token in ("tökén", "%ff%fe", "right-token\u00e9", "ü" * 40):
                async with http.post(base + token, json=event("A", "order.completed")) as r:
                    assert r.status == 404, token
            async with http.post(base + TOKEN, json=event("A", "order.completed")) as r:
                assert r.status == 200
    assert hooks.deliveries == 1


Stalled = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stalled(port: int, count: int, opening: bytes) -> list[Stalled]:
    """``count`` connections that send ``opening`` and then nothing more."""
    opened = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(opening)
        await writer.drain()
        opened.append((reader, writer))  # the writer too: dropping it closes the socket
    return opened


async def closed_by_server(stalled: Stalled) -> bytes:
    """Everything the server sent before it closed the connection."""
    reader, writer = stalled
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionError:
        pass
    writer.close()
    return received


async def test_stalled_clients_are_closed_and_a_delivery_still_gets_through() -> None:
    header_timeout_s, body_timeout_s = 1.0, 1.0
    async with WebhookReceiver(
        token=TOKEN,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        max_connections=100,
    ) as hooks:
        # 200 clients stuck in their request line, 20 stuck in their body.
        in_headers = await open_stalled(hooks.port, 200, b"POST /hooks/right-token HTT")
        in_body = await open_stalled(
            hooks.port,
            20,
            b"POST /hooks/right-token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"event": ',
        )
        async with aiohttp.ClientSession() as http:
            assert await post(http, hooks.url, event("A", "order.completed")) == 200
        assert hooks.deliveries == 1
        assert hooks.connections_shed >= 100, "beyond 100 connections the oldest idle go"

        # Every stalled connection is closed by the server: within its timeouts, plus a
        # margin for a busy machine (without them they stayed open for minutes).
        bound_s = header_timeout_s + body_timeout_s + 20.0
        async with asyncio.timeout(bound_s):
            await asyncio.gather(*(closed_by_server(r) for r in in_headers))
            answers = await asyncio.gather(*(closed_by_server(r) for r in in_body))
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers)
        assert any(a.startswith(b"HTTP/1.1 408") for a in answers), "a slow body gets a 408"


def test_one_ranking_for_events_and_statuses() -> None:
    from styldod_batch.status import STATUS_OF_EVENT, event_rank, is_final_status, status_rank

    assert set(STATUS_OF_EVENT) == set(ORDER_EVENTS)
    assert [event_rank(e) for e in ORDER_EVENTS] == [1, 2, 3, 4, 4]
    assert all(event_rank(e) == status_rank(STATUS_OF_EVENT[e]) for e in ORDER_EVENTS)
    assert is_final_status("completed") and is_final_status("error")
    assert not is_final_status("post_processing") and not is_final_status(None)
    assert status_rank("something new") == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, deadline_s: float) -> None:
    """Poll until something accepts connections on ``port``."""
    async with asyncio.timeout(deadline_s):
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def test_a_job_ignores_events_of_other_orders_end_to_end(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """``upload --listen --download``: events of orders outside the job, one that never
    finishes and one completed with an output, neither hold the wait nor get downloaded."""
    make_tree(tmp_path / "job", folders=1, files=2, size=2000)
    box = await sandbox_factory(rps=1000, order_step_s=1.0)
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    port = free_port()
    hook_url = f"http://127.0.0.1:{port}/hooks/" + await webhook_secret(
        Settings(base_url=box.base_url, api_key=box.api_key, state=journal)
    )
    async with HostileOutputs() as elsewhere:
        job = asyncio.create_task(
            asyncio.to_thread(
                run_cli,
                "upload",
                str(tmp_path / "job"),
                "--journal",
                str(journal),
                "--json",
                "--listen",
                f"127.0.0.1:{port}",
                "--download",
                str(out),
                "--wait-timeout",
                "30",
                env={"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url},
            )
        )
        await wait_listening(port, deadline_s=60)
        async with aiohttp.ClientSession() as http:
            stranger = event("STRANGER", "order.pre_processing")
            foreign = event("FOREIGN", "order.completed", output_url=elsewhere.url("/ok/f"))
            assert await post(http, hook_url, stranger) == 200
            assert await post(http, hook_url, foreign) == 200
        completed = await job
        assert elsewhere.requests == [], "nothing was fetched for an order outside the job"
    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert [o["status"] for o in report["orders"]] == ["completed"]
    assert report["outputs"] == {"downloaded": 2}
    assert sorted(p.name for p in out.rglob("*.jpg")) == ["photo-1.jpg", "photo-2.jpg"]
    assert {"FOREIGN", "STRANGER"} <= set(recorded_orders(journal)), "still recorded"
