"""styldod-batch: stream bulk image files into pre-signed PUTs and place Styldod orders."""

from styldod_batch.contract import Contract
from styldod_batch.engine import RunAborted, Uploader, upload
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
