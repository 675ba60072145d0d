"""Running lanes (one contender on one target) in alternation, and checking every run.

A workload is a set of files and a list of lanes. Each round runs every lane once, in an
order rotated by one per round, so no contender always goes first (cold) or last; after
each run the target is asked what it stored and the run is checked against the files:
count, names and sizes, byte for byte in total. The sandbox's request log tells what arrived
at the sandbox: PUTs, their bytes, the 429s it answered and the busiest one-second window.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.contenders import Contender, RunContext, S3Access
from benchmarks.dataset import FileSet, write_job
from benchmarks.proc import run_measured
from benchmarks.targets import NginxSink, SandboxProcess, SeaweedTarget
from styldod_batch.sandbox.requestlog import most_in_window

# The sandbox counts arrivals per key in a sliding one-second window: a run that starts
# right after another would inherit its last second. This is a quiet period, not a wait
# for some event.
SANDBOX_QUIET_S = 1.1


@dataclass(slots=True)
class RunRecord:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    files: int
    bytes: int
    rate_limited: int | None
    requests: int | None
    inner_s: float | None
    orders: int | None = None
    bound_s: float | None = None
    max_per_window: int | None = None
    max_api_per_window: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # False when the run failed a check: it is listed, but left out of the medians.
    ok: bool = True


@dataclass(slots=True)
class Lane:
    workload: str
    target: str  # seaweedfs | sink | sandbox | local
    contender: Contender
    runs: list[RunRecord] = field(default_factory=list)
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"({self.workload}) {self.contender.name} -> {self.target}"


@dataclass(slots=True)
class Workload:
    key: str
    title: str
    fileset: FileSet
    lanes: list[Lane]
    runs: int
    # Requests per second the rate-limited job is paced at (its bound is requests / rate).
    rate: float | None = None
    # Peak RSS the engine must stay under, in MB (a correctness bound, not a timing).
    engine_rss_bound_mb: float | None = None
    # Compare the engine with peers on other targets too (the rate-limited job).
    compare_across_targets: bool = False
    notes: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Runner:
    def __init__(
        self,
        *,
        workdir: Path,
        concurrency: int,
        timeout_s: float,
        seaweed: SeaweedTarget | None,
        sink: NginxSink | None,
        sandbox: SandboxProcess | None,
        log: Any = print,
    ) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.seaweed = seaweed
        self.sink = sink
        self.sandbox = sandbox
        self.log = log

    def run(self, workload: Workload) -> None:
        for lane in workload.lanes:
            if lane.skipped is None:
                lane.skipped = lane.contender.missing()
                if lane.skipped is None:
                    lane.skipped = self._target_missing(lane)
        active = [lane for lane in workload.lanes if lane.skipped is None]
        for lane in workload.lanes:
            if lane.skipped is not None:
                self.log(f"  skip {lane.label}: {lane.skipped}")
        for round_index in range(workload.runs):
            shift = round_index % max(1, len(active))
            for lane in active[shift:] + active[:shift]:
                self._run_once(workload, lane, round_index)

    def _target_missing(self, lane: Lane) -> str | None:
        present = {
            "seaweedfs": self.seaweed,
            "sink": self.sink,
            "sandbox": self.sandbox,
            "local": True,
        }[lane.target]
        return None if present else f"target {lane.target} is not running"

    def _run_once(self, workload: Workload, lane: Lane, round_index: int) -> None:
        fileset = workload.fileset
        prefix = f"{workload.key}-{_slug(lane.contender.name)}-{lane.target}-{round_index}"
        ctx = RunContext(
            fileset=fileset,
            workdir=self.workdir,
            concurrency=self.concurrency,
            prefix=prefix,
            rate=workload.rate,
        )
        target = self._url_target(lane.target)
        needs = lane.contender.needs
        if needs == "urls":
            assert target is not None
            urls = target.urls(prefix, fileset.names, fileset.content_type)
            ctx.job_file = write_job(fileset, urls, self.workdir / f"job-{prefix}.tsv")
        elif needs == "s3":
            assert self.seaweed is not None
            ctx.s3 = S3Access(
                self.seaweed.endpoint,
                self.seaweed.bucket,
                self.seaweed.access_key,
                self.seaweed.secret_key,
            )
        mark = 0
        if needs == "api":
            assert self.sandbox is not None
            ctx.api_url = self.sandbox.base_url
            time.sleep(SANDBOX_QUIET_S)
            mark = self.sandbox.log_mark()
        invocation = lane.contender.invocation(ctx)
        # A fresh working directory per run, holding the engine's ledger too: whatever a
        # contender keeps starts empty, so a re-run is a run.
        cwd = self.workdir / f"cwd-{prefix}"
        cwd.mkdir()
        env = {**invocation.env, "STYLDOD_STATE": str(cwd / "state")}
        # What earlier runs wrote (SeaweedFS stores on disk) is flushed now, so its
        # writeback does not land in the middle of this run.
        os.sync()
        try:
            measured = run_measured(invocation.argv, env=env, cwd=cwd, timeout_s=self.timeout_s)
        finally:
            shutil.rmtree(cwd, ignore_errors=True)
        outcome = invocation.parse(measured)
        problems: list[str] = []
        if measured.returncode != 0:
            problems.append(measured.describe_failure())
        problems += [f"reported: {error}" for error in outcome.errors[:3]]

        record = RunRecord(
            wall_s=measured.wall_s,
            cpu_s=measured.cpu_s,
            peak_rss_mb=measured.peak_rss_mb,
            files=0,
            bytes=0,
            rate_limited=outcome.rate_limited,
            requests=outcome.requests,
            inner_s=outcome.inner_s,
            orders=outcome.orders,
            extra=dict(outcome.extra),
        )
        if needs in ("urls", "s3"):
            assert target is not None
            stored = target.stored(prefix)
            problems += _compare(stored, fileset)
            record.files = sum(1 for name in stored if name in fileset.sizes())
            record.bytes = sum(stored.values())
            target.clear(prefix)
            if workload.rate is not None:
                # The least it could take at that rate: one transaction per file.
                record.bound_s = fileset.count / workload.rate
        elif needs == "api":
            assert self.sandbox is not None
            self._check_sandbox(workload, lane, record, self.sandbox.log_since(mark), problems)
        else:  # a dry run: nothing is sent, the plan must cover every file
            record.files = outcome.files or 0
            record.bytes = 0
            if record.files != fileset.count:
                problems.append(f"planned {record.files} of {fileset.count} files")
        if lane.contender.is_engine and record.rate_limited:
            problems.append(f"the engine received {record.rate_limited} 429 answer(s)")
        if (
            lane.contender.is_engine
            and workload.engine_rss_bound_mb is not None
            and record.peak_rss_mb > workload.engine_rss_bound_mb
        ):
            problems.append(
                f"peak RSS {record.peak_rss_mb:.1f} MB exceeds the bound of "
                f"{workload.engine_rss_bound_mb:g} MB"
            )
        record.ok = not problems
        lane.runs.append(record)
        lane.failures += [f"{lane.label}, run {round_index + 1}: {p}" for p in problems]
        status = "ok" if not problems else "FAILED: " + problems[0][:300]
        self.log(
            f"  {lane.label:<58} run {round_index + 1}: {record.wall_s:7.2f} s wall, "
            f"{record.cpu_s:6.2f} s CPU, {record.peak_rss_mb:6.1f} MB  {status}"
        )

    def _url_target(self, name: str) -> SeaweedTarget | NginxSink | None:
        if name == "seaweedfs":
            return self.seaweed
        if name == "sink":
            return self.sink
        return None

    @staticmethod
    def _check_sandbox(
        workload: Workload,
        lane: Lane,
        record: RunRecord,
        entries: list[dict[str, Any]],
        problems: list[str],
    ) -> None:
        """What the sandbox saw: stored PUTs by file name, bytes, 429s, requests, windows."""
        traffic = [e for e in entries if e.get("kind") in ("api", "storage")]
        expected_sizes = workload.fileset.sizes()
        stored: dict[str, int] = {}
        for entry in traffic:
            if entry["kind"] == "storage" and entry["method"] == "PUT" and entry["status"] < 300:
                # /<bucket>/uploads/<batch>/<index>/<file_name as sent>, which the engine
                # makes <listing folder>/<file name>: a file at the top of the tree is named
                # after the tree's own folder, which the file set does not name.
                name = entry["path"].split("/", 5)[-1]
                if name not in expected_sizes and "/" in name:
                    name = name.split("/", 1)[1]
                stored[name] = entry["bytes_in"]
        problems += _compare(stored, workload.fileset)
        record.files = sum(1 for name in stored if name in workload.fileset.sizes())
        record.bytes = sum(stored.values())
        answered_429 = sum(1 for e in traffic if e.get("status") == 429)
        if record.rate_limited is None or answered_429 > record.rate_limited:
            record.rate_limited = answered_429
        record.extra["server_requests"] = len(traffic)
        record.extra["server_429"] = answered_429
        record.max_per_window = most_in_window([e["mono"] for e in traffic])
        record.max_api_per_window = most_in_window(
            [e["mono"] for e in traffic if e["kind"] == "api"]
        )
        if workload.rate is not None:
            record.bound_s = len(traffic) / workload.rate
        if record.orders is not None:
            wanted = expected_orders(workload.fileset)
            if record.orders < wanted:
                problems.append(f"{record.orders} of {wanted} orders were created")


def expected_orders(fileset: FileSet, per_order: int = 100) -> int:
    """One order per folder, split every ``per_order`` images (the engine's default)."""
    counts: dict[str, int] = {}
    for name in fileset.names:
        folder = name.rpartition("/")[0]
        counts[folder] = counts.get(folder, 0) + 1
    return sum(-(-count // per_order) for count in counts.values())


def _compare(stored: dict[str, int], fileset: FileSet) -> list[str]:
    expected = fileset.sizes()
    missing = [name for name in expected if name not in stored]
    wrong = [name for name in expected if name in stored and stored[name] != expected[name]]
    extra = [name for name in stored if name not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) never arrived, e.g. {missing[0]}")
    if wrong:
        name = wrong[0]
        problems.append(
            f"{len(wrong)} file(s) arrived with the wrong size, e.g. {name}: "
            f"{stored[name]} bytes, not {expected[name]}"
        )
    if extra:
        problems.append(f"{len(extra)} unexpected object(s), e.g. {extra[0]}")
    total = sum(stored.get(name, 0) for name in expected)
    if not problems and total != fileset.total_bytes:
        problems.append(f"{total} bytes arrived, not {fileset.total_bytes}")
    return problems


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
