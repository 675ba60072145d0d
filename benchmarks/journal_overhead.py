"""What the journal costs: the 1,000 x 64 KB job with and without it, in alternation.

    python -m benchmarks.journal_overhead [--runs 3] [--rate-limited]

Unlimited rates (the default) expose the journal's CPU cost; ``--rate-limited`` runs the
job as users do, at the API's 20 requests per second. The sandbox runs in its own process.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def make_job(root: Path) -> None:
    for folder in range(1, 21):
        directory = root / f"listing-{folder:02d}"
        directory.mkdir(parents=True)
        for index in range(1, 51):
            (directory / f"photo-{index}.jpg").write_bytes(os.urandom(64 * 1024))


def start_sandbox(rps: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", "sandbox", "--port", "0", "--rps", str(rps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.match(r"Order API: (http://\S+)", first)
    if not match:
        process.kill()
        raise RuntimeError(f"the sandbox did not start: {first!r}")
    return process, match.group(1)


def run_once(job: Path, base_url: str, journal: Path | None, limited: bool) -> dict[str, float]:
    args = [sys.executable, "-m", "styldod_batch", "upload", str(job), "--json", "--no-progress"]
    args += ["--journal", str(journal)] if journal else ["--no-journal"]
    if not limited:
        args += ["--rps", "100000", "--upload-rps", "0"]
    env = {**os.environ, "STYLDOD_API_KEY": "sandbox-key", "STYLDOD_BASE_URL": base_url}
    began = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"the job failed: {done.stderr[-2000:]}")
    report = orjson.loads(done.stdout)
    assert report["images"]["uploaded"] == 1000, report["images"]
    return {
        "wall_s": wall,
        "engine_s": report["elapsed_s"],
        "rss_mb": report["peak_rss_mb"],
        "requests": report["requests"]["api"] + report["requests"]["storage"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate-limited", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="styldod-journal-bench-") as scratch:
        root = Path(scratch)
        make_job(root / "job")
        sandbox, base_url = start_sandbox(20 if args.rate_limited else 100000)
        try:
            results: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
            for run in range(args.runs):
                for mode in ("without", "with"):
                    journal = root / f"j-{run}.sqlite" if mode == "with" else None
                    results[mode].append(
                        run_once(root / "job", base_url, journal, args.rate_limited)
                    )
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    summary = {
        mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for mode, runs in results.items()
    }
    overhead = summary["with"]["engine_s"] / summary["without"]["engine_s"] - 1
    print(
        orjson.dumps(
            {
                "runs": args.runs,
                "rate_limited": args.rate_limited,
                "median": summary,
                "journal_overhead": round(overhead, 4),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    bound = summary["with"]["requests"] / 20
    if args.rate_limited:
        print(
            f"with journal: {summary['with']['engine_s']:.2f} s for a bound of {bound:.1f} s "
            f"({summary['with']['engine_s'] / bound:.3f} x)"
        )
    print(f"journal overhead: {overhead * 100:+.1f} % of the run's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
