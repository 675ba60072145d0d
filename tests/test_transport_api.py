"""The Order API client against a hostile API on 127.0.0.1: answers off the contract are
protocol errors (never retried), answers are read up to a bound, and a strange
Retry-After neither crashes nor parks the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from styldod_batch.api import MAX_ANSWER_BYTES, OrderAPIClient
from styldod_batch.budget import RateBudget
from styldod_batch.errors import NetworkError, ProtocolError, ServerError
from styldod_batch.models import ImageItem, RequestCounters
from styldod_batch.settings import RetryPolicy, Settings
from tests.hostile_api import Answer, HostileOrderAPI, json_answer, raw_answer

API_KEY = "sk-live-do-not-log-me"
UPLOAD_URLS = "/v2/upload-urls"
ORDERS = "/v2/orders"
FAST_RETRIES = RetryPolicy(base_s=0.01, cap_s=0.02)


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[HostileOrderAPI]:
    async with HostileOrderAPI() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as client_session:
        yield client_session


def client(
    api: HostileOrderAPI, session: aiohttp.ClientSession, retry: RetryPolicy = FAST_RETRIES
) -> tuple[OrderAPIClient, RateBudget, RequestCounters]:
    settings = Settings(base_url=api.url, api_key=API_KEY, rps=1000.0, retry=retry)
    budget = RateBudget(1000)
    counters = RequestCounters()
    return OrderAPIClient(session, settings, budget, counters), budget, counters


def items(count: int = 1) -> list[ImageItem]:
    return [ImageItem(f"/in/{n}.jpg", f"{n}.jpg", 10, 0, "image/jpeg", "g") for n in range(count)]


@pytest.mark.parametrize(
    "answer",
    [
        raw_answer(b"<html>surprise</html>", content_type="text/html"),
        raw_answer(b""),
        json_answer([1, 2, 3]),
        json_answer({"upload_urls": "nope"}),
        json_answer({"urls": []}),
        json_answer({"upload_urls": [{"upload_url": 5, "image_url": "x"}]}),
        json_answer({"upload_urls": [{"image_url": "http://127.0.0.1:9/b/k"}]}),
        json_answer({"upload_urls": []}),  # asked for one
    ],
    ids=["html", "empty", "list", "string", "no-urls", "number", "missing", "count"],
)
async def test_an_upload_url_answer_off_the_contract_is_a_protocol_error_never_retried(
    api: HostileOrderAPI, session: aiohttp.ClientSession, answer: Answer
) -> None:
    api.then(UPLOAD_URLS, answer, answer)
    order_api, _, counters = client(api, session)
    with pytest.raises(ProtocolError) as caught:
        await order_api.upload_urls(items())
    assert api.count("POST", UPLOAD_URLS) == 1
    assert (counters.api, counters.retries) == (1, 0)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        json_answer({"order_status": "pre_processing"}),
        json_answer({"orderID": None}),
        json_answer({"orderID": ""}),
        json_answer({"orderID": True}),
        raw_answer(b'{"orderID": "12'),
    ],
    ids=["missing", "null", "empty", "bool", "truncated"],
)
async def test_an_order_answer_without_an_order_id_is_a_protocol_error(
    api: HostileOrderAPI, session: aiohttp.ClientSession, answer: Answer
) -> None:
    api.then(ORDERS, answer, answer)
    order_api, _, _ = client(api, session)
    with pytest.raises(ProtocolError, match=r"orderID|not JSON"):
        await order_api.create_order({"order_name": "x", "image_list": []}, "key-1")
    assert api.count("POST", ORDERS) == 1


async def test_an_order_lookup_that_is_not_an_object_is_a_protocol_error(
    api: HostileOrderAPI, session: aiohttp.ClientSession
) -> None:
    api.then(f"{ORDERS}/42", json_answer(["completed"]))
    order_api, _, _ = client(api, session)
    with pytest.raises(ProtocolError):
        await order_api.get_order("42")


async def test_a_redirect_from_the_api_is_a_protocol_error(
    api: HostileOrderAPI, session: aiohttp.ClientSession
) -> None:
    api.then(UPLOAD_URLS, raw_answer(b"", status=302, Location="http://127.0.0.1:9/x"))
    order_api, _, _ = client(api, session)
    with pytest.raises(ProtocolError, match="302"):
        await order_api.upload_urls(items())


def padded_upload_answer(size: int) -> bytes:
    target = {"upload_url": "http://127.0.0.1:9/b/k?s=1", "image_url": "http://127.0.0.1:9/b/k"}
    head = orjson.dumps({"upload_urls": [target]})[:-1]
    return head + b', "padding": "' + b"x" * (size - len(head) - 16) + b'"}'


async def test_an_answer_larger_than_the_bound_is_refused(
    api: HostileOrderAPI, session: aiohttp.ClientSession
) -> None:
    """A valid answer, but of 9 MiB: it is not read whole into memory."""
    huge = padded_upload_answer(MAX_ANSWER_BYTES + (1 << 20))
    orjson.loads(huge)  # valid JSON: only its size is wrong
    api.then(UPLOAD_URLS, raw_answer(huge, content_type="application/json"))
    order_api, _, _ = client(api, session)
    with pytest.raises(ProtocolError, match="larger than 8 MiB"):
        await order_api.upload_urls(items())
    assert api.count("POST", UPLOAD_URLS) == 1


async def test_a_streamed_answer_without_a_length_stops_at_the_bound(
    api: HostileOrderAPI, session: aiohttp.ClientSession
) -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while sent < 64 * MAX_ANSWER_BYTES:  # bounded: stops even if never refused
                await response.write(b"[" * 65536)
                sent += 65536
        except (ConnectionError, RuntimeError):
            pass  # the client hung up
        return response

    api.then(UPLOAD_URLS, endless)
    order_api, _, _ = client(api, session)
    with pytest.raises(ProtocolError, match="larger than"):
        await order_api.upload_urls(items())
    assert sent < 64 * MAX_ANSWER_BYTES


async def test_an_error_answer_is_read_only_in_part_and_keeps_its_class(
    api: HostileOrderAPI, session: aiohttp.ClientSession
) -> None:
    api.then(UPLOAD_URLS, raw_answer(b"x" * (4 << 20), status=503))
    order_api, _, counters = client(api, session)
    targets = await order_api.upload_urls(items())  # a 503 is retried, however large
    assert len(targets) == 1
    assert counters.retries == 1


@pytest.mark.parametrize("retry_after", ["soon", "-1", "nan", "Thu, 99 Foo 2026 00:00:00 GMT"])
async def test_a_429_with_a_garbage_retry_after_is_retried(
    api: HostileOrderAPI, session: aiohttp.ClientSession, retry_after: str
) -> None:
    limited = json_answer({"error": {"code": "rate_limited"}}, 429, **{"Retry-After": retry_after})
    api.then(UPLOAD_URLS, limited)
    order_api, budget, counters = client(api, session, RetryPolicy(rate_limited_wait_s=0.05))
    assert len(await order_api.upload_urls(items())) == 1
    assert (counters.rate_limited, budget.rate_limited, counters.retries) == (1, 1, 1)


@pytest.mark.parametrize("retry_after", ["1e9", "86400", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_429_with_a_huge_retry_after_pauses_only_up_to_the_cap(
    api: HostileOrderAPI, session: aiohttp.ClientSession, retry_after: str
) -> None:
    limited = json_answer({"error": {"code": "rate_limited"}}, 429, **{"Retry-After": retry_after})
    api.then(UPLOAD_URLS, limited)
    order_api, budget, _ = client(api, session, RetryPolicy(max_server_wait_s=0.1))
    async with asyncio.timeout(60):  # guard: an uncapped pause would hold the test for years
        assert len(await order_api.upload_urls(items())) == 1
    assert budget.rate_limited == 1
    assert budget.pause_remaining_s() == 0.0


async def test_nothing_listening_is_a_network_error(session: aiohttp.ClientSession) -> None:
    async with HostileOrderAPI() as gone:
        pass
    order_api, _, _ = client(gone, session, RetryPolicy(max_attempts=2, base_s=0.01))
    with pytest.raises(NetworkError):
        await order_api.upload_urls(items())


async def test_a_server_error_is_still_a_server_error(
    api: HostileOrderAPI, session: aiohttp.ClientSession
) -> None:
    failing = json_answer({"error": {"code": "oops", "message": "down"}}, 500)
    api.then(UPLOAD_URLS, *[failing] * 3)
    order_api, _, counters = client(api, session, RetryPolicy(max_attempts=3, base_s=0.01))
    with pytest.raises(ServerError, match="down"):
        await order_api.upload_urls(items())
    assert counters.api == 3
