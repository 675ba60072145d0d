"""The exception tree: one class per failure a caller handles differently.

``StyldodError``
 ├─ ``ConfigurationError``      bad settings or arguments; nothing was sent (exit 2)
 ├─ ``InputError``              one input file cannot be used; the batch goes on
 ├─ ``NetworkError``            no HTTP answer (refused, reset, timed out): retryable
 ├─ ``IntegrityError``          storage stored something other than what was sent: retryable
 ├─ ``UploadURLExpired``        a pre-signed URL is past its expiry: fetch a new one
 └─ ``APIError``                the service answered with an error status
     ├─ ``BadRequest``          400
     ├─ ``AuthenticationError`` 401: the whole run stops (exit 3)
     ├─ ``RequestDeclined``     402: valid, but the service declined it (e.g. an order)
     ├─ ``PermissionDenied``    403
     ├─ ``NotFound``            404
     ├─ ``MethodNotAllowed``    405
     ├─ ``Conflict``            409: e.g. an idempotency key reused with another body
     ├─ ``UnprocessableEntity`` 422: e.g. an image URL that was never uploaded
     ├─ ``RateLimited``         429: retryable after ``retry_after``
     └─ ``ServerError``         5xx: retryable

Messages never contain the API key or secret.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import orjson


class StyldodError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(StyldodError):
    """Settings or arguments are invalid; raised before anything is sent."""


class InputError(StyldodError):
    """One input file cannot be uploaded (missing, unreadable, empty, not an image...)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NetworkError(StyldodError):
    """The request got no HTTP answer: connection refused or reset, or a timeout."""

    retryable = True


class IntegrityError(StyldodError):
    """Storage acknowledged a body other than the one sent (ETag is not the body's MD5)."""

    retryable = True


class UploadURLExpired(StyldodError):
    """Storage refused a pre-signed URL as expired; a fresh URL is needed."""

    retryable = True


class APIError(StyldodError):
    """The service answered with an error status; carries its code, message and field."""

    status: int = 0
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message}{where}"


class BadRequest(APIError):
    """400: a malformed or missing parameter."""

    status = 400


class AuthenticationError(APIError):
    """401: the API key is missing, invalid or expired. The whole run stops."""

    status = 401


class RequestDeclined(APIError):
    """402: the request was valid but the service declined it."""

    status = 402


class PermissionDenied(APIError):
    """403: the key lacks permission for this request."""

    status = 403


class NotFound(APIError):
    """404: no such resource."""

    status = 404


class MethodNotAllowed(APIError):
    """405: the method is not allowed on this resource (a bug on our side)."""

    status = 405


class Conflict(APIError):
    """409: conflicts with an earlier request, e.g. an idempotency key reused."""

    status = 409


class UnprocessableEntity(APIError):
    """422: valid syntax, invalid data (e.g. an image URL that was never uploaded)."""

    status = 422


class RateLimited(APIError):
    """429: too many requests; retry after ``retry_after`` seconds."""

    status = 429
    retryable = True


class ServerError(APIError):
    """5xx: the service failed; retry with backoff."""

    status = 500
    retryable = True


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    402: RequestDeclined,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    422: UnprocessableEntity,
    429: RateLimited,
}


def error_for_status(status: int) -> type[APIError]:
    """The exception class for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, APIError)


def is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = email.utils.parsedate_to_datetime(value) if value else None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def api_error(status: int, body: bytes, headers: Any, *, context: str) -> APIError:
    """Map an error answer to its exception, carrying the API's code, message and field."""
    code = param = None
    message = ""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        code = error.get("code")
        message = str(error.get("message") or "")
        param = error.get("param")
    if not message:
        message = body[:200].decode(errors="replace").strip() or f"HTTP {status}"
    cls = error_for_status(status)
    return cls(
        f"{context}: {message}",
        status=status,
        code=code,
        param=param,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )
