"""Many workers, one key: 1, 2 and 4 worker processes on one job at 20 requests/s, sharing a
Redis rate budget and a PostgreSQL ledger.

    python -m benchmarks.workers [--files 1000] [--counts 1,2,4]

Every worker is given the whole tree; the ledger's claims split the listings between them.
The sandbox (its own process) counts every request of the key, API calls and storage PUTs
together (``--limit-storage``; the workers run with ``--share-api-budget``, the old pace
in which PUTs take the API's budget), so what it logs is the combined rate they reach. For
each worker count: wall time against the bound (requests that reached the server / 20), the
combined utilisation of the limit, the busiest one-second window, and the 429s.
Writes ``benchmarks/results/workers.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from tests.servers import PostgresServer, RedisServer

from benchmarks.dataset import make_files
from benchmarks.proc import clean_env, start_sandbox
from styldod_batch.sandbox.requestlog import most_in_window

RESULTS = Path(__file__).parent / "results"
RATE = 20
LISTINGS = 20
KEY = "workers-bench-key"


def read_log(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def one_round(workers: int, job: Path, scratch: Path) -> dict[str, Any]:
    log = scratch / f"sandbox-{workers}.jsonl"
    sandbox, base_url = start_sandbox(
        *("--rps", str(RATE), "--api-key", KEY, "--limit-storage", "--log", str(log)),
        env=clean_env(),
    )
    redis, postgres = RedisServer(), PostgresServer()
    try:
        await redis.start()
        await postgres.start()
        env = clean_env(
            {
                "STYLDOD_API_KEY": KEY,
                "STYLDOD_BASE_URL": base_url,
                "STYLDOD_STATE": await postgres.create_database(f"workers_{workers}"),
                "STYLDOD_BUDGET_URL": redis.url,
            }
        )
        began = time.perf_counter()
        processes = [
            await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "styldod_batch", "upload", str(job), "--json", "-q"),
                # The combined window is the point here: PUTs take the API's budget too.
                "--share-api-budget",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(workers)
        ]
        outcomes = [await process.communicate() for process in processes]
        ended = time.perf_counter()
        wall = ended - began
        for process, (_out, err) in zip(processes, outcomes, strict=True):
            if process.returncode:
                raise RuntimeError(f"a worker failed: {err.decode()[-2000:]}")
    finally:
        for server in (redis, postgres):
            await server.stop()
            server.close()
        sandbox.terminate()
        sandbox.wait(timeout=60)
    entries = [e for e in read_log(log) if e["kind"] in ("api", "storage")]
    requests = len(entries)
    bound = requests / RATE
    # The sandbox stamps with CLOCK_MONOTONIC, as perf_counter reads it here (Linux): what
    # the wall holds besides the paced requests, before the first and after the last.
    first, last = min(e["mono"] for e in entries), max(e["mono"] for e in entries)
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "requests": requests,
        "bound_s": round(bound, 2),
        "wall_over_bound": round(wall / bound, 3),
        "utilisation": round(requests / (wall * RATE), 3),
        "busiest_second": most_in_window([e["mono"] for e in entries]),
        "first_request_s": round(first - began, 2),
        "after_last_s": round(ended - last, 2),
        "paced_rps": round((requests - 1) / (last - first), 2),
        "rate_limited": sum(1 for e in entries if e["status"] == 429),
    }


def markdown(rounds: list[dict[str, Any]], files: int) -> str:
    lines = [
        f"# Many workers, one key ({files} x 16 KiB in {LISTINGS} listings, {RATE} requests/s)",
        "",
        "| workers | wall s | requests | bound s | wall / bound | utilisation "
        "| busiest second | 429s | first request at s | after the last s | paced req/s |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r['workers']} | {r['wall_s']} | {r['requests']} | {r['bound_s']} | "
        f"{r['wall_over_bound']} | {r['utilisation']} | {r['busiest_second']} | "
        f"{r['rate_limited']} | {r['first_request_s']} | {r['after_last_s']} | "
        f"{r['paced_rps']} |"
        for r in rounds
    ]
    return "\n".join(lines) + "\n"


async def main_async(files: int, counts: list[int]) -> int:
    with tempfile.TemporaryDirectory(prefix="styldod-workers-bench-") as scratch:
        job = Path(scratch) / "job"
        make_files(job, count=files, size=16 * 1024, folders=LISTINGS)
        rounds = [await one_round(n, job, Path(scratch)) for n in counts]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workers.json").write_bytes(orjson.dumps(rounds, option=orjson.OPT_INDENT_2))
    table = markdown(rounds, files)
    (RESULTS / "workers.md").write_text(table)
    print(table)
    bad = [r for r in rounds if r["rate_limited"] or r["busiest_second"] > RATE]
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--counts", default="1,2,4")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    return asyncio.run(main_async(args.files, counts))


if __name__ == "__main__":
    sys.exit(main())
