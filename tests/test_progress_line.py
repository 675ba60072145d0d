"""The live line: it fits the terminal, keeps counting while orders are awaited and outputs
downloaded, and its clock never stops; the summary gives each step's time."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console

from styldod_batch import Settings, Uploader
from styldod_batch.progress import Meter, Snapshot, _TerminalLine, fit_parts
from styldod_batch.report import Report
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import make_tree

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _lines(console: Console) -> list[str]:
    out = console.file
    assert isinstance(out, io.StringIO)
    text = _ANSI.sub("", out.getvalue())
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def _snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = {
        "phase": "uploading",
        "done": 123456,
        "total": 250000,
        "uploaded": 120000,
        "already_done": 3456,
        "files_per_s": 123.4,
        "mb_per_s": 45.6,
        "eta_s": 5400.0,
        "elapsed_s": 3725.0,
        "paced_by": 20.0,
    }
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def _terminal(width: int) -> tuple[_TerminalLine, Console]:
    console = Console(
        file=io.StringIO(), width=width, force_terminal=True, color_system=None, height=25
    )
    return _TerminalLine(console), console


def test_the_line_fits_80_columns_and_drops_whole_details() -> None:
    parts = [
        "123.4 files/s 45.6 MB/s",
        "ETA 1:30:00",
        "3456 already done",
        "paced by the 20 req/s limit",
    ]
    for width in (40, 60, 80, 120, 200):
        line, console = _terminal(width)
        line.show(_snapshot())
        line.stop()
        shown = _lines(console)
        assert shown, width
        assert all(cell_len(text) < width for text in shown), (width, shown)
        text = shown[-1]
        assert text.startswith("uploading") and "123456/250000" in text
        assert width < 60 or "123456/250000 49%" in text
        assert "1:02:05" in text, "the clock is always there"
        # Each detail whole or absent: nothing cut mid-word.
        left = text.split("1:02:05", 1)[1]
        for part in parts:
            left = left.replace(part, "")
        assert left.strip() == "", (width, text)
    wide, console = _terminal(200)
    wide.show(_snapshot())
    wide.stop()
    assert all(part in _lines(console)[-1] for part in parts)


def test_fit_parts_keeps_whole_parts() -> None:
    assert fit_parts(["aaa", "bbb", "ccc"], 8) == "aaa  bbb"
    assert fit_parts(["a long one", "short"], 6) == "short"
    assert fit_parts(["aaa", "bbb"], 2) == ""


def test_the_clock_keeps_going_once_the_bar_is_full() -> None:
    line, console = _terminal(80)
    line.show(_snapshot(done=10, total=10, elapsed_s=65.0))
    line.show(_snapshot(done=10, total=10, elapsed_s=130.0))
    line.stop()

    assert "2:10" in _lines(console)[-1]


def test_waiting_and_downloading_count_orders_and_outputs() -> None:
    meter = Meter()
    report = Report(phase="waiting for orders", uploaded=10, total=10, scan_complete=True)
    finished = [0]
    report.step_progress = lambda: (finished[0], 4)

    first = meter.read(report)
    finished[0] = 3
    later = meter.read(report)
    report.phase = "downloading"
    report.step_progress = lambda: (7, 10)
    report.bytes_downloaded = 3_500_000
    fetching = meter.read(report)

    assert (first.done, first.total, first.unit) == (0, 4, "orders")
    assert (later.done, later.total) == (3, 4)
    assert "waiting for orders: 3/4 orders" in later.describe()
    assert (fetching.done, fetching.total, fetching.unit) == (7, 10, "outputs")
    line, console = _terminal(80)
    line.show(fetching)
    line.stop()
    assert "7/10 outputs 70%" in _lines(console)[-1]
    assert "3.5 MB" in _lines(console)[-1], "the bytes fetched so far"
    assert "downloading: 7/10 outputs; 3.5 MB" in fetching.describe()


def test_the_summary_gives_each_steps_time() -> None:
    report = Report(elapsed_s=12.0, step_s={"wait": 40.0, "download": 5.25})

    assert "Time: upload 12.0 s, waiting for orders 40.0 s, download 5.2 s" in report.summary()
    assert "Time:" not in Report(elapsed_s=3.0).summary(), "an upload alone: said once"


async def test_follow_and_download_time_their_steps_and_count_live(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "photos", folders=2, files=2, size=300)
    box = await sandbox_factory(rps=1000)
    settings = Settings(base_url=box.base_url, api_key=box.api_key, state=str(tmp_path / "s"))
    seen: list[tuple[int, int | None]] = []

    async with Uploader(settings) as up:
        report = await up.run([tmp_path / "photos"])
        upload_s = report.elapsed_s
        assert report.step_progress is None
        assert await up.follow(report, timeout_s=60)
        await up.download(report, tmp_path / "edited")
        if report.step_progress is not None:
            seen.append(report.step_progress())
        assert up.current_report is not None
        # The live report still counts requests, but the upload's time ended with it.
        assert up.current_report.elapsed_s == upload_s
        assert report.phase == "done"

    assert report.step_s["wait"] > 0 and report.step_s["download"] > 0
    assert report.step_progress is None, "no live count once the step ended"
    assert "Time: upload" in report.summary()
    assert report.outputs == {"downloaded": 4}
    assert seen == []
