"""The sandbox's Order API (``../shared/styldod-api.md``) as an aiohttp application."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import itertools
import math
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
from aiohttp import web

from styldod_batch.contract import OPTION_TYPES, SERVICES
from styldod_batch.errors import ConfigurationError
from styldod_batch.identity import key_label
from styldod_batch.sandbox.config import Faults, KeyConfig, SandboxConfig
from styldod_batch.sandbox.gateway import STREAM_CHUNK, URLRevocations
from styldod_batch.sandbox.lifecycle import Lifecycle, SandboxImage, SandboxOrder
from styldod_batch.sandbox.presign import Presigner
from styldod_batch.sandbox.requestlog import LogEntry, RequestLog
from styldod_batch.sandbox.sigv4 import object_path

IMAGE_RESERVED_FIELDS = frozenset({"client_image_id", "image_urls", "sequence"})
IDEMPOTENCY_TTL_S = 24 * 3600
MAX_OBJECT_BYTES = 5 * 1024**3  # S3's limit for a single PUT
ENTRY_KEY = web.RequestKey("log_entry", LogEntry)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class APIFailure(Exception):
    """Raised by handlers; becomes the contract's JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": {"code": self.code, "message": self.message, "param": self.param}}
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


def resolve_options(
    global_options: dict[str, Any], apply_to_all: dict[str, Any], image_options: dict[str, Any]
) -> dict[str, Any]:
    """The server's precedence: image > apply_to_all > global; a null value sets nothing."""
    effective: dict[str, Any] = {}
    for level in (global_options, apply_to_all, image_options):
        for name, value in level.items():
            if value is not None:
                effective[name] = value
    return effective


class SlidingWindow:
    """At most ``limit`` accepted requests in any sliding window of ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._accepted: deque[float] = deque()

    def try_acquire(self, now: float) -> float | None:
        """None when accepted, else the seconds until a place frees up."""
        while self._accepted and now - self._accepted[0] >= self.window_s:
            self._accepted.popleft()
        if len(self._accepted) < self.limit:
            self._accepted.append(now)
            return None
        return self._accepted[0] + self.window_s - now


@dataclass(slots=True)
class UploadSlot:
    object_key: str
    size: int
    content_type: str


@dataclass(slots=True)
class IdempotentResult:
    body_hash: str
    created: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0
    body: bytes = b""


class OrderAPI:
    def __init__(
        self,
        config: SandboxConfig,
        *,
        presigner: Presigner,
        log: RequestLog,
        lifecycle: Lifecycle,
        revocations: URLRevocations,
        stored: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        # What the storage gateway saw S3 store (object path -> size): an image found there
        # with its announced size needs no HEAD. Fifty HEADs at once held the event loop for
        # up to 70 ms on a loaded machine, stamping the PUTs that arrived meanwhile late.
        self.stored: Mapping[str, int] = stored if stored is not None else {}
        self.contract = config.contract
        self.faults: Faults = config.faults
        self.keys: dict[str, KeyConfig] = config.key_configs()
        self.presigner = presigner
        self.log = log
        self.lifecycle = lifecycle
        self.revocations = revocations
        self.uploads: dict[str, UploadSlot] = {}
        self.orders: dict[str, SandboxOrder] = {}
        self.images_ordered: dict[str, int] = {}
        self._windows: dict[str, SlidingWindow] = {}
        # Which key each upload URL was issued to: storage's requests count against it.
        self.keys_by_object: dict[str, str] = {}
        self._idempotency: dict[tuple[str, str], IdempotentResult] = {}
        self._order_ids = itertools.count(int(time.time() * 1000))
        self._http: aiohttp.ClientSession | None = None

    # -- application -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024**2)
        c = self.contract
        app.router.add_post(c.upload_urls_path, self.upload_urls)
        app.router.add_post(c.orders_path, self.create_order)
        app.router.add_get(c.order_path.replace("{order_id}", "{order_id}"), self.get_order)
        app.router.add_get("/outputs/{order_id}/{token}/{index}", self.output)
        app.router.add_get("/_sandbox/log", self.control_log)
        app.router.add_post("/_sandbox/expire-upload-urls", self.control_expire)
        app.router.add_post("/_sandbox/faults", self.control_faults)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def _close(self, _app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        kind = (
            "control"
            if path.startswith("/_sandbox/")
            else ("output" if path.startswith("/outputs/") else "api")
        )
        entry = self.log.start(kind, request.method, path)
        entry.idempotency_key = request.headers.get(self.contract.idempotency_header)
        for name in ("Content-Type", "Content-Length", self.contract.version_header):
            if name in request.headers:
                entry.headers[name] = request.headers[name]
        request[ENTRY_KEY] = entry
        try:
            if kind == "api":
                response = await self._guarded(request, handler, entry)
            else:
                response = await handler(request)
        except APIFailure as failure:
            entry.error_code = failure.code
            response = failure.response()
        except web.HTTPException as exc:
            status = exc.status
            code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
            entry.error_code = code
            # A 405 must say which methods the resource allows (RFC 9110, 15.5.6).
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = APIFailure(status, code, exc.reason, headers=allow).response()
        except ConnectionResetError:
            entry.status = 499
            self.log.finish(entry)
            raise
        entry.status = response.status
        if "Retry-After" in response.headers:
            entry.headers["Retry-After"] = response.headers["Retry-After"]
        self.log.finish(entry)
        return response

    async def _guarded(
        self, request: web.Request, handler: Handler, entry: LogEntry
    ) -> web.StreamResponse:
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        key = self._authenticate(request)
        entry.key_fingerprint = key_label(key)
        self._check_version(request)
        wait = self.window_wait(key, entry.mono)
        if wait is not None:
            raise APIFailure(
                429,
                "rate_limited",
                f"More than {self.config.rps} requests in one second.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        roll = random.random()
        if faults.take_next("api_429_next") or roll < faults.api_429:
            entry.fault = "429"
            raise APIFailure(
                429,
                "rate_limited",
                "Injected rate limit.",
                headers={"Retry-After": faults.next_retry_after()},
            )
        roll -= faults.api_429
        if roll < faults.api_5xx:
            entry.fault = "5xx"
            status = random.choice((500, 502, 503, 504))
            raise APIFailure(status, "server_error", "Injected server fault.")
        roll -= faults.api_5xx
        if roll < faults.api_reset and request.can_read_body:
            entry.fault = "reset"
            await request.content.read(max(1, (request.content_length or 2) // 2))
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("injected connection reset")
        if request.method == "POST" and self.keys[key].read_only:
            raise APIFailure(403, "permission_denied", "This API key is read-only.")
        return await handler(request)

    def window_wait(self, key: str, now: float) -> float | None:
        """Count one request of ``key`` (None), or say how long until its window has room."""
        window = self._windows.setdefault(key, SlidingWindow(self.config.rps))
        return window.try_acquire(now)

    def _authenticate(self, request: web.Request) -> str:
        key = request.headers.get(self.contract.api_key_header)
        if key is None:
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                try:
                    user, _, secret = (
                        base64.b64decode(auth[6:], validate=True).decode().partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    user = secret = ""
                config = self.keys.get(user)
                if config is not None and secrets.compare_digest(secret, config.secret):
                    return user
                raise APIFailure(401, "invalid_credentials", "Invalid API key or secret.")
            raise APIFailure(
                401,
                "missing_api_key",
                f"Provide the {self.contract.api_key_header} header or HTTP Basic.",
            )
        if key not in self.keys:
            raise APIFailure(401, "invalid_api_key", "The API key is invalid or expired.")
        return key

    def _check_version(self, request: web.Request) -> None:
        required = self.config.required_version
        if required is None:
            return
        name = self.contract.version_header
        sent = request.headers.get(name)
        if sent is None:
            raise APIFailure(400, "version_required", f"The {name} header is required.", name)
        if sent != required:
            raise APIFailure(
                400, "unsupported_version", f"API version {sent} is not supported.", name
            )

    # -- endpoints ---------------------------------------------------------------------------

    async def upload_urls(self, request: web.Request) -> web.Response:
        key = self._authenticate(request)
        body = await _json_object(request)
        files = body.get("files")
        if not isinstance(files, list) or not files:
            raise APIFailure(400, "missing_parameter", "'files' must be a non-empty list.", "files")
        limit = self.contract.max_files_per_upload_call
        if len(files) > limit:
            raise APIFailure(400, "too_many_files", f"At most {limit} files per call.", "files")
        ttl = self.config.url_ttl_s
        expires_at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        batch = uuid.uuid4().hex[:12]
        out = []
        accepted: list[tuple[str, str, int, str]] = []
        for i, item in enumerate(files):
            param = f"files[{i}]"
            if not isinstance(item, dict):
                raise APIFailure(400, "invalid_parameter", "Each file must be an object.", param)
            name, ctype, size = (
                item.get("file_name"),
                item.get("content_type"),
                item.get("content_length"),
            )
            if not isinstance(name, str) or not name.strip():
                raise APIFailure(
                    400, "missing_parameter", "file_name is required.", param + ".file_name"
                )
            if ctype not in self.contract.content_types:
                raise APIFailure(
                    422,
                    "unsupported_content_type",
                    f"content_type {ctype!r} is not accepted.",
                    param + ".content_type",
                )
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 1
                or size > MAX_OBJECT_BYTES
            ):
                raise APIFailure(
                    400,
                    "invalid_parameter",
                    "content_length must be a positive integer up to 5 GiB.",
                    param + ".content_length",
                )
            object_key = f"uploads/{batch}/{i}/{name.lstrip('/')}"
            accepted.append((name, str(ctype), size, object_key))
        for name, ctype, size, object_key in accepted:
            upload_url = self.presigner.upload_url(object_key, ctype, ttl)
            image_url = self.presigner.object_url(object_key)
            self.keys_by_object[object_key] = key
            query = parse_qs(urlsplit(upload_url).query)
            self.revocations.issued(query["X-Amz-Date"][0], query["X-Amz-Signature"][0])
            self.uploads[image_url] = UploadSlot(object_key, size, ctype)
            out.append(
                {
                    "file_name": name,
                    "upload_url": upload_url,
                    "image_url": image_url,
                    "expires_at": expires_at,
                }
            )
        return _json({"upload_urls": out})

    async def create_order(self, request: web.Request) -> web.Response:
        response = await self._idempotent_create(request)
        if response.status == 200 and random.random() < self.faults.order_answer_lost:
            request[ENTRY_KEY].fault = "answer_lost"
            raise APIFailure(503, "server_error", "Injected: the order exists, its answer is lost.")
        return response

    async def _idempotent_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        key = self._authenticate(request)
        idem_key = request.headers.get(self.contract.idempotency_header)
        if not idem_key:
            return await self._create_order(request, key, raw)
        body_hash = hashlib.sha256(raw).hexdigest()
        slot = (key, idem_key)
        record = self._idempotency.get(slot)
        if record is not None and time.time() - record.created > IDEMPOTENCY_TTL_S:
            record = None
        if record is not None:
            if record.body_hash != body_hash:
                raise APIFailure(
                    409,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request body.",
                    self.contract.idempotency_header,
                )
            await record.done.wait()
            if record.status:
                request[ENTRY_KEY].replayed = True
                return web.Response(
                    status=record.status,
                    body=record.body,
                    content_type="application/json",
                    headers={self.contract.replayed_header: "true"},
                )
        record = IdempotentResult(body_hash=body_hash, created=time.time())
        self._idempotency[slot] = record
        try:
            response = await self._create_order(request, key, raw)
        except APIFailure as failure:
            if failure.status < 500 and failure.status != 429:
                record.status, record.body = failure.status, failure.response().body  # type: ignore[assignment]
            else:
                del self._idempotency[slot]
            raise
        except BaseException:
            del self._idempotency[slot]
            raise
        finally:
            record.done.set()
        record.status, record.body = response.status, response.body  # type: ignore[assignment]
        return response

    async def _create_order(self, request: web.Request, key: str, raw: bytes) -> web.Response:
        body = _parse_object(raw)
        max_images = self.contract.max_images_per_order
        image_list = body.get("image_list")
        if not isinstance(image_list, list) or not image_list:
            raise APIFailure(
                400, "missing_parameter", "'image_list' must be a non-empty list.", "image_list"
            )
        if len(image_list) > max_images:
            raise APIFailure(
                400, "too_many_images", f"At most {max_images} images per order.", "image_list"
            )
        order_name = body.get("order_name")
        if order_name is not None and not isinstance(order_name, str):
            raise APIFailure(400, "invalid_parameter", "order_name must be a string.", "order_name")
        webhook_url = body.get("webhook_url")
        if webhook_url is not None and (
            not isinstance(webhook_url, str)
            or urlsplit(webhook_url).scheme not in ("http", "https")
        ):
            raise APIFailure(
                400, "invalid_parameter", "webhook_url must be an http(s) URL.", "webhook_url"
            )
        apply_to_all = body.get("apply_to_all") or {}
        if not isinstance(apply_to_all, dict):
            raise APIFailure(
                400, "invalid_parameter", "apply_to_all must be an object.", "apply_to_all"
            )
        _check_options(apply_to_all, "apply_to_all")
        key_config = self.keys[key]
        seen_ids: set[str] = set()
        images: list[SandboxImage] = []
        to_check: list[tuple[str, str]] = []
        for i, item in enumerate(image_list):
            param = f"image_list[{i}]"
            if not isinstance(item, dict):
                raise APIFailure(400, "invalid_parameter", "Each image must be an object.", param)
            client_id = item.get("client_image_id")
            if not isinstance(client_id, str) or not client_id:
                raise APIFailure(
                    400,
                    "missing_parameter",
                    "client_image_id is required.",
                    param + ".client_image_id",
                )
            if client_id in seen_ids:
                raise APIFailure(
                    400,
                    "duplicate_client_image_id",
                    f"client_image_id {client_id!r} appears twice.",
                    param + ".client_image_id",
                )
            seen_ids.add(client_id)
            urls = item.get("image_urls")
            if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
                raise APIFailure(
                    400, "missing_parameter", "image_urls must list URLs.", param + ".image_urls"
                )
            sequence = item.get("sequence")
            if sequence is not None and (
                not isinstance(sequence, int) or isinstance(sequence, bool)
            ):
                raise APIFailure(
                    400, "invalid_parameter", "sequence must be an integer.", param + ".sequence"
                )
            image_options = {k: v for k, v in item.items() if k not in IMAGE_RESERVED_FIELDS}
            _check_options(image_options, param)
            keys = []
            for j, url in enumerate(urls):
                upload = self.uploads.get(url)
                if upload is None:
                    raise APIFailure(
                        422,
                        "image_not_uploaded",
                        f"{url} is not an upload URL issued to this key.",
                        f"{param}.image_urls[{j}]",
                    )
                keys.append(upload.object_key)
                to_check.append((url, f"{param}.image_urls[{j}]"))
            images.append(
                SandboxImage(
                    client_image_id=client_id,
                    image_urls=list(urls),
                    object_keys=keys,
                    sequence=sequence,
                    options=resolve_options(key_config.options, apply_to_all, image_options),
                    bad="error" in (client_id + " " + " ".join(keys)).lower(),
                )
            )
        await self._check_uploaded(to_check)
        credit = key_config.credit_images
        if credit is not None and self.images_ordered.get(key, 0) + len(images) > credit:
            raise APIFailure(
                402,
                "order_declined",
                "The order was declined: not enough image credit on this account.",
            )
        self.images_ordered[key] = self.images_ordered.get(key, 0) + len(images)
        order_id = str(next(self._order_ids))
        order = SandboxOrder(
            order_id=order_id,
            key=key,
            order_name=order_name,
            webhook_url=webhook_url or key_config.webhook_url,
            apply_to_all=apply_to_all,
            images=images,
        )
        self.orders[order_id] = order
        request[ENTRY_KEY].order_id = order_id
        self.lifecycle.begin(order)
        return _json(
            {
                "orderID": order_id,
                "order_status": order.status,
                "createdAt": order.created_at,
                "updatedAt": order.updated_at,
                "image_list": [image.public(with_options=False) for image in images],
            }
        )

    async def _check_uploaded(self, urls: list[tuple[str, str]]) -> None:
        """Every object must exist with exactly the size announced for it: as the storage
        gateway saw it stored, or else as S3 answers a HEAD."""
        assert self._http is not None
        http = self._http
        bucket = self.presigner.bucket
        urls = [
            (url, param)
            for url, param in urls
            if self.stored.get(object_path(bucket, self.uploads[url].object_key))
            != self.uploads[url].size
        ]
        limit = asyncio.Semaphore(4)  # a few at a time: the loop also stamps arrivals

        async def head(url: str, param: str) -> None:
            upload = self.uploads[url]
            async with limit, http.head(self.presigner.direct_url("HEAD", upload.object_key)) as r:
                if r.status == 404:
                    raise APIFailure(422, "image_not_uploaded", f"{url} was never uploaded.", param)
                if r.status != 200:
                    raise APIFailure(
                        503, "storage_unavailable", f"Storage answered {r.status} to a HEAD.", param
                    )
                if r.content_length != upload.size:
                    raise APIFailure(
                        422,
                        "image_not_uploaded",
                        f"{url} holds {r.content_length} bytes, {upload.size} were announced.",
                        param,
                    )

        # Not a TaskGroup: it would wrap the APIFailure in an ExceptionGroup (a 500). The
        # first failure in request order is the one reported, so its param is deterministic.
        results = await asyncio.gather(
            *(head(url, param) for url, param in urls), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def get_order(self, request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        key = self._authenticate(request)
        order = self.orders.get(order_id)
        if order is None or order.key != key:
            raise APIFailure(404, "order_not_found", f"No order {order_id}.", "orderID")
        return _json(order.view())

    async def output(self, request: web.Request) -> web.StreamResponse:
        """An edited output: the sandbox's "edit" returns the uploaded bytes unchanged."""
        assert self._http is not None
        order = self.orders.get(request.match_info["order_id"])
        try:
            index = int(request.match_info["index"])
        except ValueError:
            index = -1
        if (
            order is None
            or not secrets.compare_digest(request.match_info["token"], order.output_token)
            or not 0 <= index < len(order.images)
            or order.images[index].output_url is None
        ):
            raise APIFailure(404, "output_not_found", "No such output.")
        image = order.images[index]
        async with self._http.get(self.presigner.direct_url("GET", image.object_keys[0])) as up:
            if up.status != 200:
                raise APIFailure(503, "storage_unavailable", f"Storage answered {up.status}.")
            response = web.StreamResponse(status=200)
            response.content_type = self.uploads[image.image_urls[0]].content_type
            if up.content_length is not None:
                response.content_length = up.content_length
            if "ETag" in up.headers:
                response.headers["ETag"] = up.headers["ETag"]
            await response.prepare(request)
            async for chunk in up.content.iter_chunked(STREAM_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    # -- control (tests and benchmarks drive the sandbox in another process through these) --

    async def control_log(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.log.as_dicts()), content_type="application/json")

    async def control_expire(self, request: web.Request) -> web.Response:
        self.revocations.expire_all_now()
        return _json({"expired_before": self.revocations.before_second})

    async def control_faults(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        # Check every value on a copy first: a refused change leaves the faults untouched.
        changed = Faults(**{name: getattr(self.faults, name) for name in Faults.__slots__})
        for name, value in body.items():
            if name not in Faults.__slots__:
                raise APIFailure(400, "invalid_parameter", f"Unknown fault {name!r}.", name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise APIFailure(400, "invalid_parameter", f"{name} must be a number.", name)
            setattr(changed, name, float(value))
        try:
            changed.validate()
        except ConfigurationError as exc:
            raise APIFailure(400, "invalid_parameter", str(exc)) from exc
        for name in body:
            setattr(self.faults, name, getattr(changed, name))
        return _json({name: getattr(self.faults, name) for name in Faults.__slots__})


def _check_options(options: dict[str, Any], where: str) -> None:
    for name, value in options.items():
        expected = OPTION_TYPES.get(name)
        if expected is None or value is None:
            continue
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise APIFailure(
                400, "invalid_option", f"{name} must be a {expected.__name__}.", f"{where}.{name}"
            )
        if name == "service" and value not in SERVICES:
            raise APIFailure(
                400, "invalid_option", f"Unknown service {value!r}.", f"{where}.{name}"
            )


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIFailure(400, "invalid_json", f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise APIFailure(400, "invalid_json", "The body must be a JSON object.")
    return body


async def _json_object(request: web.Request) -> dict[str, Any]:
    return _parse_object(await request.read())


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")
