"""What the review page shows, as data: the filters, and listings with their orders and images,
each image with the state a reviewer cares about (``IMAGE_STATES``). ``model`` fills them in."""

from __future__ import annotations

from dataclasses import dataclass, field

from styldod_batch.review.runlog import PlacedOrder, RunRecord
from styldod_batch.review.thumbs import Thumb, Wanted

# An image's state on the page, problems first (the order the page counts them in).
IMAGE_STATES: tuple[str, ...] = (
    "failed",  # could not be uploaded
    "refused",  # its order was refused by the service
    "error",  # the service marked it as an error
    "changed",  # its content changed after it was ordered (not sent again)
    "late",  # new in a listing ordered before, follow-ups off (not sent)
    "processing",  # in an order the service has not finished
    "completed",  # edited, output not downloaded
    "downloaded",  # edited, output downloaded
    "uploaded",  # stored, in no order
)
PROBLEM_STATES = frozenset({"failed", "refused", "error", "changed", "late"})


@dataclass(frozen=True, slots=True)
class ReviewFilter:
    """What to show: one run (its ID, a prefix of it, or ``last``), runs started since an
    epoch time, listings by name or identity (shell patterns), image states."""

    run: str | None = None
    since: float | None = None
    listings: tuple[str, ...] = ()
    states: frozenset[str] = frozenset()

    @property
    def by_run(self) -> bool:
        return self.run is not None or self.since is not None

    def describe(self) -> list[str]:
        parts = []
        if self.run is not None:
            parts.append(f"run {self.run}")
        if self.since is not None:
            from datetime import datetime

            parts.append(
                "runs since " + datetime.fromtimestamp(self.since).isoformat(" ", "minutes")
            )
        if self.listings:
            parts.append("listings " + ", ".join(self.listings))
        if self.states:
            parts.append("images " + ", ".join(s for s in IMAGE_STATES if s in self.states))
        return parts


@dataclass(slots=True)
class ImageView:
    client_image_id: str
    path: str
    state: str
    note: str = ""
    order: str = ""
    original_key: str | None = None
    # The original's size and mtime as recorded: its thumbnail is made only if they match.
    size: int | None = None
    mtime_ns: int | None = None
    output_key: str | None = None
    output_path: str | None = None
    original: Thumb | str | None = None
    output: Thumb | str | None = None


@dataclass(slots=True)
class OrderView:
    name: str
    order_id: str | None
    state: str
    status: str | None
    images: int
    error: str | None
    follow_up: bool
    placed: PlacedOrder | None = None
    run_id: str | None = None
    events: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ListingSection:
    name: str
    identity: str
    label: str
    orders: list[OrderView] = field(default_factory=list)
    images: list[ImageView] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for image in self.images:
            found[image.state] = found.get(image.state, 0) + 1
        return {s: found[s] for s in IMAGE_STATES if s in found}


@dataclass(slots=True)
class Review:
    generated: float
    ledger: str
    filters: ReviewFilter
    listings: list[ListingSection] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    # Inputs that failed before they had a listing (path, reason).
    failures: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for section in self.listings:
            for state, n in section.counts().items():
                total[state] = total.get(state, 0) + n
        return {s: total[s] for s in IMAGE_STATES if s in total}

    def wanted_thumbnails(self) -> dict[str, Wanted]:
        wanted: dict[str, Wanted] = {}
        for section in self.listings:
            for image in section.images:
                if image.output_key and image.output_path:
                    wanted.setdefault(image.output_key, Wanted(image.output_path))
        # Originals second: an output of the same bytes is the better-known copy.
        for section in self.listings:
            for image in section.images:
                if image.original_key:
                    wanted.setdefault(
                        image.original_key, Wanted(image.path, image.size, image.mtime_ns)
                    )
        return wanted

    def attach(self, thumbs: dict[str, Thumb | str]) -> None:
        for section in self.listings:
            for image in section.images:
                if image.original_key:
                    image.original = thumbs.get(image.original_key)
                if image.output_key:
                    image.output = thumbs.get(image.output_key)
