"""styldod-batch: stream bulk image files into pre-signed PUTs and place Styldod orders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from styldod_batch.contract import Contract
from styldod_batch.errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    Conflict,
    InputError,
    NetworkError,
    RateLimited,
    RequestDeclined,
    StyldodError,
)
from styldod_batch.models import ImageItem, ImageResult, OrderResult
from styldod_batch.report import Report
from styldod_batch.settings import RetryPolicy, Settings

if TYPE_CHECKING:
    from styldod_batch.engine import RunAborted, Uploader, upload

# The engine (and with it aiohttp, a quarter of a second to import) loads on first use, so
# a command that never talks to the API starts fast.
_FROM_ENGINE = ("RunAborted", "Uploader", "upload")


def __getattr__(name: str) -> Any:
    if name in _FROM_ENGINE:
        from styldod_batch import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'styldod_batch' has no attribute {name!r}")


__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "Conflict",
    "Contract",
    "ImageItem",
    "ImageResult",
    "InputError",
    "NetworkError",
    "OrderResult",
    "RateLimited",
    "Report",
    "RequestDeclined",
    "RetryPolicy",
    "RunAborted",
    "Settings",
    "StyldodError",
    "Uploader",
    "upload",
]
