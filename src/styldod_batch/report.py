"""Results of a run: the final report (human and JSON) and the live progress line."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from styldod_batch.models import ImageResult, OrderResult, RequestCounters


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

    def add_image(self, result: ImageResult) -> None:
        self.total += 1
        if result.status in ("changed", "late"):
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

    def add_order(self, result: OrderResult) -> None:
        self.orders.append(result)

    def add_output(self, status: str, path: str, error: str | None) -> None:
        self.outputs[status] = self.outputs.get(status, 0) + 1
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
        return {
            "images": {
                "total": self.total,
                "uploaded": self.uploaded,
                "skipped": self.skipped,
                "failed": self.failed,
                "already_done": self.already_done,
                "changed": len(self.changed),
                "late": len(self.late),
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
            "failures": self.failures,
            "requests": self.requests.as_dict(),
            **({"outputs": self.outputs} if self.outputs else {}),
            "processing_failed": self.processing_failed,
            "bytes_uploaded": self.bytes_uploaded,
            "elapsed_s": round(self.elapsed_s, 3),
            "peak_rss_mb": self.peak_rss_mb,
            "dry_run": self.dry_run,
        }

    def summary(self) -> str:
        lines = []
        verb = "planned" if self.dry_run else "uploaded"
        count = self.planned if self.dry_run else self.uploaded
        lines.append(
            f"Images: {self.total} total, {count} {verb}, {self.skipped} skipped, "
            f"{self.failed} failed ({self.bytes_uploaded / 1e6:.1f} MB in {self.elapsed_s:.1f} s)"
        )
        if self.already_done:
            lines.append(
                f"Already done by an earlier run: {self.already_done} images, "
                f"{sum(o.resumed for o in self.orders)} orders"
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
        if self.outputs:
            lines.append(
                "Outputs: " + ", ".join(f"{n} {state}" for state, n in sorted(self.outputs.items()))
            )
        created = [o for o in self.orders if o.status == "created"]
        failed = [o for o in self.orders if o.status == "failed"]
        planned = [o for o in self.orders if o.status == "planned"]
        lines.append(
            f"Orders: {len(created)} created, {len(failed)} failed"
            + (f", {len(planned)} planned" if planned else "")
        )
        for order in sorted(self.orders, key=lambda o: o.key):
            detail = order.order_id or order.error or ""
            status = order.order_status or order.status
            notes = [
                n for n, on in (("follow-up", order.follow_up), ("earlier", order.resumed)) if on
            ]
            detail += f" ({', '.join(notes)})" if notes else ""
            lines.append(f"  {order.key:<40} {order.images:>4} images  {status:<16} {detail}")
        if self.failures:
            lines.append("Failures:")
            lines.extend(f"  {f['path']}: {f['error']}" for f in self.failures[:50])
            if len(self.failures) > 50:
                lines.append(f"  ... and {len(self.failures) - 50} more (see --json)")
        r = self.requests
        lines.append(
            f"Requests: {r.api} API, {r.storage} storage, {r.retries} retried, "
            f"{r.rate_limited} rate-limited (429); peak memory {self.peak_rss_mb} MB"
        )
        if self.interrupted:
            lines.append("Interrupted: re-run the same command to finish the job.")
        return "\n".join(lines)


class Progress:
    """One status line on a terminal (files, bytes, rate, ETA), redrawn at most every
    ``interval_s``; the total is a lower bound while the scan is still going."""

    def __init__(self, stream: IO[str] | None = None, interval_s: float = 0.25) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last = 0.0
        self.done = 0
        self.uploaded = 0
        self.bytes = 0
        self.orders = 0
        self.expected: int | None = None

    def image(self, result: ImageResult) -> None:
        self.done += 1
        if result.status == "uploaded":
            self.uploaded += 1
            self.bytes += result.size
        self._draw()

    def order(self, _result: OrderResult) -> None:
        self.orders += 1
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.uploaded / elapsed
        line = (
            f"\r{self.done} files  {self.bytes / 1e6:.1f} MB  {rate:.1f} files/s  "
            f"{self.bytes / elapsed / 1e6:.1f} MB/s  {self.orders} orders"
        )
        if self.expected and rate > 0:
            line += f"  ETA {max(0.0, (self.expected - self.done) / rate):.0f} s"
        self.stream.write(line + "   ")
        self.stream.flush()

    def close(self) -> None:
        self._draw(force=True)
        self.stream.write("\n")
        self.stream.flush()
