"""Results of a run: the final report (human and JSON) and the live progress line."""

from __future__ import annotations

import os
import resource
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len

from styldod_batch.models import ImageResult, OrderResult, RequestCounters

# The summary's own lines fit a terminal this wide (paths in its lists may not).
SUMMARY_WIDTH = 80


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM``: ``ru_maxrss`` would also count the memory of the parent
    this process was forked from (the high-water mark survives exec), overstating a small
    runner started by a large one.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(kb / divisor, 1)


@dataclass(slots=True)
class Report:
    total: int = 0
    uploaded: int = 0
    skipped: int = 0
    failed: int = 0
    planned: int = 0
    already_done: int = 0
    # Images whose content changed after they were ordered, and new images of listings
    # ordered before with follow-ups off: named, not sent.
    changed: list[dict[str, str]] = field(default_factory=list)
    late: list[dict[str, str]] = field(default_factory=list)
    # Images new in their place whose very content a live order holds under another path.
    moved: list[dict[str, str]] = field(default_factory=list)
    # Images met in each folder, to tell a folder moved whole from a few copied files.
    _per_folder: Counter[str] = field(default_factory=Counter, repr=False)
    # Images the service marked as errors, or orders that never finished while we waited.
    processing_failed: int = 0
    outputs: dict[str, int] = field(default_factory=dict)
    bytes_uploaded: int = 0
    orders: list[OrderResult] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    requests: RequestCounters = field(default_factory=RequestCounters)
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    # Images (and skipped files) the run met so far; complete once ``scan_complete``.
    found: int = 0
    scan_complete: bool = False
    # How many the inputs hold, counted apart from the run (None until known).
    expected: int | None = None
    # What the run is doing: scanning, uploading, placing orders, waiting for orders,
    # downloading, done.
    phase: str = "scanning"
    # A report of the ``download`` command alone.
    download_only: bool = False
    bytes_downloaded: int = 0
    # While orders are awaited or outputs downloaded: that step's (done, total), live, for
    # the progress line.
    step_progress: Callable[[], tuple[int, int | None]] | None = field(
        default=None, repr=False, compare=False
    )
    # How long the steps after the upload took, in seconds: "wait", "download".
    step_s: dict[str, float] = field(default_factory=dict)

    def add_image(self, result: ImageResult) -> None:
        self.total += 1
        if result.client_image_id:
            self._per_folder[os.path.dirname(result.path)] += 1
        if result.status == "moved":
            self.moved.append(
                {
                    "path": result.path,
                    "client_image_id": result.client_image_id,
                    "same_as": result.same_as or "",
                    "same_as_listing": result.same_as_listing or "",
                    "order": result.order or "",
                }
            )
        elif result.status in ("changed", "late"):
            entry = {"path": result.path, "client_image_id": result.client_image_id}
            entry["listing" if result.status == "late" else "order"] = (
                result.group if result.status == "late" else result.order or ""
            )
            (self.changed if result.status == "changed" else self.late).append(entry)
        elif result.resumed:
            self.already_done += 1
        elif result.status == "uploaded":
            self.uploaded += 1
            self.bytes_uploaded += result.size
        elif result.status == "skipped":
            self.skipped += 1
        elif result.status == "planned":
            self.planned += 1
        else:
            self.failed += 1
            self.failures.append({"path": result.path, "error": result.error or "failed"})

    def moved_listings(self) -> list[dict[str, Any]]:
        """Folders whose every image is the content of one ordered listing: that listing,
        moved (or copied) whole."""
        by_folder: dict[str, list[str]] = {}
        for entry in self.moved:
            folder = os.path.dirname(entry["path"])
            by_folder.setdefault(folder, []).append(entry["same_as_listing"])
        found = []
        for folder, listings in sorted(by_folder.items()):
            labels = set(listings)
            if len(labels) == 1 and len(listings) == self._per_folder[folder]:
                found.append({"listing": folder, "same_as": labels.pop(), "images": len(listings)})
        return found

    def add_order(self, result: OrderResult) -> None:
        self.orders.append(result)

    def add_output(self, status: str, path: str, error: str | None, size: int = 0) -> None:
        self.outputs[status] = self.outputs.get(status, 0) + 1
        if status == "downloaded":
            self.bytes_downloaded += size
        if status == "failed":
            self.failures.append({"path": path, "error": f"download failed: {error}"})

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and self.processing_failed == 0
            and not self.outputs.get("failed")
            and all(o.status != "failed" for o in self.orders)
        )

    def to_dict(self) -> dict[str, Any]:
        if self.download_only:
            return {
                "outputs": self.outputs,
                "failures": self.failures,
                "bytes_downloaded": self.bytes_downloaded,
                "requests": self.requests.as_dict(),
                "elapsed_s": round(self.elapsed_s, 3),
                "peak_rss_mb": self.peak_rss_mb,
            }
        return {
            "images": {
                "total": self.whole,
                "uploaded": self.uploaded,
                "skipped": self.skipped,
                "failed": self.failed,
                "already_done": self.already_done,
                "changed": len(self.changed),
                "late": len(self.late),
                "moved": len(self.moved),
                **({"not_reached": self.not_reached} if self.interrupted else {}),
                **({"planned": self.planned} if self.dry_run else {}),
            },
            "orders": [
                {
                    "key": o.key,
                    "orderID": o.order_id,
                    "images": o.images,
                    "status": o.order_status or o.status,
                    "error": o.error,
                    "listing": o.listing,
                    "follow_up": o.follow_up,
                    "already_done": o.resumed,
                }
                for o in sorted(self.orders, key=lambda o: o.key)
            ],
            "changed": self.changed,
            "late": self.late,
            "moved": self.moved,
            "moved_listings": self.moved_listings(),
            "failures": self.failures,
            "requests": self.requests.as_dict(),
            **({"outputs": self.outputs} if self.outputs else {}),
            "processing_failed": self.processing_failed,
            "bytes_uploaded": self.bytes_uploaded,
            "elapsed_s": round(self.elapsed_s, 3),
            "peak_rss_mb": self.peak_rss_mb,
            "dry_run": self.dry_run,
        }

    @property
    def whole(self) -> int:
        """Every input of the run: those it got to, and (when it was stopped) what the scan
        and the count say there is besides."""
        if not self.interrupted:
            return self.total
        return max(self.found, self.total, self.expected or 0)

    @property
    def not_reached(self) -> int:
        """Inputs the run never got to (it was stopped)."""
        return max(0, self.whole - self.total)

    def summary(self) -> str:
        """The human summary: counts in words, each order, the failures, the requests."""
        if self.download_only:
            return self._download_summary()
        lines = []
        verb = "planned" if self.dry_run else "uploaded"
        count = self.planned if self.dry_run else self.uploaded
        total = self.whole
        reached = f", {self.not_reached} not reached" if self.not_reached else ""
        images = (
            f"Images: {total} total, {count} {verb}, {self.skipped} skipped, "
            f"{self.failed} failed{reached}"
        )
        size = f"({self.bytes_uploaded / 1e6:.1f} MB in {self.elapsed_s:.1f} s)"
        # One line where it fits 80 columns; else the size goes under the counts.
        fits = cell_len(images) + 1 + len(size) <= SUMMARY_WIDTH
        lines.extend([f"{images} {size}"] if fits else [images, f"  {size}"])
        if self.already_done:
            earlier = sum(o.resumed for o in self.orders)
            lines.append(
                f"Already done by an earlier run: {plural(self.already_done, 'image')}, "
                f"{plural(earlier, 'order')}"
            )
        if self.changed:
            lines.append(
                f"Changed after they were ordered, not sent again ({len(self.changed)}; "
                "--reorder-changed orders them again):"
            )
            lines.extend(f"  {c['path']} (in {c['order']})" for c in self.changed[:50])
        if self.late:
            lines.append(
                f"New in listings ordered before, not ordered ({len(self.late)}; "
                "follow-up orders are turned off):"
            )
            lines.extend(f"  {c['path']} ({c['listing']})" for c in self.late[:50])
        if self.moved:
            lines.extend(self._moved_lines())
        if self.outputs:
            lines.append(self._outputs_line())
        created = [o for o in self.orders if o.status == "created"]
        failed = [o for o in self.orders if o.status == "failed"]
        planned = [o for o in self.orders if o.status == "planned"]
        lines.append(
            f"Orders: {len(created)} created, {len(failed)} failed"
            + (f", {len(planned)} planned" if planned else "")
        )
        width = max((cell_len(o.key) for o in self.orders), default=0)
        width = min(max(width, 20), 60)
        for order in sorted(self.orders, key=lambda o: o.key):
            detail = order.order_id or order.error or ""
            status = order.order_status or order.status
            notes = [
                n for n, on in (("follow-up", order.follow_up), ("earlier", order.resumed)) if on
            ]
            detail += f" ({', '.join(notes)})" if notes else ""
            images = plural(order.images, "image")
            lines.append(f"  {pad(order.key, width)} {images:>11}  {status:<16} {detail}")
        lines.extend(self._failure_lines())
        if self.step_s:
            steps = [f"upload {self.elapsed_s:.1f} s"]
            if "wait" in self.step_s:
                steps.append(f"waiting for orders {self.step_s['wait']:.1f} s")
            if "download" in self.step_s:
                steps.append(f"download {self.step_s['download']:.1f} s")
            lines.append("Time: " + ", ".join(steps))
        r = self.requests
        # Two lines, each within SUMMARY_WIDTH with five-digit counts.
        lines.append(
            f"Requests: {r.api} API, {r.storage} storage, {r.retries} retried, "
            f"{r.rate_limited} rate-limited (429)"
        )
        lines.append(f"Peak memory: {self.peak_rss_mb} MB")
        if self.interrupted:
            lines.append("Interrupted: re-run the same command to finish the job.")
        return "\n".join(lines)

    def _moved_lines(self) -> list[str]:
        lines = [
            f"Already ordered under another path, not ordered again ({len(self.moved)}; "
            "--reorder-moved orders them again):"
        ]
        whole = self.moved_listings()
        for listing in whole:
            lines.append(
                f"  {listing['listing']}: the listing {listing['same_as']}, moved "
                f"({plural(listing['images'], 'image')})"
            )
        folders = {listing["listing"] for listing in whole}
        rest = [m for m in self.moved if os.path.dirname(m["path"]) not in folders]
        lines.extend(f"  {m['path']} (= {m['same_as']} in {m['order']})" for m in rest[:50])
        return lines

    def _outputs_line(self) -> str:
        return "Outputs: " + ", ".join(f"{n} {state}" for state, n in sorted(self.outputs.items()))

    def _failure_lines(self) -> list[str]:
        if not self.failures:
            return []
        lines = ["Failures:"]
        lines.extend(f"  {f['path']}: {f['error']}" for f in self.failures[:50])
        if len(self.failures) > 50:
            lines.append(f"  ... and {len(self.failures) - 50} more (see --json)")
        return lines

    def _download_summary(self) -> str:
        lines = [self._outputs_line() if self.outputs else "Outputs: nothing to download"]
        lines.extend(self._failure_lines())
        lines.append(
            f"Downloaded {self.bytes_downloaded / 1e6:.1f} MB in {self.elapsed_s:.1f} s; "
            f"{self.requests.retries} retried; peak memory {self.peak_rss_mb} MB"
        )
        return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    """``1 order``, ``2 orders``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def pad(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal cells (a CJK character takes two)."""
    return text + " " * max(0, width - cell_len(text))
