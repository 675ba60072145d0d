"""The engine's own upload path, alone: ``FileUploader.put`` over pre-made URLs.

Run as a script (``python engine_put.py JOB --concurrency N``), one process per run, so its
CPU time and peak memory are its own. It does per file exactly what the engine's upload
stage does (read, MD5, PUT with Content-Length, ETag check, unchanged-file check) with the
engine's session settings and event loop, from a queue served by N workers; scanning,
pre-signing and orders are left out, so it compares like for like with curl, s5cmd and
rclone. Prints one JSON line: files, bytes, failures, 429s, and the time inside the loop.

``--accept-missing-etag``: nginx's DAV module stores the body but sends no ETag, which the
engine rightly treats as an integrity failure. With this flag the uploader is built with
``accept_missing_etag=True``: an absent ETag passes (the MD5 is still computed, and a
streamed file is still checked unchanged), a wrong one still fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any

import orjson

from styldod_batch.errors import StyldodError
from styldod_batch.models import ImageItem, RequestCounters, UploadTarget
from styldod_batch.runtime import run_async
from styldod_batch.settings import Settings
from styldod_batch.storage import FileUploader


def load_job(path: str) -> list[tuple[ImageItem, UploadTarget]]:
    jobs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            file_path, size, content_type, url = line.rstrip("\n").split("\t")
            info = os.stat(file_path)  # the engine's scanner has these before any upload
            item = ImageItem(
                path=file_path,
                relative=os.path.basename(file_path),
                size=int(size),
                mtime_ns=info.st_mtime_ns,
                content_type=content_type,
                group="bench",
            )
            jobs.append((item, UploadTarget(url, url.split("?", 1)[0], "")))
    return jobs


async def upload_all(
    jobs: list[tuple[ImageItem, UploadTarget]], concurrency: int, accept_missing_etag: bool
) -> dict[str, Any]:
    settings = Settings(
        base_url="http://127.0.0.1:1", api_key="x", upload_rps=0, concurrency=concurrency
    )
    counters = RequestCounters()
    pending: asyncio.Queue[tuple[ImageItem, UploadTarget]] = asyncio.Queue()
    for job in jobs:
        pending.put_nowait(job)
    done = {"files": 0, "bytes": 0, "failed": 0}
    errors: list[str] = []
    async with FileUploader(
        settings, None, counters, accept_missing_etag=accept_missing_etag
    ) as uploader:

        async def worker() -> None:
            while True:
                try:
                    item, target = pending.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    await uploader.put(item, target)
                except StyldodError as exc:
                    done["failed"] += 1
                    errors.append(str(exc))
                    continue
                done["files"] += 1
                done["bytes"] += item.size

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        inner_s = time.perf_counter() - began
    return {
        **done,
        "requests": counters.storage,
        "rate_limited": counters.rate_limited,
        "inner_s": round(inner_s, 4),
        "errors": errors[:5],
    }


def _with_pyinstrument(run: Coroutine[Any, Any, dict[str, Any]], path: str) -> dict[str, Any]:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    result = run_async(run)
    profiler.stop()
    with open(path, "w", encoding="utf-8") as out:
        out.write("Own time per function (pyinstrument, flat; the top lines are the hot spots)\n")
        out.write(profiler.output_text(flat=True, flat_time="self", show_all=True))
        out.write("\n\nCall tree (pyinstrument)\n")
        out.write(profiler.output_text(show_all=False))
    return result


def _with_cprofile(run: Coroutine[Any, Any, dict[str, Any]], path: str) -> dict[str, Any]:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    result = run_async(run)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    with open(path, "w", encoding="utf-8") as out:
        out.write("Own time per function (cProfile, deterministic: 'tottime' is own time, ")
        out.write("'ncalls' how often; its own overhead inflates short calls)\n")
        out.write(text.getvalue())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="tab-separated: path, size, content type, URL")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--accept-missing-etag", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="write a text profile to FILE")
    parser.add_argument(
        "--profiler",
        choices=("pyinstrument", "cprofile"),
        default="pyinstrument",
        help="sampling (pyinstrument: own time per function, call tree) or deterministic "
        "(cProfile: calls and time per call)",
    )
    args = parser.parse_args()
    jobs = load_job(args.job)
    run = upload_all(jobs, args.concurrency, args.accept_missing_etag)
    if args.profile and args.profiler == "pyinstrument":
        result = _with_pyinstrument(run, args.profile)
    elif args.profile:
        result = _with_cprofile(run, args.profile)
    else:
        result = run_async(run)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
