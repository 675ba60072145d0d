"""The whole job as a user would script it with aiohttp and ``aiolimiter.AsyncLimiter(20, 1)``.

For every folder, at once: ask for upload URLs (50 per call), PUT every file (read whole,
N at a time), then create the folder's order. Every request, API or storage, waits for the
limiter; a 429 is retried after its Retry-After. Prints one JSON line.
"""

# Blocking file reads inside coroutines are what such a script does: they are measured.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

CONTENT_TYPE = "image/jpeg"


class Client:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str) -> None:
        self.session = session
        self.base_url = base_url
        self.api_headers = {"api-key": api_key}
        self.limiter = AsyncLimiter(20, 1)
        self.requests = 0
        self.rate_limited = 0

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
        for _attempt in range(10):
            async with self.limiter:
                self.requests += 1
                async with self.session.request(method, url, **kwargs) as resp:
                    body = await resp.read()
            if resp.status == 429:
                self.rate_limited += 1
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            return resp.status, body
        return 429, b""

    async def upload_folder(
        self, root: str, folder: str, names: list[str], semaphore: asyncio.Semaphore
    ) -> tuple[int, int, bool]:
        urls: list[dict[str, str]] = []
        for start in range(0, len(names), 50):
            files = [
                {
                    "file_name": f"{folder}/{name}",
                    "content_type": CONTENT_TYPE,
                    "content_length": os.path.getsize(os.path.join(root, folder, name)),
                }
                for name in names[start : start + 50]
            ]
            status, body = await self.request(
                "POST",
                self.base_url + "/v2/upload-urls",
                json={"files": files},
                headers=self.api_headers,
            )
            if status != 200:
                return 0, 0, False
            urls.extend(json.loads(body)["upload_urls"])

        async def put(name: str, upload_url: str) -> int:
            async with semaphore:
                with open(os.path.join(root, folder, name), "rb") as handle:
                    data = handle.read()
                status, _ = await self.request(
                    "PUT", upload_url, data=data, headers={"Content-Type": CONTENT_TYPE}
                )
                return len(data) if status == 200 else -1

        sizes = await asyncio.gather(
            *(put(name, url["upload_url"]) for name, url in zip(names, urls, strict=True))
        )
        uploaded = [
            (name, url) for name, url, size in zip(names, urls, sizes, strict=True) if size >= 0
        ]
        image_list = [
            {"client_image_id": f"{folder}/{name}", "image_urls": [url["image_url"]], "sequence": i}
            for i, (name, url) in enumerate(uploaded, start=1)
        ]
        status, _ = await self.request(
            "POST",
            self.base_url + "/v2/orders",
            json={"order_name": folder, "image_list": image_list},
            headers=self.api_headers,
        )
        return len(uploaded), sum(s for s in sizes if s >= 0), status == 200


async def run(root: str, base_url: str, api_key: str, concurrency: int) -> dict[str, Any]:
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        client = Client(session, base_url, api_key)
        began = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.upload_folder(root, d, sorted(os.listdir(os.path.join(root, d))), semaphore)
                for d in folders
            )
        )
        inner_s = time.perf_counter() - began
    total = sum(len(os.listdir(os.path.join(root, d))) for d in folders)
    files = sum(r[0] for r in results)
    return {
        "files": files,
        "bytes": sum(r[1] for r in results),
        "failed": total - files,
        "orders": sum(1 for r in results if r[2]),
        "orders_failed": sum(1 for r in results if not r[2]),
        "requests": client.requests,
        "rate_limited": client.rate_limited,
        "inner_s": round(inner_s, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a folder of folders of images: one order per folder")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(run(args.root, args.base_url, args.api_key, args.concurrency))
    print(json.dumps(result))
    return 0 if result["failed"] == 0 and result["orders_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
