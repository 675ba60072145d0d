"""What the ledger costs: the same job with it and without it (``--no-journal``, a ledger that
keeps nothing), in alternation, each run from an empty ledger.

    python -m benchmarks.ledger_overhead [--runs 5] [--files 2000] [--rate-limited]

Unlimited rates (the default) expose the ledger's own cost, which the API's 20 requests per
second would otherwise hide; ``--rate-limited`` runs the job as users do. 2,000 x 64 KB in 20
folders (one order each). The sandbox runs in its own process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.dataset import make_files
from benchmarks.proc import start_sandbox as start_sandbox_process

FOLDERS = 20


def start_sandbox(rps: int) -> tuple[subprocess.Popen[str], str, str]:
    key = "bench-key"
    process, base_url = start_sandbox_process("--rps", str(rps), "--api-key", key)
    return process, base_url, key


def run_once(
    job: Path, base_url: str, key: str, state: Path | None, limited: bool, files: int
) -> dict[str, float]:
    args = [sys.executable, "-m", "styldod_batch", "upload", str(job), "--json", "--no-progress"]
    args += ["--state", str(state)] if state else ["--no-journal"]
    if not limited:
        args += ["--rps", "100000", "--upload-rps", "0"]
    env = {**os.environ, "STYLDOD_API_KEY": key, "STYLDOD_BASE_URL": base_url}
    began = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"the job failed: {done.stderr[-2000:]}")
    report = orjson.loads(done.stdout)
    assert report["images"]["uploaded"] == files, report["images"]
    assert len(report["orders"]) == FOLDERS, report["orders"]
    return {
        "wall_s": wall,
        "engine_s": report["elapsed_s"],
        "rss_mb": report["peak_rss_mb"],
        "requests": report["requests"]["api"] + report["requests"]["storage"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rate-limited", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="styldod-ledger-bench-") as scratch:
        root = Path(scratch)
        make_files(root / "job", count=args.files, size=64 * 1024, folders=FOLDERS)
        sandbox, base_url, key = start_sandbox(20 if args.rate_limited else 100000)
        try:
            results: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
            for run in range(args.runs):
                # Alternating, and the first of each pair swapped every run.
                modes = ("without", "with") if run % 2 == 0 else ("with", "without")
                for mode in modes:
                    state = root / f"state-{run}" if mode == "with" else None
                    results[mode].append(
                        run_once(root / "job", base_url, key, state, args.rate_limited, args.files)
                    )
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    summary = {
        mode: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        for mode, runs in results.items()
    }
    overhead = summary["with"]["engine_s"] / summary["without"]["engine_s"] - 1
    wall_overhead = summary["with"]["wall_s"] / summary["without"]["wall_s"] - 1
    print(
        orjson.dumps(
            {
                "runs": args.runs,
                "files": args.files,
                "rate_limited": args.rate_limited,
                "median": summary,
                "ledger_overhead": round(overhead, 4),
                "ledger_overhead_wall": round(wall_overhead, 4),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    if args.rate_limited:
        bound = summary["with"]["requests"] / 20
        print(
            f"with the ledger: {summary['with']['engine_s']:.2f} s for a bound of {bound:.1f} s "
            f"({summary['with']['engine_s'] / bound:.3f} x)"
        )
    print(
        f"ledger overhead: {overhead * 100:+.1f} % of the run's time "
        f"({wall_overhead * 100:+.1f} % of the process's wall time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
