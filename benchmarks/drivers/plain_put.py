"""A plain aiohttp upload script, as a user would write it, over pre-made URLs.

Reads each file whole (``open().read()``), PUTs it, N at a time under a semaphore, all of
them gathered at once; the default asyncio loop, no rate limit. Prints one JSON line.
"""

# Blocking file reads inside coroutines are what such a script does: they are measured.
# ruff: noqa: ASYNC230

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


async def upload_all(jobs: list[list[str]], concurrency: int) -> dict[str, object]:
    semaphore = asyncio.Semaphore(concurrency)
    statuses: list[int] = []
    sent = 0

    async with aiohttp.ClientSession() as session:

        async def put(path: str, content_type: str, url: str) -> None:
            nonlocal sent
            async with semaphore:
                with open(path, "rb") as handle:
                    data = handle.read()
                async with session.put(
                    url, data=data, headers={"Content-Type": content_type}
                ) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                    if resp.status < 300:
                        sent += len(data)

        began = time.perf_counter()
        await asyncio.gather(*(put(path, ctype, url) for path, _size, ctype, url in jobs))
        inner_s = time.perf_counter() - began
    ok = sum(1 for status in statuses if status < 300)
    return {
        "files": ok,
        "bytes": sent,
        "failed": len(jobs) - ok,
        "requests": len(statuses),
        "rate_limited": statuses.count(429),
        "inner_s": round(inner_s, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="tab-separated: path, size, content type, URL")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with open(args.job, encoding="utf-8") as handle:
        jobs = [line.rstrip("\n").split("\t") for line in handle]
    result = asyncio.run(upload_all(jobs, args.concurrency))
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
