"""The exception tree: one class per failure a caller handles differently.

``StyldodError``
 ├─ ``RunAborted``              the run stopped as a whole; carries its ``cause`` and the
 │                              ``report`` of what was done
 ├─ ``ConfigurationError``      bad settings or arguments; nothing was sent (exit 2)
 │   └─ ``LedgerError``         the ledger cannot be used as it is: another account's,
 │       │                      corrupt (by an integrity check), a role without privileges
 │       └─ ``LedgerFailure``   the ledger could not record what the run did (full disk,
 │           │                  busy or away too long, a write that failed): the run stops
 │           │                  and names what was not recorded (exit 5, never 2)
 │           ├─ ``LedgerFull``  no space left for the ledger
 │           └─ ``LedgerUnavailable`` locked or unreachable for longer than its bound
 ├─ ``InputError``              one input file cannot be used; the batch goes on
 ├─ ``NetworkError``            no (valid) HTTP answer: refused, reset, timed out: retryable
 │   └─ ``ServiceUnreachable``  the API never answered this run at all (exit 4)
 ├─ ``ProtocolError``           the API answered, but not as the contract says (not JSON,
 │                              wrong shape, no orderID, too large): not retryable
 ├─ ``IntegrityError``          storage stored something other than what was sent: retryable
 ├─ ``StorageError``            a PUT to a pre-signed URL failed: that file's problem alone,
 │   │                          never the run's (other 3xx/4xx answers: not retryable)
 │   ├─ ``UploadURLExpired``    403 "Request has expired": fetch a new URL and retry
 │   ├─ ``StorageAccessDenied`` 401/403 (signature mismatch, access denied): that file fails
 │   ├─ ``StorageNotFound``     404 (no such bucket): that file fails
 │   ├─ ``StorageRateLimited``  429, or 503 SlowDown: retryable after ``retry_after``
 │   ├─ ``StorageServerError``  other 5xx: retryable
 │   └─ ``UnsafeUploadURL``     a URL that cannot be sent as signed (control characters,
 │                              user info, not http(s), a redirect elsewhere): never sent
 └─ ``APIError``                the Order API answered with an error status
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

Storage errors are deliberately not ``APIError``s: the engine stops the run on the Order
API's 401/403 (``AuthenticationError``, ``PermissionDenied``), and a refused pre-signed URL
must not do that. Messages never contain the API key or secret.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from styldod_batch.report import Report


class StyldodError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(StyldodError):
    """Settings or arguments are invalid; raised before anything is sent."""


class LedgerError(ConfigurationError):
    """The ledger cannot be used as it is (corrupt, or another account's)."""


class LedgerFailure(LedgerError):
    """The ledger could not record what the run did: the run stops, naming what was not
    recorded. A ``LedgerError`` so that whatever stops a run on a broken ledger stops it on
    this too; the command line exits 5 for it, not 2 (nothing is wrong with the arguments)."""


class LedgerFull(LedgerFailure):
    """No space left on the device that holds the ledger."""


class LedgerUnavailable(LedgerFailure):
    """The ledger stayed locked (another process) or unreachable (its server) past the bound."""


class InputError(StyldodError):
    """One input file cannot be uploaded (missing, unreadable, empty, not an image...)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NetworkError(StyldodError):
    """The request got no valid HTTP answer: connection refused or reset, or a timeout."""

    retryable = True


class ServiceUnreachable(NetworkError):
    """The Order API could not be reached at all (a closed port, an unknown host): not one
    answer this run. Later in a job, the same faults are retried as transient."""

    retryable = False

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"the service could not be reached at {host}: {reason}")
        self.host = host


class RunAborted(StyldodError):
    """A failure that stops the whole run (the key refused, the service unreachable): carries
    the ``cause`` and the ``report`` of what was done so far."""

    def __init__(self, cause: StyldodError, report: Report) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.report = report


class ProtocolError(StyldodError):
    """The API answered, but not as the contract says: sending it again would not help."""

    retryable = False


class IntegrityError(StyldodError):
    """Storage acknowledged a body other than the one sent (ETag is not the body's MD5)."""

    retryable = True


class StorageError(StyldodError):
    """A PUT to a pre-signed URL failed; it concerns that one file, never the whole run."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        code = f" {self.code}" if self.code else ""
        return f"storage HTTP {self.status}{code}: {self.message}"


class UploadURLExpired(StorageError):
    """Storage refused a pre-signed URL as expired; a fresh URL is needed."""

    retryable = True


class StorageAccessDenied(StorageError):
    """401/403: storage refused this URL (bad signature, access denied); the file fails."""


class StorageNotFound(StorageError):
    """404: the URL names no bucket storage knows; the file fails."""


class StorageRateLimited(StorageError):
    """429 or 503 SlowDown: retry after ``retry_after`` seconds, and slow down."""

    retryable = True


class StorageServerError(StorageError):
    """5xx (or S3's 400 RequestTimeout): storage failed; retry with backoff."""

    retryable = True


class UnsafeUploadURL(StorageError):
    """A URL that cannot be sent exactly as signed, or a redirect to one; nothing was sent."""


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


def is_rate_limited(exc: BaseException) -> bool:
    """A 429 (or S3's SlowDown): the whole budget should pause, not just this request."""
    return isinstance(exc, RateLimited | StorageRateLimited)


def server_wait_s(exc: BaseException) -> float | None:
    """How long the server asked to wait before a retry (its ``Retry-After``), if it did."""
    if isinstance(exc, APIError | StorageError):
        return exc.retry_after
    return None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date (a past one is 0).

    Garbage, a negative number, infinity or NaN mean no usable value: None. Not capped here;
    whoever waits caps it (``RetryPolicy.max_server_wait_s``, ``RateBudget.max_pause_s``).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
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


def storage_error(status: int, body: bytes, retry_after: str | None) -> StyldodError:
    """Map storage's error answer to a PUT (an S3 XML ``<Error>``, or anything) to its
    exception: a ``StorageError``, or an ``IntegrityError`` when the body arrived damaged."""
    code = _xml_field(body, "Code")
    message = _xml_field(body, "Message") or code or f"HTTP {status}"
    wait = parse_retry_after(retry_after)
    if status == 400 and code in ("BadDigest", "IncompleteBody"):
        return IntegrityError(f"storage HTTP {status} {code}: {message}")
    cls: type[StorageError] = StorageError
    if status == 403 and "expired" in message.lower():
        cls = UploadURLExpired
    elif status in (401, 403):
        cls = StorageAccessDenied
    elif status == 404:
        cls = StorageNotFound
    elif status == 429 or (status == 503 and code == "SlowDown"):
        cls = StorageRateLimited
    elif status >= 500 or (status == 400 and code == "RequestTimeout"):
        cls = StorageServerError
    return cls(message, status=status, code=code, retry_after=wait)


def _xml_field(body: bytes, name: str) -> str | None:
    start = body.find(f"<{name}>".encode())
    end = body.find(f"</{name}>".encode(), start + 1)
    if start < 0 or end < 0:
        return None
    text = body[start + len(name) + 2 : end].decode(errors="replace").strip()
    return text[:500] or None
