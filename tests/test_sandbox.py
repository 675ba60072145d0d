"""Acceptance tests of the sandbox: real HTTP on loopback to the Order API and real SeaweedFS.

Every test talks to a sandbox started by the ``sandbox`` / ``sandbox_factory`` fixtures over
real sockets on 127.0.0.1; nothing is mocked and nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDictProxy

from styldod_batch.contract import (
    EVENT_COMPLETED,
    EVENT_ERROR,
    EVENT_EXPERT_ASSIGNED,
    EVENT_POST_PROCESSING,
    EVENT_PRE_PROCESSING,
)
from styldod_batch.sandbox import Faults, KeyConfig, Sandbox, SeaweedS3
from styldod_batch.sandbox.pytest_plugin import SandboxFactory

JPEG = "image/jpeg"
FOUR_EVENTS = [
    EVENT_PRE_PROCESSING,
    EVENT_EXPERT_ASSIGNED,
    EVENT_POST_PROCESSING,
    EVENT_COMPLETED,
]
ERROR_KEYS = {"code", "message", "param"}


# -- helpers -------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test once ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def basic_auth(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def auth(sandbox: Sandbox, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"api-key": sandbox.api_key, **(extra or {})}


@dataclass(slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The contract's error body; asserts its shape."""
        assert self.headers.get("Content-Type", "").startswith("application/json")
        body = self.json()
        assert set(body) == {"error"}
        error: dict[str, Any] = body["error"]
        assert set(error) == ERROR_KEYS
        assert isinstance(error["code"], str)
        assert error["code"]
        assert isinstance(error["message"], str)
        assert error["message"]
        assert error["param"] is None or isinstance(error["param"], str)
        return error


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: Any = None,
) -> Reply:
    if json is not None:
        data = orjson.dumps(json)
        headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.request(method, url, headers=headers, data=data) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


def file_spec(size: int, name: str = "photo.jpg", content_type: str = JPEG) -> dict[str, Any]:
    return {"file_name": name, "content_type": content_type, "content_length": size}


async def upload_urls(
    http: aiohttp.ClientSession, sandbox: Sandbox, files: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    reply = await call(
        http,
        "POST",
        sandbox.base_url + "/v2/upload-urls",
        headers=auth(sandbox),
        json={"files": files},
    )
    assert reply.status == 200, reply.body
    urls: list[dict[str, Any]] = reply.json()["upload_urls"]
    assert [u["file_name"] for u in urls] == [f["file_name"] for f in files]
    return urls


async def put(
    http: aiohttp.ClientSession,
    url: str,
    body: Any,
    content_type: str = JPEG,
    extra: Mapping[str, str] | None = None,
) -> Reply:
    return await call(
        http, "PUT", url, headers={"Content-Type": content_type, **(extra or {})}, data=body
    )


async def upload(http: aiohttp.ClientSession, sandbox: Sandbox, bodies: list[bytes]) -> list[str]:
    """Upload each body through a pre-signed URL; returns the image URLs, in order."""
    slots = await upload_urls(
        http, sandbox, [file_spec(len(b), f"img-{i}.jpg") for i, b in enumerate(bodies)]
    )
    for slot, body in zip(slots, bodies, strict=True):
        reply = await put(http, slot["upload_url"], body)
        assert reply.status == 200, reply.body
    return [slot["image_url"] for slot in slots]


async def create_order(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> Reply:
    return await call(
        http,
        "POST",
        sandbox.base_url + "/v2/orders",
        headers=auth(sandbox, headers),
        json=body,
    )


async def get_order(http: aiohttp.ClientSession, sandbox: Sandbox, order_id: str) -> Reply:
    return await call(
        http, "GET", f"{sandbox.base_url}/v2/orders/{order_id}", headers=auth(sandbox)
    )


def images(urls: list[str], **options: Any) -> list[dict[str, Any]]:
    return [
        {"client_image_id": f"IMG#{i}", "image_urls": [url], "sequence": i, **options}
        for i, url in enumerate(urls, start=1)
    ]


def object_key(sandbox: Sandbox, image_url: str) -> str:
    assert sandbox.api is not None
    return sandbox.api.uploads[image_url].object_key


def direct_url(sandbox: Sandbox, method: str, image_url: str) -> str:
    """A freshly pre-signed URL straight to SeaweedFS, for reading what storage holds."""
    assert sandbox.api is not None
    url = sandbox.api.presigner.direct_url(method, object_key(sandbox, image_url))
    assert urlsplit(url).hostname == "127.0.0.1"
    return url


def s3_code(body: bytes) -> str:
    start, end = body.find(b"<Code>"), body.find(b"</Code>")
    assert start >= 0, body
    assert end > start, body
    return body[start + 6 : end].decode()


@dataclass(slots=True)
class Delivery:
    path: str
    payload: dict[str, Any]
    status: int


@dataclass(slots=True)
class WebhookReceiver:
    """A webhook endpoint on a free loopback port; records every delivery it answered."""

    fail_first_of_each_event: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    base_url: str = ""

    def url(self, path: str = "/hooks/secret-token") -> str:
        return self.base_url + path

    def accepted(self, path: str | None = None) -> list[dict[str, Any]]:
        return [
            d.payload
            for d in self.deliveries
            if d.status == 200 and (path is None or d.path == path)
        ]

    def accepted_events(self, path: str | None = None) -> list[str]:
        return [p["event"] for p in self.accepted(path)]

    async def handle(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        seen = {
            d.payload["event"]
            for d in self.deliveries
            if d.payload["orderID"] == payload["orderID"]
        }
        status = 500 if self.fail_first_of_each_event and payload["event"] not in seen else 200
        self.deliveries.append(Delivery(request.path, payload, status))
        return web.Response(status=status, text="ok" if status == 200 else "try again")


ReceiverFactory = Callable[..., Awaitable[WebhookReceiver]]


@pytest_asyncio.fixture(loop_scope="session")
async def receiver_factory() -> AsyncIterator[ReceiverFactory]:
    runners: list[web.AppRunner] = []

    async def make(fail_first_of_each_event: bool = False) -> WebhookReceiver:
        receiver = WebhookReceiver(fail_first_of_each_event=fail_first_of_each_event)
        app = web.Application()
        app.router.add_post("/{tail:.*}", receiver.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        receiver.base_url = f"http://127.0.0.1:{port}"
        return receiver

    yield make
    for runner in runners:
        await runner.cleanup()


# -- 1. authentication ---------------------------------------------------------------------------


async def test_api_key_is_required(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    url = sandbox.base_url + "/v2/upload-urls"
    body = {"files": [file_spec(10)]}

    missing = await call(http, "POST", url, json=body)
    assert missing.status == 401
    assert missing.error()["code"] == "missing_api_key"

    wrong = await call(http, "POST", url, json=body, headers={"api-key": "not-the-key"})
    assert wrong.status == 401
    assert wrong.error()["code"] == "invalid_api_key"

    right = await call(http, "POST", url, json=body, headers={"api-key": sandbox.api_key})
    assert right.status == 200
    assert len(right.json()["upload_urls"]) == 1


async def test_http_basic_auth_with_key_and_secret(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    url = sandbox.base_url + "/v2/upload-urls"
    body = {"files": [file_spec(10)]}

    ok = await call(
        http,
        "POST",
        url,
        json=body,
        headers={"Authorization": basic_auth(sandbox.api_key, "sandbox-secret")},
    )
    assert ok.status == 200, ok.body

    for user, secret in ((sandbox.api_key, "wrong-secret"), ("not-the-key", "sandbox-secret")):
        bad = await call(
            http,
            "POST",
            url,
            json=body,
            headers={"Authorization": basic_auth(user, secret)},
        )
        assert bad.status == 401
        assert bad.error()["code"] == "invalid_credentials"

    garbage = await call(http, "POST", url, json=body, headers={"Authorization": "Basic %%%"})
    assert garbage.status == 401
    garbage.error()


# -- 2. rate limit -------------------------------------------------------------------------------


async def test_burst_beyond_the_rate_limit_gets_429_with_retry_after(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    url = sandbox.base_url + "/v2/orders/unknown"
    replies = await asyncio.gather(
        *(call(http, "GET", url, headers=auth(sandbox)) for _ in range(25))
    )
    statuses = [r.status for r in replies]
    limited = [r for r in replies if r.status == 429]
    accepted = [r for r in replies if r.status != 429]
    assert limited, statuses
    assert {r.status for r in accepted} == {404}
    # A strict sliding window: never more than 20 accepted in one second.
    assert len(accepted) <= 20
    for reply in limited:
        retry_after = reply.headers["Retry-After"]
        assert retry_after.isdigit(), retry_after
        assert int(retry_after) >= 1
        assert reply.error()["code"] == "rate_limited"
    logged = sandbox.log.select(kind="api")
    assert sorted(e.status for e in logged) == sorted(statuses)
    assert all(e.headers["Retry-After"] for e in logged if e.status == 429)


async def test_calls_spread_within_the_limit_are_never_limited(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # 30 calls, each sent 55 ms after the previous answer: at most 19 arrive in any second
    # (a steady 18/s), which a limit of 20 per sliding second must accept every time.
    url = sandbox.base_url + "/v2/orders/unknown"
    statuses = []
    for _ in range(30):
        reply = await call(http, "GET", url, headers=auth(sandbox))
        statuses.append(reply.status)
        await asyncio.sleep(0.055)  # pacing the sender, not waiting for a condition
    assert statuses == [404] * 30
    assert sandbox.log.max_in_window("api") <= 19


# -- 3-6. storage: pre-signed PUTs ---------------------------------------------------------------


async def test_presigned_put_lands_in_seaweedfs_with_md5_etag(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    body = os.urandom(1024 * 1024 + 17)
    (slot,) = await upload_urls(http, sandbox, [file_spec(len(body), "listing-42/kitchen.jpg")])
    upload_url, image_url = slot["upload_url"], slot["image_url"]
    # Both URLs name the sandbox's own storage host, and the image URL is the unsigned object.
    assert upload_url.startswith(sandbox.storage_url + "/")
    assert image_url.startswith(sandbox.storage_url + "/")
    assert image_url.endswith("/listing-42/kitchen.jpg")
    assert upload_url.split("?", 1)[0] == image_url
    query = parse_qs(urlsplit(upload_url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["14400"]
    assert "content-type" in query["X-Amz-SignedHeaders"][0].split(";")

    reply = await put(http, upload_url, body)
    assert reply.status == 200, reply.body
    md5 = hashlib.md5(body).hexdigest()  # noqa: S324 (S3's ETag)
    assert reply.headers["ETag"] == f'"{md5}"'

    # What storage now holds, read back through a freshly pre-signed URL.
    head = await call(http, "HEAD", direct_url(sandbox, "HEAD", image_url))
    assert head.status == 200
    assert head.headers["ETag"] == f'"{md5}"'
    assert int(head.headers["Content-Length"]) == len(body)
    assert head.headers["Content-Type"] == JPEG
    got = await call(http, "GET", direct_url(sandbox, "GET", image_url))
    assert got.status == 200
    assert got.body == body


def _expiry(upload_url: str) -> float:
    query = parse_qs(urlsplit(upload_url).query)
    signed = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    return signed + int(query["X-Amz-Expires"][0])


async def test_expired_upload_url_is_refused(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(url_ttl_s=1)
    (slot,) = await upload_urls(http, sandbox, [file_spec(5)])
    assert parse_qs(urlsplit(slot["upload_url"]).query)["X-Amz-Expires"] == ["1"]
    expiry = _expiry(slot["upload_url"])
    # X-Amz-Date has whole seconds: one more second makes sure the URL is past its life.
    await wait_until(lambda: time.time() > expiry + 1.0, timeout=10)

    reply = await put(http, slot["upload_url"], b"hello")
    assert reply.status == 403
    assert b"Request has expired" in reply.body
    head = await call(http, "HEAD", direct_url(sandbox, "HEAD", slot["image_url"]))
    assert head.status == 404


async def test_expire_switch_revokes_outstanding_urls_only(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    before, other = await upload_urls(http, sandbox, [file_spec(5, "a.jpg"), file_spec(5, "b.jpg")])
    sandbox.expire_upload_urls()
    after, after2 = await upload_urls(http, sandbox, [file_spec(5, "c.jpg"), file_spec(5, "d.jpg")])

    refused = await put(http, before["upload_url"], b"hello")
    assert refused.status == 403
    assert s3_code(refused.body) == "AccessDenied"
    assert b"Request has expired" in refused.body
    assert (await put(http, other["upload_url"], b"hello")).status == 403

    accepted = await put(http, after["upload_url"], b"hello")
    assert accepted.status == 200, accepted.body

    # The same switch over HTTP, for a sandbox in another process.
    control = await call(http, "POST", sandbox.base_url + "/_sandbox/expire-upload-urls")
    assert control.status == 200
    refused2 = await put(http, after2["upload_url"], b"hello")
    assert refused2.status == 403
    assert b"Request has expired" in refused2.body
    (fresh,) = await upload_urls(http, sandbox, [file_spec(5, "e.jpg")])
    assert (await put(http, fresh["upload_url"], b"hello")).status == 200


async def test_bad_content_md5_and_wrong_content_type_are_refused(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    body = b"some image bytes"
    (slot,) = await upload_urls(http, sandbox, [file_spec(len(body))])
    url = slot["upload_url"]

    wrong_md5 = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()  # noqa: S324
    bad_digest = await put(http, url, body, extra={"Content-MD5": wrong_md5})
    assert bad_digest.status == 400
    assert s3_code(bad_digest.body) == "BadDigest"

    wrong_type = await put(http, url, body, content_type="image/png")
    assert wrong_type.status == 403
    assert s3_code(wrong_type.body) == "SignatureDoesNotMatch"

    # Nothing landed; the right MD5 and type then succeed on the same URL.
    assert (await call(http, "HEAD", direct_url(sandbox, "HEAD", slot["image_url"]))).status == 404
    right_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324
    ok = await put(http, url, body, extra={"Content-MD5": right_md5})
    assert ok.status == 200, ok.body


async def test_chunked_put_is_refused_with_501(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    (slot,) = await upload_urls(http, sandbox, [file_spec(10)])

    async def stream() -> AsyncIterator[bytes]:
        yield b"hello"
        yield b"world"

    reply = await put(http, slot["upload_url"], stream())
    assert reply.status == 501
    assert s3_code(reply.body) == "NotImplemented"
    (entry,) = sandbox.log.select(kind="storage", method="PUT")
    assert entry.headers.get("Transfer-Encoding", "").lower() == "chunked"
    head = await call(http, "HEAD", direct_url(sandbox, "HEAD", slot["image_url"]))
    assert head.status == 404


async def test_put_without_content_length_is_refused_with_411(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    (slot,) = await upload_urls(http, sandbox, [file_spec(10)])
    parts = urlsplit(slot["upload_url"])
    assert parts.hostname == "127.0.0.1"
    assert parts.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", parts.port)
    try:
        writer.write(
            (
                f"PUT {parts.path}?{parts.query} HTTP/1.1\r\n"
                f"Host: {parts.netloc}\r\n"
                f"Content-Type: {JPEG}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split()[1] == b"411", raw
    assert b"<Code>MissingContentLength</Code>" in rest


# -- 7. orders must name uploaded objects --------------------------------------------------------


async def test_order_naming_images_not_uploaded_is_refused_with_422(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    (uploaded,) = await upload(http, sandbox, [b"a real image"])
    never, short = await upload_urls(
        http, sandbox, [file_spec(10, "n.jpg"), file_spec(10, "s.jpg")]
    )
    # Announced 10 bytes, sent 5.
    assert (await put(http, short["upload_url"], b"12345")).status == 200

    cases = {
        never["image_url"]: "image_list[1].image_urls[0]",
        short["image_url"]: "image_list[1].image_urls[0]",
        sandbox.storage_url + "/no-such-bucket/never-issued.jpg": "image_list[1].image_urls[0]",
    }
    for bad_url, param in cases.items():
        reply = await create_order(
            http,
            sandbox,
            {
                "order_name": "listing-42",
                "image_list": [
                    {"client_image_id": "IMG#1", "image_urls": [uploaded]},
                    {"client_image_id": "IMG#2", "image_urls": [bad_url]},
                ],
            },
        )
        assert reply.status == 422, (bad_url, reply.body)
        error = reply.error()
        assert error["code"] == "image_not_uploaded"
        assert error["param"] == param

    assert sandbox.api is not None
    assert sandbox.api.orders == {}
    ok = await create_order(http, sandbox, {"image_list": images([uploaded])})
    assert ok.status == 200, ok.body


# -- 8. idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_replays_and_refuses_a_different_body(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    urls = await upload(http, sandbox, [b"one", b"two"])
    body = {"order_name": "listing-42", "image_list": images(urls)}
    key = {"Idempotency-Key": "6f1c54d2-64a8-4a6e-9a51-2b1f8c1f0c11"}

    first = await create_order(http, sandbox, body, key)
    assert first.status == 200, first.body
    assert "Idempotent-Replayed" not in first.headers
    again = await create_order(http, sandbox, body, key)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["orderID"] == first.json()["orderID"]
    assert again.body == first.body

    changed = await create_order(http, sandbox, {**body, "order_name": "listing-43"}, key)
    assert changed.status == 409
    assert changed.error()["code"] == "idempotency_key_reused"

    # Two identical requests at once still make a single order.
    key2 = {"Idempotency-Key": "0d7b4e0e-3f7e-4c0e-8f5e-9a7c2c9b6d21"}
    racing = await asyncio.gather(*(create_order(http, sandbox, body, key2) for _ in range(2)))
    assert [r.status for r in racing] == [200, 200]
    assert racing[0].json()["orderID"] == racing[1].json()["orderID"]
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in racing) == ["", "true"]

    assert sandbox.api is not None
    assert len(sandbox.api.orders) == 2
    logged = sandbox.log.select(kind="api", method="POST", path_prefix="/v2/orders")
    assert [e.idempotency_key for e in logged] == [key["Idempotency-Key"]] * 3 + [
        key2["Idempotency-Key"]
    ] * 2
    assert sum(e.replayed for e in logged) == 2


# -- 9. webhooks ---------------------------------------------------------------------------------


def _check_payload(payload: dict[str, Any], order_id: str) -> None:
    assert set(payload) == {"event", "orderID", "data"}
    assert payload["orderID"] == order_id
    data = payload["data"]
    assert set(data) == {"image_list", "order_status", "createdAt", "updatedAt"}
    for stamp in (data["createdAt"], data["updatedAt"]):
        assert isinstance(stamp, str)
        assert stamp.endswith("Z")
    assert data["updatedAt"] >= data["createdAt"]
    for image in data["image_list"]:
        assert {"client_image_id", "image_status"} <= set(image)


async def test_webhooks_arrive_in_order_and_outputs_hold_the_uploads(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver_factory: ReceiverFactory
) -> None:
    receiver: WebhookReceiver = await receiver_factory()
    bodies = [os.urandom(3000), os.urandom(5000)]
    urls = await upload(http, sandbox, bodies)
    hook = receiver.url("/styldod/tok-123")
    created = await create_order(
        http, sandbox, {"order_name": "listing-42", "webhook_url": hook, "image_list": images(urls)}
    )
    assert created.status == 200, created.body
    order = created.json()
    order_id = order["orderID"]
    assert order["order_status"] == "pre_processing"
    assert [i["image_status"] for i in order["image_list"]] == ["pending", "pending"]
    assert [i["client_image_id"] for i in order["image_list"]] == ["IMG#1", "IMG#2"]

    await wait_until(lambda: len(receiver.accepted()) >= 4)
    payloads = receiver.accepted()
    assert [p["event"] for p in payloads] == FOUR_EVENTS
    assert {d.path for d in receiver.deliveries} == {"/styldod/tok-123"}
    for payload in payloads:
        _check_payload(payload, order_id)
    assert [p["data"]["order_status"] for p in payloads] == [
        "pre_processing",
        "expert_assigned",
        "post_processing",
        "completed",
    ]
    assert len({p["data"]["createdAt"] for p in payloads}) == 1
    stamps = [p["data"]["updatedAt"] for p in payloads]
    assert stamps == sorted(stamps)

    completed = payloads[-1]["data"]["image_list"]
    assert [i["client_image_id"] for i in completed] == ["IMG#1", "IMG#2"]
    assert [i["sequence"] for i in completed] == [1, 2]
    assert {i["image_status"] for i in completed} == {"completed"}
    for image, body in zip(completed, bodies, strict=True):
        assert image["output_url"].startswith(sandbox.base_url + "/")
        output = await call(http, "GET", image["output_url"])
        assert output.status == 200
        assert output.body == body
    # Before completion no image carried an output.
    for payload in payloads[:-1]:
        assert all("output_url" not in i for i in payload["data"]["image_list"])

    view = await get_order(http, sandbox, order_id)
    assert view.status == 200
    assert view.json()["order_status"] == "completed"
    assert view.json()["orderID"] == order_id
    # No retries were needed.
    await wait_until(lambda: all(e.status for e in sandbox.log.select(kind="webhook")))
    assert [e.status for e in sandbox.log.select(kind="webhook")] == [200] * 4


async def test_failed_webhook_deliveries_are_retried(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver_factory: ReceiverFactory
) -> None:
    receiver: WebhookReceiver = await receiver_factory(fail_first_of_each_event=True)
    urls = await upload(http, sandbox, [b"image"])
    created = await create_order(
        http, sandbox, {"webhook_url": receiver.url(), "image_list": images(urls)}
    )
    assert created.status == 200, created.body
    order_id = created.json()["orderID"]

    await wait_until(lambda: len(receiver.accepted()) >= 4)
    assert receiver.accepted_events() == FOUR_EVENTS
    # Each event was refused once, then delivered again, before the next event went out.
    assert [(d.payload["event"], d.status) for d in receiver.deliveries] == [
        (event, status) for event in FOUR_EVENTS for status in (500, 200)
    ]
    logged = sandbox.log.select(kind="webhook")
    assert [(e.event, e.status) for e in logged] == [
        (event, status) for event in FOUR_EVENTS for status in (500, 200)
    ]
    assert {e.order_id for e in logged} == {order_id}
    assert {e.path for e in logged} == {receiver.url()}


async def test_webhooks_give_up_after_three_retries(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # A receiver that always fails: one delivery plus three retries per event, then the next.
    attempts: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        attempts.append(orjson.loads(await request.read())["event"])
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", refuse)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        urls = await upload(http, sandbox, [b"image"])
        created = await create_order(
            http,
            sandbox,
            {"webhook_url": f"http://127.0.0.1:{port}/hook", "image_list": images(urls)},
        )
        assert created.status == 200
        await wait_until(lambda: len(attempts) >= 16)
        await wait_until(lambda: all(e.status for e in sandbox.log.select(kind="webhook")))
        assert [e.status for e in sandbox.log.select(kind="webhook")] == [503] * 16
        assert attempts == [event for event in FOUR_EVENTS for _ in range(4)]
    finally:
        await runner.cleanup()


async def test_an_image_in_error_ends_the_order_in_error(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver_factory: ReceiverFactory
) -> None:
    receiver: WebhookReceiver = await receiver_factory()
    urls = await upload(http, sandbox, [b"good", b"bad"])
    created = await create_order(
        http,
        sandbox,
        {
            "webhook_url": receiver.url(),
            "image_list": [
                {"client_image_id": "IMG#111", "image_urls": [urls[0]], "sequence": 1},
                {"client_image_id": "IMG#333-error", "image_urls": [urls[1]], "sequence": 2},
            ],
        },
    )
    assert created.status == 200, created.body
    order_id = created.json()["orderID"]

    await wait_until(lambda: len(receiver.accepted()) >= 4)
    assert receiver.accepted_events() == [*FOUR_EVENTS[:3], EVENT_ERROR]
    final = receiver.accepted()[-1]
    _check_payload(final, order_id)
    assert final["data"]["order_status"] == "error"
    good, bad = final["data"]["image_list"]
    assert good["client_image_id"] == "IMG#111"
    assert good["image_status"] == "completed"
    assert "output_url" in good
    assert bad["client_image_id"] == "IMG#333-error"
    assert bad["image_status"] == "error"
    assert "output_url" not in bad
    view = await get_order(http, sandbox, order_id)
    assert view.json()["order_status"] == "error"


# -- 10. option precedence and the key's global configuration ------------------------------------


async def test_option_precedence_and_global_webhook(
    sandbox_factory: SandboxFactory,
    http: aiohttp.ClientSession,
    receiver_factory: ReceiverFactory,
) -> None:
    receiver: WebhookReceiver = await receiver_factory()
    global_hook = receiver.url("/global/tok")
    sandbox = await sandbox_factory(
        keys={
            "sandbox-key": KeyConfig(
                options={"basic_editing": True, "style": "modern"}, webhook_url=global_hook
            )
        }
    )
    urls = await upload(http, sandbox, [b"a", b"b", b"c"])

    # image level > apply_to_all > the key's global configuration.
    first = await create_order(
        http,
        sandbox,
        {
            "apply_to_all": {"basic_editing": False},
            "image_list": [
                {"client_image_id": "A", "image_urls": [urls[0]], "basic_editing": True},
                {"client_image_id": "B", "image_urls": [urls[1]]},
            ],
        },
    )
    assert first.status == 200, first.body
    view = (await get_order(http, sandbox, first.json()["orderID"])).json()
    options = {i["client_image_id"]: i["options"] for i in view["image_list"]}
    assert options["A"]["basic_editing"] is True
    assert options["B"]["basic_editing"] is False
    assert options["A"]["style"] == options["B"]["style"] == "modern"

    # Nothing on the order: the global configuration applies.
    own_hook = receiver.url("/own/tok")
    second = await create_order(
        http,
        sandbox,
        {
            "webhook_url": own_hook,
            "image_list": [{"client_image_id": "C", "image_urls": [urls[2]]}],
        },
    )
    assert second.status == 200, second.body
    view2 = (await get_order(http, sandbox, second.json()["orderID"])).json()
    assert view2["image_list"][0]["options"] == {"basic_editing": True, "style": "modern"}

    # The first order named no webhook: the key's global one got its events; the second
    # order's own webhook got its events.
    await wait_until(lambda: len(receiver.accepted()) >= 8)
    assert receiver.accepted_events("/global/tok") == FOUR_EVENTS
    assert {p["orderID"] for p in receiver.accepted("/global/tok")} == {first.json()["orderID"]}
    assert receiver.accepted_events("/own/tok") == FOUR_EVENTS
    assert {p["orderID"] for p in receiver.accepted("/own/tok")} == {second.json()["orderID"]}


# -- 11. errors ----------------------------------------------------------------------------------


async def test_too_many_files_and_images(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    fifty = [file_spec(10, f"f{i}.jpg") for i in range(50)]
    assert len(await upload_urls(http, sandbox, fifty)) == 50
    too_many = await call(
        http,
        "POST",
        sandbox.base_url + "/v2/upload-urls",
        headers=auth(sandbox),
        json={"files": [*fifty, file_spec(10, "f50.jpg")]},
    )
    assert too_many.status == 400
    assert too_many.error()["code"] == "too_many_files"

    unsupported = await call(
        http,
        "POST",
        sandbox.base_url + "/v2/upload-urls",
        headers=auth(sandbox),
        json={"files": [file_spec(10, "x.gif", "image/gif")]},
    )
    assert unsupported.status == 422
    assert unsupported.error()["code"] == "unsupported_content_type"

    url = sandbox.storage_url + "/bucket/whatever.jpg"
    reply = await create_order(http, sandbox, {"image_list": images([url] * 101)})
    assert reply.status == 400
    error = reply.error()
    assert error["code"] == "too_many_images"
    assert error["param"] == "image_list"


async def test_invalid_options_and_malformed_json(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    (url,) = await upload(http, sandbox, [b"img"])

    reply = await create_order(
        http, sandbox, {"apply_to_all": {"basic_editing": "yes"}, "image_list": images([url])}
    )
    assert reply.status == 400
    assert reply.error()["code"] == "invalid_option"
    assert reply.error()["param"] == "apply_to_all.basic_editing"

    reply = await create_order(http, sandbox, {"image_list": images([url], basic_editing="yes")})
    assert reply.status == 400
    assert reply.error()["param"] == "image_list[0].basic_editing"

    reply = await create_order(http, sandbox, {"image_list": images([url], service="painting")})
    assert reply.status == 400
    assert reply.error()["code"] == "invalid_option"

    for raw in (b'{"image_list": [', b"[1, 2]", b""):
        malformed = await call(
            http,
            "POST",
            sandbox.base_url + "/v2/orders",
            headers=auth(sandbox, {"Content-Type": "application/json"}),
            data=raw,
        )
        assert malformed.status == 400, raw
        assert malformed.error()["code"] == "invalid_json"

    # Unknown option names pass through untouched.
    ok = await create_order(http, sandbox, {"image_list": images([url], sky_replacement="blue")})
    assert ok.status == 200, ok.body
    view = (await get_order(http, sandbox, ok.json()["orderID"])).json()
    assert view["image_list"][0]["options"] == {"sky_replacement": "blue"}


async def test_unknown_order_and_wrong_method(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    unknown = await get_order(http, sandbox, "1675563636373")
    assert unknown.status == 404
    assert unknown.error()["code"] == "order_not_found"

    wrong_method = await call(
        http, "DELETE", sandbox.base_url + "/v2/orders", headers=auth(sandbox)
    )
    assert wrong_method.status == 405
    assert wrong_method.error()["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]

    no_route = await call(http, "GET", sandbox.base_url + "/v3/nothing", headers=auth(sandbox))
    assert no_route.status == 404
    no_route.error()


async def test_order_beyond_the_credit_is_declined_with_402(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(keys={"sandbox-key": KeyConfig(credit_images=1)})
    urls = await upload(http, sandbox, [b"one", b"two"])
    declined = await create_order(http, sandbox, {"image_list": images(urls)})
    assert declined.status == 402
    assert declined.error()["code"] == "order_declined"
    ok = await create_order(http, sandbox, {"image_list": images(urls[:1])})
    assert ok.status == 200, ok.body
    assert (await create_order(http, sandbox, {"image_list": images(urls[1:])})).status == 402


async def test_read_only_key_gets_403_on_post(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(keys={"viewer-key": KeyConfig(read_only=True)})
    viewer = {"api-key": "viewer-key"}
    body = {"files": [file_spec(10)]}
    refused = await call(
        http, "POST", sandbox.base_url + "/v2/upload-urls", headers=viewer, json=body
    )
    assert refused.status == 403
    assert refused.error()["code"] == "permission_denied"
    refused = await call(
        http, "POST", sandbox.base_url + "/v2/orders", headers=viewer, json={"image_list": []}
    )
    assert refused.status == 403
    # Reading is allowed, and the writer key still writes.
    read = await call(http, "GET", sandbox.base_url + "/v2/orders/123", headers=viewer)
    assert read.status == 404
    assert len(await upload_urls(http, sandbox, body["files"])) == 1


async def test_required_version_header(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(required_version="2024-09-11")
    url = sandbox.base_url + "/v2/upload-urls"
    body = {"files": [file_spec(10)]}

    missing = await call(http, "POST", url, headers=auth(sandbox), json=body)
    assert missing.status == 400
    assert missing.error()["param"] == "Styldod-Version"

    wrong = await call(
        http, "POST", url, headers=auth(sandbox, {"Styldod-Version": "2023-01-01"}), json=body
    )
    assert wrong.status == 400
    assert wrong.error()["param"] == "Styldod-Version"

    right = await call(
        http, "POST", url, headers=auth(sandbox, {"Styldod-Version": "2024-09-11"}), json=body
    )
    assert right.status == 200, right.body


# -- 12. fault injection -------------------------------------------------------------------------


async def test_injected_api_5xx(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(faults=Faults(api_5xx=1.0))
    for _ in range(5):
        reply = await call(
            http,
            "POST",
            sandbox.base_url + "/v2/upload-urls",
            headers=auth(sandbox),
            json={"files": [file_spec(10)]},
        )
        assert reply.status in {500, 502, 503, 504}
        reply.error()
    entries = sandbox.log.select(kind="api")
    assert len(entries) == 5
    assert {e.fault for e in entries} == {"5xx"}


async def test_injected_storage_503(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(faults=Faults(storage_5xx=1.0))
    (slot,) = await upload_urls(http, sandbox, [file_spec(5)])
    reply = await put(http, slot["upload_url"], b"hello")
    assert reply.status == 503
    assert s3_code(reply.body) == "ServiceUnavailable"
    (entry,) = sandbox.log.select(kind="storage")
    assert entry.fault == "ServiceUnavailable"
    assert (await call(http, "HEAD", direct_url(sandbox, "HEAD", slot["image_url"]))).status == 404


async def test_injected_connection_reset(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(faults=Faults(storage_reset=1.0))
    body = os.urandom(512 * 1024)
    (slot,) = await upload_urls(http, sandbox, [file_spec(len(body))])
    with pytest.raises((aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        await put(http, slot["upload_url"], body)

    def reset_logged() -> bool:
        return any(e.fault == "reset" and e.status for e in sandbox.log.select(kind="storage"))

    await wait_until(reset_logged)
    entries = sandbox.log.select(kind="storage")
    assert {e.fault for e in entries} == {"reset"}
    for entry in entries:
        assert entry.error_code == "ConnectionReset"
        assert 0 < entry.bytes_in < len(body)
    assert (await call(http, "HEAD", direct_url(sandbox, "HEAD", slot["image_url"]))).status == 404


async def test_injected_latency_shows_in_the_log(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    sandbox = await sandbox_factory(faults=Faults(latency_ms=150))
    (slot,) = await upload_urls(http, sandbox, [file_spec(5)])
    assert (await put(http, slot["upload_url"], b"hello")).status == 200
    (api,) = sandbox.log.select(kind="api")
    (storage,) = sandbox.log.select(kind="storage")
    assert api.duration_ms >= 150
    assert storage.duration_ms >= 150


async def test_faults_are_mutable_over_http(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    faults_url = sandbox.base_url + "/_sandbox/faults"
    upload_call = sandbox.base_url + "/v2/upload-urls"
    files = {"files": [file_spec(5)]}

    assert (await call(http, "POST", upload_call, headers=auth(sandbox), json=files)).status == 200
    changed = await call(http, "POST", faults_url, json={"api_5xx": 1.0, "storage_5xx": 1})
    assert changed.status == 200
    assert changed.json()["api_5xx"] == 1.0
    assert sandbox.faults.api_5xx == 1.0
    failing = await call(http, "POST", upload_call, headers=auth(sandbox), json=files)
    assert failing.status >= 500

    assert (await call(http, "POST", faults_url, json={"api_5xx": 0})).status == 200
    (slot,) = await upload_urls(http, sandbox, [file_spec(5)])
    assert (await put(http, slot["upload_url"], b"hello")).status == 503

    # An invalid setting is refused and changes nothing.
    for bad in ({"storage_5xx": 2}, {"api_5xx": "often"}, {"no_such_fault": 1}):
        refused = await call(http, "POST", faults_url, json=bad)
        assert refused.status == 400, (bad, refused.body)
        refused.error()
    assert sandbox.faults == Faults(storage_5xx=1.0)

    assert (await call(http, "POST", faults_url, json={"storage_5xx": 0})).status == 200
    assert (await put(http, slot["upload_url"], b"hello")).status == 200


# -- 13. the request log -------------------------------------------------------------------------


async def test_request_log_records_requests_and_never_the_key(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key, secret = "sk_live_Zq8vPpA1", "shh-Secret-77"
    log_path = tmp_path / "log.jsonl"
    sandbox = await sandbox_factory(
        api_key=key, keys={key: KeyConfig(secret=secret)}, log_path=log_path
    )
    body = os.urandom(70_000)
    (slot,) = await upload_urls(http, sandbox, [file_spec(len(body))])
    assert (await put(http, slot["upload_url"], body)).status == 200
    basic = {"Authorization": basic_auth(key, secret)}
    created = await call(
        http,
        "POST",
        sandbox.base_url + "/v2/orders",
        headers={**basic, "Idempotency-Key": "idem-1"},
        json={"image_list": images([slot["image_url"]])},
    )
    assert created.status == 200, created.body
    assert (await call(http, "GET", sandbox.base_url + "/v2/orders/x")).status == 401

    entries = sandbox.log.entries
    assert [(e.kind, e.method, e.path, e.status) for e in entries] == [
        ("api", "POST", "/v2/upload-urls", 200),
        ("storage", "PUT", urlsplit(slot["upload_url"]).path, 200),
        ("api", "POST", "/v2/orders", 200),
        ("api", "GET", "/v2/orders/x", 401),
    ]
    assert entries[1].bytes_in == len(body)
    assert entries[1].headers["Content-Type"] == JPEG
    assert [e.idempotency_key for e in entries] == [None, None, "idem-1", None]
    assert entries[2].order_id == created.json()["orderID"]
    assert entries[3].error_code == "missing_api_key"
    assert entries[0].key_fingerprint is not None
    assert entries[0].key_fingerprint == entries[2].key_fingerprint

    dumped = orjson.dumps(sandbox.log.as_dicts())
    for leaked in (key, secret, basic["Authorization"].split()[1]):
        assert leaked.encode() not in dumped

    lines = log_path.read_bytes().splitlines()
    assert len(lines) == len(entries)
    from_file = [orjson.loads(line) for line in lines]
    assert from_file == sandbox.log.as_dicts()
    for leaked in (key, secret):
        assert leaked.encode() not in log_path.read_bytes()


async def test_seaweedfs_starts_on_fresh_ports_when_a_chosen_port_is_taken() -> None:
    """Another process can take a chosen port before SeaweedFS binds it; the start must survive."""
    storage = SeaweedS3()
    taken = storage._ports["s3.port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        async with storage, aiohttp.ClientSession() as http:
            assert storage.endpoint != f"http://127.0.0.1:{taken}"
            async with http.get(storage.endpoint + "/") as resp:
                assert resp.status == 403  # unsigned: the S3 gateway is serving
