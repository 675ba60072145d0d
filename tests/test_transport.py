"""Storage PUTs (``FileUploader``) against a hostile storage server on 127.0.0.1: keep-alive,
re-sends and redirects through the budget, deadlines, interim answers, unsafe URLs, proxies
from the environment, TLS, and errors scoped to the one file."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from styldod_batch.budget import RateBudget
from styldod_batch.errors import (
    APIError,
    IntegrityError,
    NetworkError,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageRateLimited,
    StorageServerError,
    UnsafeUploadURL,
    UploadURLExpired,
)
from styldod_batch.models import ImageItem, RequestCounters, UploadTarget
from styldod_batch.runtime import loop_factory, run_async
from styldod_batch.settings import RetryPolicy, Settings
from styldod_batch.storage import MAX_REDIRECTS, FileUploader
from tests.hostile_storage import Exchange, HostileStorage, md5_hex

SMALL = 64 * 1024  # files above this stream from disk in these tests
SIGNED = "/bucket/a%2Fb.jpg?X-Amz-Signature=ab%2Bcd&X-Amz-Expires=14400"


def settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": "http://127.0.0.1:1",
        "api_key": "k",
        "upload_rps": 0.0,
        "concurrency": 4,
        "small_file_bytes": SMALL,
        "stream_chunk_bytes": 16 * 1024,
        "storage_idle_timeout_s": 10.0,
    }
    return Settings(**{**values, **changes})


def make_item(tmp_path: Path, name: str, size: int) -> ImageItem:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    info = path.stat()
    return ImageItem(str(path), name, size, info.st_mtime_ns, "image/jpeg", "g")


def file_bytes(item: ImageItem) -> bytes:
    return Path(item.path).read_bytes()


def target(url: str) -> UploadTarget:
    return UploadTarget(url, url.split("?", 1)[0], "")


def uploader(
    budget: RateBudget | None = None, **changes: Any
) -> tuple[FileUploader, RequestCounters]:
    counters = RequestCounters()
    return FileUploader(settings(**changes), budget, counters), counters


async def test_puts_share_a_kept_alive_connection_and_urls_go_out_exactly_as_signed(
    tmp_path: Path,
) -> None:
    items = [make_item(tmp_path, f"f{n}.jpg", 1000 + n) for n in range(20)]
    budget = RateBudget(10_000)
    up, counters = uploader(budget)
    async with HostileStorage() as storage, up:
        for item in items:
            assert await up.put(item, target(storage.url(SIGNED))) == md5_hex(file_bytes(item))
    assert storage.connections == 1
    first = storage.requests[0]
    assert (first.method, first.target) == ("PUT", SIGNED)  # not re-encoded
    assert first.headers["host"] == f"127.0.0.1:{storage.port}"
    assert first.headers["content-type"] == "image/jpeg"
    assert first.headers["content-length"] == "1000"
    assert "content-md5" in first.headers
    assert "transfer-encoding" not in first.headers
    assert "expect" not in first.headers  # small bodies go at once
    assert [len(r.body) for r in storage.requests] == [1000 + n for n in range(20)]
    assert counters.storage == budget.granted == 20


async def test_a_request_dropped_on_a_reused_connection_is_sent_again_through_the_budget(
    tmp_path: Path,
) -> None:
    """aiohttp re-sends a PUT by itself when a kept-alive connection turns out dead; that
    attempt reaches the server too, so it takes a grant and is counted like any other."""

    async def drop_the_second(exchange: Exchange) -> None:
        if exchange.request.number == 2:
            await exchange.read_body()
            exchange.close_connection = True  # read, then dropped unanswered
            return
        await exchange.store()

    items = [make_item(tmp_path, f"f{n}.jpg", 100 + n) for n in range(3)]
    budget = RateBudget(10_000)
    up, counters = uploader(budget)
    async with HostileStorage(drop_the_second) as storage, up:
        for item in items:
            await up.put(item, target(storage.url("/b/k")))
    assert [len(r.body) for r in storage.requests] == [100, 101, 101, 102]
    assert storage.connections == 2
    assert counters.storage == budget.granted == len(storage.requests) == 4


async def test_a_large_file_streams_after_100_continue_with_its_content_length(
    tmp_path: Path,
) -> None:
    item = make_item(tmp_path, "big.jpg", 5 * SMALL + 7)
    up, _ = uploader()
    async with HostileStorage() as storage, up:
        md5 = await up.put(item, target(storage.url(SIGNED)))
    (request,) = storage.requests
    assert md5 == md5_hex(file_bytes(item)) == md5_hex(request.body)
    assert request.headers["expect"].lower() == "100-continue"
    assert request.headers["content-type"] == "image/jpeg"  # signed: not the stream's default
    assert request.headers["content-length"] == str(item.size)
    assert "transfer-encoding" not in request.headers
    assert "content-md5" not in request.headers


async def test_a_refusal_before_100_continue_costs_no_body(tmp_path: Path) -> None:
    async def refuse(exchange: Exchange) -> None:
        await exchange.refuse(403, "AccessDenied", "Access Denied")

    item = make_item(tmp_path, "big.jpg", 5 * SMALL)
    up, _ = uploader()
    async with HostileStorage(refuse) as storage, up:
        with pytest.raises(StorageAccessDenied):
            await up.put(item, target(storage.url("/b/k")))
    assert [r.body for r in storage.requests] == [b""]


@pytest.mark.parametrize(
    ("status", "code", "message", "expected", "retryable"),
    [
        (403, "SignatureDoesNotMatch", "The signature does not match", StorageAccessDenied, False),
        (403, "AccessDenied", "Access Denied", StorageAccessDenied, False),
        (403, "AccessDenied", "Request has expired", UploadURLExpired, True),
        (404, "NoSuchBucket", "The bucket does not exist", StorageNotFound, False),
        (429, "SlowDown", "Reduce your request rate", StorageRateLimited, True),
        (503, "SlowDown", "Reduce your request rate", StorageRateLimited, True),
        (500, "InternalError", "We encountered an internal error", StorageServerError, True),
        (400, "BadDigest", "The Content-MD5 you specified did not match", IntegrityError, True),
        (411, "MissingContentLength", "You must provide the Content-Length", StorageError, False),
    ],
)
async def test_storage_errors_are_storage_errors_never_the_apis(
    tmp_path: Path,
    status: int,
    code: str,
    message: str,
    expected: type[Exception],
    retryable: bool,
) -> None:
    """A refused pre-signed URL is that file's problem: never an ``APIError`` (whose 401 and
    403 stop the whole run)."""

    async def answer(exchange: Exchange) -> None:
        await exchange.read_body()
        await exchange.refuse(status, code, message, **{"Retry-After": "3"})

    item = make_item(tmp_path, "f.jpg", 100)
    up, counters = uploader()
    async with HostileStorage(answer) as storage, up:
        with pytest.raises(expected) as caught:
            await up.put(item, target(storage.url("/b/k")))
    error = caught.value
    assert not isinstance(error, APIError)
    assert type(error) is expected
    assert getattr(error, "retryable", False) is retryable
    assert message in str(error)
    if isinstance(error, StorageError):
        assert (error.status, error.code) == (status, code)
        assert error.retry_after == 3.0
    assert counters.rate_limited == (1 if status == 429 else 0)


@pytest.mark.parametrize("size", [1000, 5 * SMALL], ids=["in-memory", "streamed"])
@pytest.mark.parametrize("status", [307, 308])
async def test_a_temporary_redirect_is_followed_with_the_body_sent_again(
    tmp_path: Path, size: int, status: int
) -> None:
    """S3 answers PUTs to a new bucket with a 307 to its regional endpoint."""

    async def redirect_once(exchange: Exchange) -> None:
        if exchange.request.target.startswith("/old/"):
            # S3 reads (and drops) the body before it redirects; no 100 Continue is sent
            # for a streamed body, which then never leaves the client.
            if "expect" not in exchange.request.headers:
                await exchange.read_body()
            new_url = regional.url(SIGNED)
            await exchange.refuse(status, "TemporaryRedirect", "Redirect", Location=new_url)
            exchange.close_connection = True
            return
        await exchange.store()

    item = make_item(tmp_path, "f.jpg", size)
    budget = RateBudget(10_000)
    up, counters = uploader(budget)
    async with HostileStorage(redirect_once) as first, HostileStorage() as regional, up:
        md5 = await up.put(item, target(first.url("/old/k?X-Amz-Signature=1")))
    assert md5 == md5_hex(file_bytes(item))
    assert [r.target for r in regional.requests] == [SIGNED]
    assert regional.requests[0].body == file_bytes(item)
    assert counters.storage == budget.granted == 2  # each hop took a grant


async def test_redirects_are_bounded_and_a_relative_location_resolves(tmp_path: Path) -> None:
    async def loop(exchange: Exchange) -> None:
        await exchange.read_body()
        await exchange.reply(307, {"Location": "/again?X-Amz-Signature=2"})

    item = make_item(tmp_path, "f.jpg", 10)
    up, counters = uploader()
    async with HostileStorage(loop) as storage, up:
        with pytest.raises(StorageError, match="redirects"):
            await up.put(item, target(storage.url("/b/k")))
    assert len(storage.requests) == MAX_REDIRECTS + 1 == counters.storage
    assert storage.requests[-1].target == "/again?X-Amz-Signature=2"


async def test_an_answer_trickling_in_runs_into_the_attempt_deadline(tmp_path: Path) -> None:
    """One byte at a time, each well within the idle timeout: only a deadline on the whole
    attempt ends it."""

    async def trickle(exchange: Exchange) -> None:
        await exchange.read_body()
        for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 2000:
            await exchange.send(bytes([byte]))
            await asyncio.sleep(0.05)  # the hostile server's pace, not a wait for something

    item = make_item(tmp_path, "f.jpg", 100)
    policy = RetryPolicy(put_deadline_base_s=0.5, put_min_bytes_per_s=1e9)
    up, _ = uploader(retry=policy, storage_idle_timeout_s=5.0)
    async with HostileStorage(trickle) as storage, up:
        async with asyncio.timeout(60):  # guard: without a deadline this never ends
            with pytest.raises(NetworkError, match="Timeout"):
                await up.put(item, target(storage.url("/b/k")))


async def test_a_server_that_never_asks_for_the_body_runs_into_the_deadline(
    tmp_path: Path,
) -> None:
    item = make_item(tmp_path, "big.jpg", 5 * SMALL)
    policy = RetryPolicy(put_deadline_base_s=0.3, put_min_bytes_per_s=1e9)
    up, _ = uploader(retry=policy, storage_idle_timeout_s=60.0)
    async with HostileStorage(Exchange.hold) as storage, up:
        async with asyncio.timeout(60):
            with pytest.raises(NetworkError):
                await up.put(item, target(storage.url("/b/k")))


async def test_silence_after_the_body_is_an_idle_timeout(tmp_path: Path) -> None:
    async def read_then_hold(exchange: Exchange) -> None:
        await exchange.read_body()
        await exchange.hold()

    item = make_item(tmp_path, "f.jpg", 100)
    up, _ = uploader(storage_idle_timeout_s=0.3)
    async with HostileStorage(read_then_hold) as storage, up:
        with pytest.raises(NetworkError, match="Timeout"):
            await up.put(item, target(storage.url("/b/k")))


async def test_thousands_of_interim_answers_before_the_final_one(tmp_path: Path) -> None:
    async def flood(exchange: Exchange) -> None:
        body = await exchange.read_body()
        await exchange.send(b"HTTP/1.1 102 Processing\r\n\r\n" * 5000)
        await exchange.reply(200, {"ETag": f'"{md5_hex(body)}"'})

    item = make_item(tmp_path, "f.jpg", 100)
    up, _ = uploader()
    async with HostileStorage(flood) as storage, up:
        assert await up.put(item, target(storage.url("/b/k"))) == md5_hex(file_bytes(item))


@pytest.mark.parametrize(
    "unsafe",
    [
        "/b/k?X-Amz-Signature=1\r\nX-Injected: yes",
        "/b/k?X-Amz-Signature=1\nX-Injected: yes",
        "/b/k\x00?X-Amz-Signature=1",
        "/b/k with space?X-Amz-Signature=1",
    ],
)
async def test_a_url_with_control_characters_is_refused_and_never_sent(
    tmp_path: Path, unsafe: str
) -> None:
    item = make_item(tmp_path, "f.jpg", 10)
    up, counters = uploader()
    async with HostileStorage() as storage, up:
        with pytest.raises(UnsafeUploadURL) as caught:
            await up.put(item, target(storage.url(unsafe)))
        assert "X-Amz-Signature" not in str(caught.value)  # the signed URL is not quoted
    assert (storage.connections, counters.storage) == (0, 0)


async def test_a_url_with_user_info_is_refused_and_never_sent(tmp_path: Path) -> None:
    item = make_item(tmp_path, "f.jpg", 10)
    up, counters = uploader()
    async with HostileStorage() as storage, up:
        url = f"http://user:pw@127.0.0.1:{storage.port}/b/k?X-Amz-Signature=1"
        with pytest.raises(UnsafeUploadURL, match="user info") as caught:
            await up.put(item, target(url))
        assert "pw" not in str(caught.value)
    assert (storage.connections, counters.storage) == (0, 0)


async def test_puts_go_through_the_proxy_named_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy (itself a storage that stores what it gets) receives the absolute URL;
    nothing listens at the URL's own address."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    item = make_item(tmp_path, "f.jpg", 100)
    up, counters = uploader()
    async with HostileStorage() as proxy, up:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        url = "http://127.0.0.1:9" + SIGNED
        assert await up.put(item, target(url)) == md5_hex(file_bytes(item))
    (request,) = proxy.requests
    assert request.target == url
    assert counters.storage == 1


async def test_nothing_listening_is_a_network_error(tmp_path: Path) -> None:
    async with HostileStorage() as storage:
        url = storage.url(SIGNED)
    up, _ = uploader()
    async with up:
        with pytest.raises(NetworkError, match="Connect") as caught:
            await up.put(make_item(tmp_path, "f.jpg", 10), target(url))
    assert "Signature" not in str(caught.value)


async def test_a_wrong_etag_is_an_integrity_error(tmp_path: Path) -> None:
    async def wrong(exchange: Exchange) -> None:
        await exchange.read_body()
        await exchange.reply(200, {"ETag": '"00000000000000000000000000000000"'})

    up, _ = uploader()
    async with HostileStorage(wrong) as storage, up:
        with pytest.raises(IntegrityError, match="ETag"):
            await up.put(make_item(tmp_path, "f.jpg", 10), target(storage.url("/b/k")))


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, made with Debian's openssl."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_verifies_the_certificate_and_never_redirects_down_to_http(
    tmp_path: Path, self_signed: tuple[Path, Path]
) -> None:
    key, cert = self_signed
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    items = [make_item(tmp_path, f"f{n}.jpg", 100 + n) for n in range(2)]
    async with HostileStorage(tls=server_tls) as storage, HostileStorage() as plain:

        async def downgrade(exchange: Exchange) -> None:
            await exchange.read_body()
            await exchange.reply(307, {"Location": plain.url("/b/k")})

        counters = RequestCounters()
        async with FileUploader(settings(), None, counters, ssl_context=trusting) as up:
            for item in items:
                await up.put(item, target(storage.url("/b/k?X-Amz-Signature=1")))
            storage.script = downgrade
            with pytest.raises(UnsafeUploadURL, match="https to http"):
                await up.put(items[0], target(storage.url("/b/k?X-Amz-Signature=1")))
        default_trust, _ = uploader()
        async with default_trust:
            with pytest.raises(NetworkError, match="CERTIFICATE_VERIFY_FAILED"):
                await default_trust.put(items[0], target(storage.url("/b/k")))
    assert [len(r.body) for r in storage.requests[:2]] == [100, 101]
    assert {r.connection for r in storage.requests[:3]} == {1}  # one kept-alive TLS connection
    assert plain.requests == []


@pytest.mark.parametrize(
    "scenario",
    [
        test_puts_share_a_kept_alive_connection_and_urls_go_out_exactly_as_signed,
        test_a_request_dropped_on_a_reused_connection_is_sent_again_through_the_budget,
        test_a_large_file_streams_after_100_continue_with_its_content_length,
        test_thousands_of_interim_answers_before_the_final_one,
        test_silence_after_the_body_is_an_idle_timeout,
    ],
)
def test_the_same_on_uvloop(
    tmp_path: Path, scenario: Callable[[Path], Coroutine[Any, Any, None]]
) -> None:
    """The runner uses uvloop, whose transports are not asyncio's classes."""
    assert loop_factory() is not None
    run_async(scenario(tmp_path))
