"""What the content check costs per file, against what the upload path costs per file.

    python -m benchmarks.content_check [--files 2000] [--runs 3]

1. The check alone: ``content.check_file`` (open, read the head, seek, read the tail) on
   every file, as the scan thread runs it; median of 5 passes, in microseconds per file.
2. The upload path: the same job run by the engine (``--no-journal``, unlimited rates, the
   sandbox in its own process), with ``--check-content`` and without, in alternation; the
   run's own time per file is the upload path's cost per file.

The check must stay under 1 % of the upload path. Files: 64 KiB JPEGs (random bytes between
a JPEG's start and end markers) in 20 folders.
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

from benchmarks.ledger_overhead import start_sandbox
from styldod_batch.content import check_file

FOLDERS = 20
SIZE = 64 * 1024


def make_jpegs(root: Path, count: int) -> list[Path]:
    files = []
    for index in range(count):
        path = root / f"listing-{index % FOLDERS:03d}" / f"img{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(SIZE - 6) + b"\xff\xd9")
        files.append(path)
    return files


def check_pass(files: list[Path]) -> float:
    """Seconds per file for one pass of the check over ``files``."""
    began = time.perf_counter()
    for path in files:
        assert check_file(str(path), SIZE, "image/jpeg") is None
    return (time.perf_counter() - began) / len(files)


def run_job(job: Path, base_url: str, key: str, check: bool, files: int) -> float:
    """The engine's own time for the job (its report's ``elapsed_s``)."""
    args = [sys.executable, "-m", "styldod_batch", "upload", str(job), "--json", "--no-progress"]
    args += ["--no-journal", "--rps", "100000", "--upload-rps", "0"]
    args += ["--check-content"] if check else []
    env = {**os.environ, "STYLDOD_API_KEY": key, "STYLDOD_BASE_URL": base_url}
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the job failed: {done.stderr[-2000:]}")
    report = orjson.loads(done.stdout)
    assert report["images"]["uploaded"] == files, report["images"]
    elapsed: float = report["elapsed_s"]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="styldod-content-bench-") as scratch:
        job = Path(scratch) / "job"
        files = make_jpegs(job, args.files)
        check_s = statistics.median(check_pass(files) for _ in range(5))
        sandbox, base_url, key = start_sandbox(100000)
        runs: dict[bool, list[float]] = {False: [], True: []}
        try:
            for run in range(args.runs):
                for check in (False, True) if run % 2 == 0 else (True, False):
                    runs[check].append(run_job(job, base_url, key, check, args.files))
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    without, with_check = statistics.median(runs[False]), statistics.median(runs[True])
    upload_s = without / args.files
    result = {
        "files": args.files,
        "file_bytes": SIZE,
        "check_us_per_file": round(check_s * 1e6, 2),
        "upload_path_us_per_file": round(upload_s * 1e6, 1),
        "check_share_of_upload_path": round(check_s / upload_s, 5),
        "run_s_without": round(without, 3),
        "run_s_with": round(with_check, 3),
        "run_difference": round(with_check / without - 1, 4),
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    share = check_s / upload_s
    print(
        f"content check: {check_s * 1e6:.1f} us per file, {share * 100:.2f} % of the upload "
        f"path ({upload_s * 1e6:.0f} us per file); whole runs {without:.2f} s without, "
        f"{with_check:.2f} s with (noise included)"
    )
    return 0 if share < 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
