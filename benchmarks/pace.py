"""The pace of a rate-limited job: by default (PUTs take nothing from the API's budget) and
with ``--share-api-budget`` (the old pace: PUTs share the API's 20 requests/s), side by side.

    python -m benchmarks.pace [--files 150] [--size 65536] [--rps 20] [--repeat 1]

Each run is ``styldod-batch upload`` in a process of its own against a fresh sandbox (its
own process too, at ``--rps``; it counts API calls only, as the real API does). For each:
the runner's wall time, the span from the first request to the last at the server, the
busiest one-second window of API calls at the server (which must stay at most ``--rps``),
the busiest second of PUTs and of both together, and the 429s. Writes
``benchmarks/results/pace.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.dataset import make_files
from benchmarks.proc import clean_env, start_sandbox
from styldod_batch.sandbox.requestlog import most_in_window

RESULTS = Path(__file__).parent / "results"
KEY = "pace-bench-key"
LISTINGS = 3
MODES = {"default": [], "--share-api-budget": ["--share-api-budget"]}


def one_run(mode: str, job: Path, scratch: Path, rps: int, n: int) -> dict[str, Any]:
    log = scratch / f"sandbox-{n}.jsonl"
    sandbox, base_url = start_sandbox(
        *("--rps", str(rps), "--api-key", KEY, "--log", str(log)), env=clean_env()
    )
    try:
        env = clean_env(
            {
                "STYLDOD_API_KEY": KEY,
                "STYLDOD_BASE_URL": base_url,
                "STYLDOD_STATE": str(scratch / f"state-{n}"),
                "STYLDOD_BUDGET_DIR": str(scratch / f"budgets-{n}"),
            }
        )
        command = [sys.executable, "-m", "styldod_batch", "upload", str(job), "--json", "-q"]
        began = time.perf_counter()
        done = subprocess.run(
            [*command, "--rps", str(rps), *MODES[mode]],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        wall = time.perf_counter() - began
        if done.returncode:
            raise RuntimeError(f"the run failed ({done.returncode}): {done.stderr[-2000:]}")
        report = orjson.loads(done.stdout)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=60)
    entries = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    api = [e["mono"] for e in entries if e["kind"] == "api"]
    puts = [e["mono"] for e in entries if e["kind"] == "storage"]
    both = api + puts
    return {
        "mode": mode,
        "wall_s": round(wall, 2),
        "server_span_s": round(max(both) - min(both), 2),
        "uploaded": report.get("uploaded"),
        "api_calls": len(api),
        "puts": len(puts),
        "busiest_api_second": most_in_window(api),
        "busiest_put_second": most_in_window(puts),
        "busiest_second_together": most_in_window(both),
        "rate_limited": sum(1 for e in entries if e["status"] == 429),
    }


def markdown(rows: list[dict[str, Any]], files: int, size: int, rps: int) -> str:
    lines = [
        f"# The pace of a job ({files} x {size // 1024} KiB in {LISTINGS} listings, --rps {rps})",
        "",
        "| mode | wall s | server span s | API calls | PUTs | busiest second of API calls "
        "| busiest second of PUTs | busiest second, both | 429s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r['mode']} | {r['wall_s']} | {r['server_span_s']} | {r['api_calls']} | "
        f"{r['puts']} | {r['busiest_api_second']} | {r['busiest_put_second']} | "
        f"{r['busiest_second_together']} | {r['rate_limited']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time, with the worst peak and the 429s of every run."""
    chosen = dict(sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2])
    chosen["busiest_api_second"] = max(r["busiest_api_second"] for r in runs)
    chosen["rate_limited"] = sum(r["rate_limited"] for r in runs)
    chosen["runs"] = len(runs)
    chosen["walls_s"] = [r["wall_s"] for r in runs]
    chosen["median_wall_s"] = statistics.median(r["wall_s"] for r in runs)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=150)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--rps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="styldod-pace-bench-") as scratch:
        job = Path(scratch) / "job"
        make_files(job, count=args.files, size=args.size, folders=LISTINGS)
        n = 0
        for mode in MODES:
            runs = []
            for _ in range(args.repeat):
                n += 1
                runs.append(one_run(mode, job, Path(scratch), args.rps, n))
            rows.append(median_row(runs))
    for row in rows:
        if row["busiest_api_second"] > args.rps:
            print(f"API peak over --rps in {row['mode']}: {row['busiest_api_second']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pace.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    table = markdown(rows, args.files, args.size, args.rps)
    (RESULTS / "pace.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 1 if any(r["busiest_api_second"] > args.rps for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
