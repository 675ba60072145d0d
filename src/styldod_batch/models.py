"""The records that flow between the stages, and the results a caller receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class ImageItem:
    """One input file, as the scanner found it.

    ``group`` names its listing (the order's name); ``listing`` is the listing's identity,
    what the ledger knows it by: ``folder:<real path>`` for a folder, else ``order:<group>``
    (a manifest's ``order`` column, or the group an item source gives).
    """

    path: str
    # Its name within its listing: the default ``client_image_id``.
    relative: str
    size: int
    mtime_ns: int
    content_type: str
    group: str
    client_image_id: str = ""
    sequence: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    listing: str = ""

    def __post_init__(self) -> None:
        if not self.client_image_id:
            self.client_image_id = self.relative
        if not self.listing:
            self.listing = f"order:{self.group}"


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where one file goes: the pre-signed PUT URL and the URL that names the stored object."""

    upload_url: str
    image_url: str
    expires_at: str


# uploaded: now, or (``resumed``) by an earlier run and ordered now; ordered: in an order placed
# earlier, nothing to do; changed: its content differs from what its order holds (not sent);
# late: new in a listing ordered before, with follow-up orders turned off (not sent).
ImageStatus = Literal[
    "uploaded", "skipped", "failed", "planned", "ordered", "changed", "late", "moved"
]


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
    # Done by an earlier run (the ledger says so); nothing was sent for it.
    resumed: bool = False
    # The order it is in, or (changed) was in.
    order: str | None = None
    # (moved) The image of another listing whose very content it is: "label/client_image_id",
    # and that listing's label alone (a client image ID may hold a "/").
    same_as: str | None = None
    same_as_listing: str | None = None


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
    # Created by an earlier run; nothing was sent.
    resumed: bool = False
    # The listing's name, and its download folder (unique among the account's listings).
    listing: str = ""
    label: str = ""
    # A later order of a listing ordered before: "<listing> (2)".
    follow_up: bool = False
    # The service's image list (statuses, output URLs), once the order was followed.
    outputs: list[dict[str, Any]] = field(default_factory=list)


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
