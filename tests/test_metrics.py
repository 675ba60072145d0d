"""``--metrics-file``: the run's counters in the Prometheus text format, for node_exporter's
textfile collector, replaced atomically during the run and at its end."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path

import pytest

from styldod_batch.metrics import MetricsFile, escape_label, render
from styldod_batch.models import OrderResult
from styldod_batch.report import Report
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree
from tests.runner_inprocess import run_main

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> Samples:
    """A strict reader of the text exposition format: every sample's metric has HELP and
    TYPE lines before it, every line is whole, the text ends with a newline."""
    assert text.endswith("\n"), "a whole file ends with a newline"
    helped: set[str] = set()
    typed: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge"), line
            assert name not in typed, f"{name} typed twice"
            typed[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample: {line!r}"
        name, labels_text, value = match.groups()
        assert name in typed and name in helped, f"{name} has no TYPE/HELP line before it"
        labels: set[tuple[str, str]] = set()
        if labels_text:
            pairs = _LABEL.findall(labels_text)
            assert "".join(f'{k}="{v}",' for k, v in pairs).rstrip(",") == labels_text, line
            labels = {(k, _unescape(v)) for k, v in pairs}
        samples[(name, frozenset(labels))] = float(value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_run_writes_its_counters_and_a_failed_run_keeps_the_last_success(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "photos", folders=2, files=3, size=300)
    (tmp_path / "broken" / "listing").mkdir(parents=True)
    (tmp_path / "broken" / "listing" / "empty.jpg").write_bytes(b"")
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    metrics = tmp_path / "textfile" / "styldod.prom"
    metrics.parent.mkdir()
    job = tmp_path / "job.toml"  # a job-file key too
    job.write_text(f'metrics_file = "{metrics}"\nwait = true\n')
    state = str(tmp_path / "state")

    before = time.time()
    ok = await run_main(
        "upload", str(tmp_path / "photos"), "--job", str(job), "--state", state, env=env
    )
    assert ok.returncode == 0, ok.stderr
    good = parse(metrics.read_text())
    api_requests = len(box.log.select(kind="api"))
    failed = await run_main(
        "upload",
        str(tmp_path / "broken"),
        "--metrics-file",
        str(metrics),
        "--state",
        state,
        env=env,
    )
    assert failed.returncode == 1
    bad = parse(metrics.read_text())

    assert value(good, "styldod_batch_images", outcome="uploaded") == len(files) == 6
    assert value(good, "styldod_batch_images", outcome="failed") == 0
    orders = {dict(k[1])["state"]: v for k, v in good.items() if k[0] == "styldod_batch_orders"}
    assert sum(orders.values()) == 2 and "failed" not in orders, orders
    assert value(good, "styldod_batch_requests_total", kind="api") == api_requests > 0
    assert value(good, "styldod_batch_requests_total", kind="storage") == 6
    assert value(good, "styldod_batch_retries_total") == 0
    assert value(good, "styldod_batch_rate_limited_total") == 0
    assert value(good, "styldod_batch_uploaded_bytes_total") == sum(f.stat().st_size for f in files)
    assert value(good, "styldod_batch_run_duration_seconds") > 0
    assert value(good, "styldod_batch_upload_duration_seconds") > 0
    assert value(good, "styldod_batch_step_duration_seconds", step="wait") > 0  # --wait
    assert value(good, "styldod_batch_success") == 1
    assert value(good, "styldod_batch_running") == 0
    last_success = value(good, "styldod_batch_last_success_timestamp_seconds")
    assert before <= last_success <= time.time()

    assert value(bad, "styldod_batch_images", outcome="failed") == 1
    assert value(bad, "styldod_batch_success") == 0
    assert value(bad, "styldod_batch_last_success_timestamp_seconds") == last_success
    assert value(bad, "styldod_batch_run_start_timestamp_seconds") > last_success
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["styldod.prom"], "no temp left"


async def test_an_api_that_cannot_be_reached_still_ends_the_file_as_failed(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "photos", folders=1, files=1, size=100)
    metrics = tmp_path / "styldod.prom"
    metrics.write_text(
        "# HELP styldod_batch_last_success_timestamp_seconds x\n"
        "# TYPE styldod_batch_last_success_timestamp_seconds gauge\n"
        "styldod_batch_last_success_timestamp_seconds 1700000000\n"
    )
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": "http://127.0.0.1:9"}

    done = await run_main(
        "upload",
        str(tmp_path / "photos"),
        "--metrics-file",
        str(metrics),
        "--state",
        str(tmp_path / "state"),
        env=env,
    )

    assert done.returncode == 4, done.stderr
    samples = parse(metrics.read_text())
    assert value(samples, "styldod_batch_success") == 0
    assert value(samples, "styldod_batch_last_success_timestamp_seconds") == 1700000000


async def test_a_metrics_file_in_a_missing_folder_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "photos", folders=1, files=1, size=100)
    env = {"STYLDOD_API_KEY": "k", "STYLDOD_BASE_URL": "http://127.0.0.1:9"}
    missing = tmp_path / "nowhere" / "styldod.prom"

    done = await run_main(
        "upload", str(tmp_path / "photos"), "--metrics-file", str(missing), env=env
    )

    assert done.returncode == 2
    assert "metrics file" in done.stderr


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    report = Report()
    report.add_order(OrderResult(key="k", status="created", images=1, order_status='we"ird\\\n'))

    text = render(report, started=1.0, now=2.0, running=True, success=None, last_success=None)

    samples = parse(text)
    assert value(samples, "styldod_batch_orders", state='we"ird\\\n') == 1
    assert "styldod_batch_last_success_timestamp_seconds" not in text
    assert "styldod_batch_success" not in text, "no verdict while it runs"


def test_the_file_is_replaced_by_rename_and_never_seen_half_written(tmp_path: Path) -> None:
    path = tmp_path / "styldod.prom"
    report = Report()
    metrics = MetricsFile(path, lambda: report)
    metrics.write(report)
    first = path.read_bytes()
    # A rename leaves the old file whole for whoever holds it open; a rewrite in place would
    # change it under the reader. (Inode numbers are reused, so they cannot tell.)
    held = path.open("rb")
    stop = threading.Event()
    reads: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            try:
                samples = parse(text)
                assert ("styldod_batch_last_update_timestamp_seconds", frozenset()) in samples
            except AssertionError as exc:
                problems.append(str(exc))
            reads.append(len(text))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(300):
            report.failures = []
            # Counts of changing sizes: each file has another length than the one before.
            report.orders = [
                OrderResult(key=f"o{i}", status="created", images=1, order_status=f"s{i}")
                for i in range(n % 40)
            ]
            metrics.write(report)
    finally:
        stop.set()
        thread.join()

    assert not problems, problems[:3]
    assert len(set(reads)) > 1, "the reader saw the file change"
    with held:
        assert held.read() == first, "replaced by a rename, not rewritten in place"
    assert os.listdir(tmp_path) == ["styldod.prom"]


async def test_the_file_is_written_every_few_seconds_while_the_run_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "styldod.prom"
    report = Report(phase="uploading")
    metrics = MetricsFile(path, interval_s=0.05)
    metrics.start(lambda: report)
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if path.exists():
                break
        first = parse(path.read_text())
        report.uploaded = 7
        await asyncio.sleep(0.2)
        later = parse(path.read_text())
    finally:
        await metrics.stop()

    assert value(first, "styldod_batch_running") == 1
    assert value(first, "styldod_batch_phase", phase="uploading") == 1
    assert value(later, "styldod_batch_images", outcome="uploaded") == 7


@pytest.mark.parametrize("success", [True, False])
def test_the_last_success_is_kept_until_a_run_succeeds(tmp_path: Path, success: bool) -> None:
    path = tmp_path / "styldod.prom"
    MetricsFile(path).finish(Report(), success=True)
    first = value(parse(path.read_text()), "styldod_batch_last_success_timestamp_seconds")
    time.sleep(0.01)

    MetricsFile(path).finish(Report(), success=success)

    then = value(parse(path.read_text()), "styldod_batch_last_success_timestamp_seconds")
    assert (then > first) if success else (then == first)
