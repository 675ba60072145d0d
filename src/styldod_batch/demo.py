"""The README's main command: the whole job on the built-in sandbox, no account, no network."""

from __future__ import annotations

import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import orjson

from styldod_batch.engine import Uploader
from styldod_batch.models import OrderResult
from styldod_batch.review import RunRecorder, write_review
from styldod_batch.settings import Settings
from styldod_batch.webhooks import WebhookReceiver

ROOMS = (
    "front",
    "living-room",
    "kitchen",
    "dining",
    "bedroom",
    "bathroom",
    "garden",
    "garage",
    "office",
    "hall",
    "terrace",
    "view",
)


def sample_png(width: int, height: int, seed: int) -> bytes:
    """A real PNG (an RGB gradient), so the sample photos are images, not noise."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows += bytes(
                (
                    (x * 255 // width + seed * 37) % 256,
                    (y * 255 // height + seed * 91) % 256,
                    (seed * 53) % 256,
                )
            )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def default_review_page() -> Path:
    """Where the demo writes its review page: kept after the demo (its thumbnails and the
    downloaded outputs beside it), and overwritten by the next demo."""
    return Path(tempfile.gettempdir()) / "styldod-demo" / "review.html"


def make_sample_tree(root: Path, listings: int, photos: int) -> int:
    count = 0
    for listing in range(1, listings + 1):
        folder = root / f"listing-{100 + listing}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, photos + 1):
            name = f"{index:02d}-{ROOMS[(index - 1) % len(ROOMS)]}.png"
            (folder / name).write_bytes(sample_png(320, 240, listing * 100 + index))
            count += 1
    return count


async def run_demo(
    *,
    listings: int = 4,
    photos: int = 6,
    keep: Path | None = None,
    as_json: bool = False,
    html: Path | None = None,
) -> int:
    from styldod_batch.sandbox import Sandbox, SandboxConfig

    html = (html or default_review_page()).absolute()

    def say(text: str) -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="styldod-demo-") as scratch:
        root = keep or Path(scratch) / "photos"
        count = make_sample_tree(root, listings, photos)
        say(f"Sample job: {count} photos in {listings} listing folders under {root}")
        say("Starting the sandbox (Order API + SeaweedFS S3 on 127.0.0.1) ...")
        async with Sandbox(SandboxConfig(order_step_s=0.4)) as sandbox, WebhookReceiver() as hooks:
            say(
                f"Order API: {sandbox.base_url}  (ready in {sandbox.started_in_s:.1f} s); "
                f"webhooks received at {hooks.host}:{hooks.port}"
            )
            settings = Settings(
                base_url=sandbox.base_url,
                api_key=sandbox.api_key,
                webhook_url=hooks.url,
                options={"basic_editing": True},
                # A throw-away sandbox account: its ledger goes with it.
                state=Path(scratch) / "state",
            )

            def on_order(order: OrderResult) -> None:
                say(
                    f"  order {order.key}: {order.status} {order.order_id or order.error}"
                    f" ({order.images} images)"
                )

            say(
                f"Uploading at most {settings.rps:.0f} requests/s, "
                f"{settings.concurrency} uploads in flight ..."
            )
            async with (
                Uploader(settings, on_order=on_order) as uploader,
                RunRecorder(uploader),
            ):
                uploader.listen(hooks)  # each event lands in the ledger too (the review page)
                report = await uploader.run([root])
                created = [o.order_id for o in report.orders if o.order_id]
                say(f"Waiting for the webhooks of {len(created)} orders ...")
                began = time.monotonic()
                finished = await hooks.wait_final(created, timeout_s=60)
                say(
                    f"Webhooks: {hooks.deliveries} deliveries in {time.monotonic() - began:.1f} s"
                    f"{'' if finished else ' (timed out waiting for some orders)'}"
                )
                if finished:  # every order is final: the edited outputs, for the review page
                    await uploader.follow(report, timeout_s=10)
                    await uploader.download(report, html.with_name("edited"))
                hooks.on_event = None  # the ledger closes with the uploader
            for order in sorted(report.orders, key=lambda o: o.key):
                state = hooks.orders.get(order.order_id or "")
                if state is None:
                    continue
                outputs = sum(1 for image in state.images if image.get("output_url"))
                say(
                    f"  {order.key}: {state.status} after {', '.join(state.events)}; "
                    f"{outputs} edited outputs"
                )
            for order in report.orders:  # the final word comes from the webhooks
                final = hooks.orders.get(order.order_id or "")
                if final is not None:
                    order.order_status = final.status
            say("")
            say(report.summary())
            if as_json:
                sys.stdout.write(
                    orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
                )
            written = await write_review(settings, html)
        say(f"The morning review of these orders: {written.path}")
        ok = report.ok and finished and all(hooks.orders[o].status == "completed" for o in created)
        say(
            "Demo finished: every photo uploaded, every order completed."
            if ok
            else "Demo finished with failures (see above)."
        )
        return 0 if ok else 1
