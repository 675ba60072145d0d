"""styldod-batch: stream bulk image files into pre-signed PUTs and place Styldod orders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from styldod_batch.contract import Contract
from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    Conflict,
    InputError,
    IntegrityError,
    MethodNotAllowed,
    NetworkError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestDeclined,
    RunAborted,
    ServerError,
    ServiceUnreachable,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageRateLimited,
    StorageServerError,
    StyldodError,
    UnprocessableEntity,
    UnsafeUploadURL,
    UploadURLExpired,
)
from styldod_batch.models import ImageItem, ImageResult, OrderResult
from styldod_batch.report import Report
from styldod_batch.settings import RetryPolicy, Settings
from styldod_batch.version import __version__

if TYPE_CHECKING:
    from styldod_batch.engine import ManifestSource, Uploader, upload
    from styldod_batch.webhooks import WebhookReceiver

# The engine (and with it aiohttp, a quarter of a second to import) loads on first use, so
# a command that never talks to the API starts fast.
_LAZY = {
    "ManifestSource": "styldod_batch.engine",
    "Uploader": "styldod_batch.engine",
    "upload": "styldod_batch.engine",
    "WebhookReceiver": "styldod_batch.webhooks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'styldod_batch' has no attribute {name!r}")


__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "Contract",
    "ImageItem",
    "ImageResult",
    "InputError",
    "IntegrityError",
    "ManifestSource",
    "MethodNotAllowed",
    "NetworkError",
    "NotFound",
    "OrderResult",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "Report",
    "RequestDeclined",
    "RetryPolicy",
    "RunAborted",
    "ServerError",
    "ServiceUnreachable",
    "Settings",
    "StorageAccessDenied",
    "StorageError",
    "StorageNotFound",
    "StorageRateLimited",
    "StorageServerError",
    "StyldodError",
    "UnprocessableEntity",
    "UnsafeUploadURL",
    "UploadURLExpired",
    "Uploader",
    "WebhookReceiver",
    "__version__",
    "upload",
]
