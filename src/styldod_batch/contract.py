"""The Order API wire contract: every path, header name and protocol limit, in one place.

The engine and the sandbox both read these defaults; a user overrides any of them through
``Settings.contract`` (the real service may differ in detail from what the seeds document).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

CONTENT_TYPES_BY_SUFFIX: Final[dict[str, str]] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heic",
}

# Known option names and the Python type each must have; unknown names pass through untouched.
OPTION_TYPES: Final[dict[str, type]] = {
    "basic_editing": bool,
    "service": str,
    "style": str,
    "notes": str,
}
SERVICES: Final[frozenset[str]] = frozenset(
    {"photo_editing", "virtual_staging", "item_removal", "day_to_dusk", "virtual_renovation"}
)

EVENT_PRE_PROCESSING: Final = "order.pre_processing"
EVENT_EXPERT_ASSIGNED: Final = "order.expert_assigned"
EVENT_POST_PROCESSING: Final = "order.post_processing"
EVENT_COMPLETED: Final = "order.completed"
EVENT_ERROR: Final = "order.error"
ORDER_EVENTS: Final[tuple[str, ...]] = (
    EVENT_PRE_PROCESSING,
    EVENT_EXPERT_ASSIGNED,
    EVENT_POST_PROCESSING,
    EVENT_COMPLETED,
    EVENT_ERROR,
)
FINAL_ORDER_STATUSES: Final[frozenset[str]] = frozenset({"completed", "error"})


@dataclass(frozen=True, slots=True)
class Contract:
    """Paths, header names and limits of the Order API as the engine speaks it."""

    upload_urls_path: str = "/v2/upload-urls"
    orders_path: str = "/v2/orders"
    # ``{order_id}`` is replaced by the order's ID.
    order_path: str = "/v2/orders/{order_id}"
    api_key_header: str = "api-key"
    idempotency_header: str = "Idempotency-Key"
    replayed_header: str = "Idempotent-Replayed"
    retry_after_header: str = "Retry-After"
    # Sent only when ``Settings.api_version`` is set.
    version_header: str = "Styldod-Version"
    max_files_per_upload_call: int = 50
    max_images_per_order: int = 100
    content_types: frozenset[str] = field(
        default_factory=lambda: frozenset(CONTENT_TYPES_BY_SUFFIX.values())
    )

    def order_url_path(self, order_id: str) -> str:
        return self.order_path.format(order_id=order_id)


DEFAULT_CONTRACT: Final = Contract()
