"""``python -m benchmarks [--quick] [--profile]``: prepare, start targets, run, write results.

Exit status: 0 when every run was correct, 1 on a correctness failure (a file or byte that
did not arrive, a 429 the engine received, the engine over a memory bound), never on timing;
2 when the harness itself could not run; 130 on Ctrl-C. Whatever it started is stopped in
every case.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from benchmarks import results
from benchmarks.contenders import (
    Curl,
    EngineDryRun,
    EngineFullJob,
    EngineUploadPath,
    PlainJob,
    PlainScript,
    Rclone,
    S5cmd,
    S5cmdDryRun,
)
from benchmarks.dataset import FileSet, make_files, make_sparse_files, make_tiny_files
from benchmarks.machine import describe, source_fingerprint
from benchmarks.plan import Plan
from benchmarks.targets import NginxSink, SandboxProcess, SeaweedTarget, find_nginx
from benchmarks.workloads import Lane, Runner, Workload

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WORK = HERE / "work"
CLI = Path(sys.executable).parent / "styldod-batch"

FULL_JOB_NOTE = (
    "engine (full job) goes through the sandbox (Order API at 20 requests/s, pre-signed "
    "URLs for its Python storage gateway in front of another SeaweedFS): the whole job's "
    "cost, not comparable with the raw rows."
)


class Log:
    def __init__(self) -> None:
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f} s] {message}", file=sys.stderr, flush=True)


def ensure_tools(log: Log) -> list[str]:
    """Full runs install nginx-light and rclone from Debian when they are missing."""
    wanted = []
    if find_nginx() is None:
        wanted.append("nginx-light")
    if shutil.which("rclone") is None:
        wanted.append("rclone")
    if not wanted:
        return []
    log(f"installing {', '.join(wanted)} (apt-get)")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *wanted]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
    if subprocess.run(install, **quiet).returncode != 0:  # type: ignore[call-overload]
        subprocess.run(["apt-get", "update"], **quiet)  # type: ignore[call-overload]
        subprocess.run(install, **quiet)  # type: ignore[call-overload]
    return [f"installed {', '.join(wanted)} with apt-get for this run"]


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _raise_on_terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def throughput_lanes(key: str) -> list[Lane]:
    return [
        Lane(key, "seaweedfs", EngineUploadPath()),
        Lane(key, "seaweedfs", Curl()),
        Lane(key, "seaweedfs", S5cmd()),
        Lane(key, "seaweedfs", Rclone()),
        Lane(key, "seaweedfs", PlainScript()),
        Lane(key, "sandbox", EngineFullJob(upload_rps=0)),
        Lane(key, "sink", EngineUploadPath(accept_missing_etag=True)),
        Lane(key, "sink", Curl()),
        Lane(key, "sink", PlainScript()),
    ]


def build_workloads(plan: Plan, work: Path) -> list[tuple[Workload, Callable[[], FileSet]]]:
    """Each workload with the function that makes its files (made just before it runs)."""
    kib = plan.a_size // 1024
    return [
        (
            Workload(
                "a",
                "many small files",
                FileSet(work / "a", ()),
                throughput_lanes("a"),
                plan.runs,
                notes=[FULL_JOB_NOTE],
            ),
            lambda: make_files(work / "a", count=plan.a_files, size=plan.a_size, seed=1),
        ),
        (
            Workload(
                "b",
                "a few large files",
                FileSet(work / "b", ()),
                throughput_lanes("b"),
                plan.runs,
                notes=[FULL_JOB_NOTE],
            ),
            lambda: make_files(work / "b", count=plan.b_files, size=plan.b_size, seed=2),
        ),
        (
            Workload(
                "c",
                f"the rate-limited job ({kib} KiB files, one order per folder)",
                FileSet(work / "c", ()),
                [
                    Lane("c", "sandbox", EngineFullJob()),
                    Lane("c", "sandbox", PlainJob()),
                    Lane("c", "seaweedfs", Rclone(tpslimit=plan.c_rps)),
                ],
                plan.c_runs,
                rate=plan.c_rps,
                compare_across_targets=True,
                notes=[
                    f"Bound = requests that reached the server / {plan.c_rps} per second "
                    "(for rclone: one transaction per file, a lower bound).",
                    "rclone cannot place orders: it only uploads the files, to SeaweedFS, "
                    "which has no rate limiter (so no 429 can reach it).",
                    "429s of the engine and the plain script are counted by the sandbox "
                    "(its request log) and by the client itself; the larger count is shown.",
                ],
            ),
            lambda: make_files(
                work / "c",
                count=plan.c_files,
                size=plan.c_size,
                folders=plan.c_folders,
                seed=3,
            ),
        ),
        (
            Workload(
                "d",
                "planning (dry run)",
                FileSet(work / "d", ()),
                [Lane("d", "local", EngineDryRun()), Lane("d", "local", S5cmdDryRun())],
                plan.runs,
                engine_rss_bound_mb=200.0,
            ),
            lambda: make_tiny_files(work / "d", count=plan.d_files, folders=plan.d_folders),
        ),
        (
            Workload(
                "e",
                "very large files, full engine",
                FileSet(work / "e", ()),
                [Lane("e", "sandbox", EngineFullJob(upload_rps=0))],
                plan.e_runs,
                engine_rss_bound_mb=100.0,
                notes=["Sparse files: the point is memory, which must not grow with file size."],
            ),
            lambda: make_sparse_files(work / "e", count=plan.e_files, size=plan.e_size),
        ),
    ]


def warm_up(runner: Runner, seaweed: SeaweedTarget, work: Path, log: Log) -> None:
    """First writes make SeaweedFS grow volumes; no measured run should pay for that."""
    log("warming up both SeaweedFS instances (not measured)")
    seaweed.warm_up()
    files = make_files(work / "warm-up", count=24, size=1024 * 1024, seed=9)
    rehearsal = Workload(
        "warm-up", "warm-up", files, [Lane("w", "sandbox", EngineFullJob(upload_rps=0))], 1
    )
    runner.run(rehearsal)
    shutil.rmtree(files.root, ignore_errors=True)
    failures = rehearsal.lanes[0].failures
    if failures:
        raise RuntimeError(f"the engine could not upload to the sandbox: {failures[0]}")


def run(plan: Plan, *, only: set[str] | None = None) -> int:
    log = Log()
    started = time.monotonic()
    generated_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes: list[str] = []
    # Every contender, also in CI's quick run: the tools come from Debian's packages.
    notes += ensure_tools(log)
    nginx = find_nginx()
    if nginx is None:
        notes.append("nginx is not installed: the sink rows were skipped")
    machine = describe(ROOT)
    WORK.mkdir(exist_ok=True)
    work = WORK / f"run-{int(time.time())}"
    work.mkdir()
    failures: list[str] = []
    done: list[Workload] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_if_empty, WORK)
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        log(f"{plan.mode} run, concurrency {plan.concurrency}; work files in {work}")
        sandbox = SandboxProcess(CLI, work, rps=plan.c_rps)
        stack.callback(sandbox.stop)
        sandbox.launch()
        seaweed = SeaweedTarget()
        stack.callback(seaweed.stop)
        seaweed.start()
        log(f"SeaweedFS S3 at {seaweed.endpoint}")
        sink = None
        if nginx is not None:
            sink = NginxSink(nginx)
            stack.callback(sink.stop)
            sink.start()
            log(f"nginx sink at {sink.base_url} (bodies on {sink.root})")
        sandbox.wait_ready()
        log(f"sandbox: API {sandbox.base_url}, storage gateway {sandbox.storage_url}")
        runner = Runner(
            workdir=work,
            concurrency=plan.concurrency,
            timeout_s=plan.timeout_s,
            seaweed=seaweed,
            sink=sink,
            sandbox=sandbox,
            log=log,
        )
        warm_up(runner, seaweed, work, log)
        for workload, make in build_workloads(plan, work):
            if only and workload.key not in only:
                continue
            log(f"({workload.key}) {workload.title}: making files")
            workload.fileset = make()
            log(
                f"({workload.key}) {workload.fileset.count:,} files, "
                f"{workload.fileset.total_bytes / 1e6:,.1f} MB; {workload.runs} round(s)"
            )
            runner.run(workload)
            failures += [f for lane in workload.lanes for f in lane.failures]
            shutil.rmtree(workload.fileset.root, ignore_errors=True)
            done.append(workload)
        log("stopping the servers")
    source = machine["versions"]["styldod-batch source"]
    if source_fingerprint(ROOT) != source:
        notes.append(
            "the engine's source (src/) changed while this ran: later runs may have used "
            f"newer code than the commit named above (source hash {source} at the start, "
            f"{source_fingerprint(ROOT)} at the end)"
        )
    doc = results.document(
        mode=plan.mode,
        concurrency=plan.concurrency,
        machine=machine,
        workloads=done,
        failures=failures,
        notes=notes,
        duration_s=time.monotonic() - started,
        generated_at=generated_at,
    )
    RESULTS.mkdir(exist_ok=True)
    # Neither the quick run (CI) nor a partial one (--only) overwrites the full run's results,
    # which the README shows.
    stem = "quick" if plan.mode != "full" else "partial" if only else "latest"
    results.write_json(doc, RESULTS / f"{stem}.json")
    (RESULTS / f"{stem}.md").write_text(results.markdown(doc))
    results.chart(doc, RESULTS / f"{stem}.png")
    print(results.markdown(doc), flush=True)
    log(f"results in {RESULTS}/{stem}.{{json,md,png}}; {len(failures)} correctness failure(s)")
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="The engine against curl, s5cmd, rclone and a plain aiohttp script on the "
        "same files, targets and concurrency; writes benchmarks/results/latest.{json,md,png}.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one run each (for CI, < 3 minutes)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the engine's upload path on (a) against the nginx sink "
        "(writes benchmarks/results/profile.txt) and nothing else",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="for every contender")
    parser.add_argument(
        "--only", metavar="KEYS", help="run only these workloads, e.g. 'ab' (for development)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_terminate)
    signal.signal(signal.SIGHUP, _raise_on_terminate)
    try:
        if args.profile:
            from benchmarks.profiling import profile

            return profile(Plan.full(args.concurrency), WORK, RESULTS / "profile.txt")
        plan = Plan.quick(args.concurrency) if args.quick else Plan.full(args.concurrency)
        return run(plan, only=set(args.only) if args.only else None)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
