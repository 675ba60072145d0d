"""``python -m benchmarks --profile``: where the engine's upload path spends its time.

Workload (a) (many small files) through ``FileUploader`` to the nginx sink, which drains as
fast as a server can, so what remains is the engine's per-file cost. Three passes, each a
process of its own: unprofiled (the reference time), under pyinstrument (sampling: own time
per function and the call tree) and under cProfile (deterministic: calls and time per call).
Both profilers see the event loop's thread only: work the engine hands to threads (reads of
files above its inline-read size, streamed chunks) is not in them.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from benchmarks.contenders import EngineUploadPath, RunContext, last_json
from benchmarks.dataset import make_files, write_job
from benchmarks.plan import Plan
from benchmarks.proc import run_measured
from benchmarks.targets import NginxSink, find_nginx


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def profile(plan: Plan, work_root: Path, out: Path) -> int:
    nginx = find_nginx()
    if nginx is None:
        print("nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
        return 2
    work_root.mkdir(exist_ok=True)
    work = work_root / f"profile-{int(time.time())}"
    work.mkdir()
    sections = []
    complete = True
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_if_empty, work_root)
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        sink = NginxSink(nginx)
        stack.callback(sink.stop)
        sink.start()
        fileset = make_files(work / "a", count=plan.a_files, size=plan.a_size, seed=1)
        passes: list[tuple[str, Path | None, str]] = [
            ("unprofiled", None, ""),
            ("pyinstrument", work / "pyinstrument.txt", "pyinstrument"),
            ("cProfile", work / "cprofile.txt", "cprofile"),
        ]
        for label, raw, profiler in passes:
            prefix = f"profile-{label.lower()}"
            urls = sink.urls(prefix, fileset.names, fileset.content_type)
            job = write_job(fileset, urls, work / f"job-{prefix}.tsv")
            contender = EngineUploadPath(
                accept_missing_etag=True, profile=raw, profiler=profiler or "pyinstrument"
            )
            ctx = RunContext(fileset, work, plan.concurrency, prefix=prefix, job_file=job)
            invocation = contender.invocation(ctx)
            measured = run_measured(invocation.argv, env=invocation.env, timeout_s=plan.timeout_s)
            arrived = sum(sink.stored(prefix).values())
            sink.clear(prefix)
            if measured.returncode != 0 or arrived != fileset.total_bytes:
                print(measured.describe_failure(), file=sys.stderr)
                complete = False
                continue
            inner = last_json(measured).get("inner_s")
            sections.append(
                f"== {label}: wall {measured.wall_s:.2f} s (in the upload loop {inner} s), "
                f"CPU {measured.cpu_s:.2f} s; {arrived:,} bytes arrived ==\n"
                + ("" if raw is None else "\n" + raw.read_text())
            )
        header = (
            f"The engine's upload path (FileUploader.put), {fileset.count:,} files of "
            f"{plan.a_size // 1024} KiB, concurrency {plan.concurrency}, to nginx (DAV, tmpfs): "
            "python -m benchmarks --profile.\nProfiled passes run slower than the unprofiled "
            "one. Only the event loop's thread is seen: work handed to threads is not, and a "
            "call that releases the GIL is charged with the wait to get it back. "
            "'[self] asyncio/runners.py' is time inside uvloop's C loop (socket I/O, epoll).\n\n"
        )
        out.parent.mkdir(exist_ok=True)
        out.write_text(header + "\n\n".join(sections))
        print(f"profile written to {out}", file=sys.stderr)
    return 0 if complete else 1
