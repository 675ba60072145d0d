"""The error mapping, without a server: statuses and answers to classes, Retry-After."""

from __future__ import annotations

import email.utils
import inspect
import time

import pytest

from styldod_batch import errors
from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    IntegrityError,
    MethodNotAllowed,
    NetworkError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestDeclined,
    ServerError,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageRateLimited,
    StorageServerError,
    StyldodError,
    UnprocessableEntity,
    UnsafeUploadURL,
    UploadURLExpired,
    api_error,
    error_for_status,
    is_rate_limited,
    is_retryable,
    parse_retry_after,
    server_wait_s,
    storage_error,
)


def http_date(offset_s: float) -> str:
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("1e9", 1e9),  # a number, however large: whoever waits caps it
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a past date: now
        ("Mon, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: object) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_reads_a_future_http_date() -> None:
    wait = parse_retry_after(http_date(120))
    assert wait is not None
    assert 100 < wait <= 121
    far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 -0000")  # UTC, by RFC 5322
    assert far == pytest.approx(253402300799 - time.time(), abs=60)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, AuthenticationError),
        (402, RequestDeclined),
        (403, PermissionDenied),
        (404, NotFound),
        (405, MethodNotAllowed),
        (409, Conflict),
        (422, UnprocessableEntity),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
        (599, ServerError),
        (418, APIError),
    ],
)
def test_error_for_status(status: int, cls: type[APIError]) -> None:
    assert error_for_status(status) is cls


def test_api_error_carries_the_apis_code_message_and_field() -> None:
    body = b'{"error": {"code": "too_many_files", "message": "At most 50", "param": "files"}}'
    error = api_error(400, body, {}, context="POST /v2/upload-urls")
    assert type(error) is BadRequest
    assert (error.status, error.code, error.param) == (400, "too_many_files", "files")
    assert str(error) == "HTTP 400 too_many_files: POST /v2/upload-urls: At most 50 (files)"
    assert not is_retryable(error)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("2", 2.0), ("soon", None), ("nan", None), ("-1", None), (None, None)],
)
def test_api_error_429_retry_after_garbage_means_absent(
    retry_after: str | None, expected: float | None
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    error = api_error(429, b"", headers, context="GET /x")
    assert type(error) is RateLimited
    assert error.retry_after == expected
    assert is_retryable(error) and is_rate_limited(error)
    assert server_wait_s(error) == expected


def test_api_error_from_an_answer_that_is_not_json() -> None:
    error = api_error(502, b"<html>Bad gateway</html>", {}, context="GET /x")
    assert type(error) is ServerError
    assert "Bad gateway" in str(error)
    assert api_error(500, b"", {}, context="GET /x").message == "GET /x: HTTP 500"


def s3_error(code: str, message: str) -> bytes:
    return (
        f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message>"
        "<Resource>/b/k</Resource></Error>".encode()
    )


@pytest.mark.parametrize(
    ("status", "code", "message", "cls", "retryable"),
    [
        (403, "AccessDenied", "Request has expired", UploadURLExpired, True),
        (403, "SignatureDoesNotMatch", "The signature does not match", StorageAccessDenied, False),
        (403, "AccessDenied", "Access Denied", StorageAccessDenied, False),
        (401, "Unauthorized", "No", StorageAccessDenied, False),
        (404, "NoSuchBucket", "The bucket does not exist", StorageNotFound, False),
        (429, "SlowDown", "Reduce your request rate", StorageRateLimited, True),
        (503, "SlowDown", "Reduce your request rate", StorageRateLimited, True),
        (503, "ServiceUnavailable", "Try again", StorageServerError, True),
        (500, "InternalError", "Oops", StorageServerError, True),
        (400, "RequestTimeout", "Socket idle too long", StorageServerError, True),
        (411, "MissingContentLength", "Need Content-Length", StorageError, False),
        (301, "PermanentRedirect", "Use the regional endpoint", StorageError, False),
    ],
)
def test_storage_errors_by_status_and_s3_code(
    status: int, code: str, message: str, cls: type[StorageError], retryable: bool
) -> None:
    error = storage_error(status, s3_error(code, message), "4")
    assert type(error) is cls
    assert isinstance(error, StorageError)
    assert not isinstance(error, APIError), "the engine stops the run on APIError 401/403"
    assert is_retryable(error) is retryable
    assert (error.status, error.code, error.message) == (status, code, message)
    assert error.retry_after == 4.0
    assert str(error) == f"storage HTTP {status} {code}: {message}"


def test_a_damaged_body_is_an_integrity_error() -> None:
    for code in ("BadDigest", "IncompleteBody"):
        error = storage_error(400, s3_error(code, "Damaged"), None)
        assert type(error) is IntegrityError
        assert is_retryable(error)


def test_storage_error_without_xml_and_with_garbage_retry_after() -> None:
    error = storage_error(429, b"slow down!", "tomorrow")
    assert type(error) is StorageRateLimited
    assert error.retry_after is None
    assert str(error) == "storage HTTP 429: HTTP 429"
    assert is_rate_limited(error) and server_wait_s(error) is None


def test_classes_callers_recover_from_differently() -> None:
    assert is_retryable(NetworkError("x"))
    assert not is_retryable(ProtocolError("x"))
    assert not is_retryable(UnsafeUploadURL("x"))
    assert not issubclass(StorageError, APIError)
    assert issubclass(UploadURLExpired, StorageError)
    assert server_wait_s(NetworkError("x")) is None


def test_the_module_docstring_shows_every_class_of_the_tree() -> None:
    doc = errors.__doc__ or ""
    classes = [
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, StyldodError)
    ]
    assert len(classes) > 20
    missing = [name for name in classes if f"``{name}``" not in doc]
    assert missing == []
