"""The records that flow between the stages, and the results a caller receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class ImageItem:
    """One input file, as the scanner found it."""

    path: str
    # The path relative to its input root: the default ``client_image_id``.
    relative: str
    size: int
    mtime_ns: int
    content_type: str
    group: str
    client_image_id: str = ""
    sequence: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.client_image_id:
            self.client_image_id = self.relative


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where one file goes: the pre-signed PUT URL and the URL that names the stored object."""

    upload_url: str
    image_url: str
    expires_at: str


ImageStatus = Literal["uploaded", "skipped", "failed", "planned"]


@dataclass(slots=True)
class ImageResult:
    path: str
    status: ImageStatus
    client_image_id: str = ""
    group: str = ""
    image_url: str | None = None
    md5: str | None = None
    size: int = 0
    attempts: int = 0
    error: str | None = None
    # Uploaded by an earlier run of the same job (the journal says so); nothing was sent.
    resumed: bool = False


OrderStatus = Literal["created", "failed", "planned"]


@dataclass(slots=True)
class OrderResult:
    key: str
    status: OrderStatus
    images: int
    order_id: str | None = None
    order_status: str | None = None
    idempotency_key: str | None = None
    error: str | None = None
    replayed: bool = False
    # Created by an earlier run of the same job; nothing was sent.
    resumed: bool = False


@dataclass(slots=True)
class GroupClosed:
    """The scanner's signal that a group holds no more items than ``count``."""

    group: str
    count: int


@dataclass(slots=True)
class RequestCounters:
    """What a run sent: every attempt on the wire is counted once."""

    api: int = 0
    storage: int = 0
    retries: int = 0
    rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "api": self.api,
            "storage": self.storage,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
        }
