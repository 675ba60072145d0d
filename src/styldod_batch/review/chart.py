"""A picture of a run, as inline SVG: requests per second against the rate limit, and the
throughput in files/s and MB/s. No library, no script: it prints, and it reads without
JavaScript (each chart carries a title and a description of what it shows)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from styldod_batch.review.runlog import RunRecord

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28
# More seconds than this are drawn as spans of several seconds (the busiest second of each).
MAX_POINTS = 900


@dataclass(frozen=True, slots=True)
class RunStats:
    seconds: int
    requests: int
    api: int
    storage: int
    busiest: int
    mean_rps: float
    rate_limited: int
    files: int
    megabytes: float
    files_per_s: float
    mb_per_s: float
    at_limit: float

    def verdict(self, limit: float) -> str:
        if self.requests == 0:
            return "No requests were recorded in this run."
        if self.seconds < 5:
            return (
                f"A short run ({self.seconds} busy seconds): its busiest second had "
                f"{self.busiest} requests, against the limit of {limit:g}/s."
            )
        if self.at_limit >= 0.5:
            return (
                f"The {limit:g}/s limit set the pace: {self.at_limit:.0%} of the busy seconds "
                f"were within 10 % of it."
            )
        return (
            f"The limit did not set the pace: the busiest second had {self.busiest} requests "
            f"(limit {limit:g}/s)."
        )


def run_stats(run: RunRecord) -> RunStats:
    ticks = run.ticks
    busy = [t for t in ticks if t[1] + t[2] > 0 or t[4] > 0]
    seconds = len(busy)
    requests = sum(t[1] + t[2] for t in ticks)
    files = sum(t[4] for t in ticks)
    megabytes = sum(t[5] for t in ticks) / 1e6
    busiest = max((t[1] + t[2] for t in ticks), default=0)
    near = sum(1 for t in busy if t[1] + t[2] >= 0.9 * run.rps)
    return RunStats(
        seconds=seconds,
        requests=requests,
        api=sum(t[1] for t in ticks),
        storage=sum(t[2] for t in ticks),
        busiest=busiest,
        mean_rps=requests / seconds if seconds else 0.0,
        rate_limited=sum(t[3] for t in ticks),
        files=files,
        megabytes=megabytes,
        files_per_s=files / seconds if seconds else 0.0,
        mb_per_s=megabytes / seconds if seconds else 0.0,
        at_limit=near / seconds if seconds else 0.0,
    )


def _spans(values: list[float], reduce: str) -> tuple[list[float], int]:
    """Values per second, or per span of ``step`` seconds when there are too many."""
    step = max(1, -(-len(values) // MAX_POINTS))
    if step == 1:
        return values, 1
    out = []
    for start in range(0, len(values), step):
        chunk = values[start : start + step]
        out.append(max(chunk) if reduce == "max" else sum(chunk) / len(chunk))
    return out, step


def _nice_top(value: float) -> float:
    for top in (1, 2, 5, 10, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 250, 500, 1000):
        if value <= top:
            return float(top)
    magnitude = 10 ** (len(str(int(value))) - 1)
    return float(-(-value // magnitude) * magnitude)


def _area(values: list[float], top: float, *, step_line: bool = True) -> str:
    """A stepped path over the plot area, one step per value."""
    if not values:
        return ""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    dx = plot_w / len(values)
    base = TOP + plot_h

    def y(v: float) -> float:
        return base - min(v, top) / top * plot_h

    parts = [f"M{LEFT:.1f},{base:.1f}"]
    for i, v in enumerate(values):
        x0 = LEFT + i * dx
        if step_line:
            parts.append(f"L{x0:.1f},{y(v):.1f}L{x0 + dx:.1f},{y(v):.1f}")
        else:
            parts.append(f"L{x0 + dx / 2:.1f},{y(v):.1f}")
    parts.append(f"L{LEFT + plot_w:.1f},{base:.1f}Z")
    return "".join(parts)


def _line(values: list[float], top: float) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    dx = plot_w / max(1, len(values))
    base = TOP + plot_h
    points = " ".join(
        f"{LEFT + (i + 0.5) * dx:.1f},{base - min(v, top) / top * plot_h:.1f}"
        for i, v in enumerate(values)
    )
    return points


def _frame(top: float, seconds: int, unit: str) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    out = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>']
    for fraction in (0, 0.5, 1):
        y = base - fraction * plot_h
        label = f"{top * fraction:g}"
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(
            f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        x = LEFT + fraction * plot_w
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{base + 16}" text-anchor="middle">'
            f"{_duration(seconds * fraction)}</text>"
        )
    out.append(f'<text class="tick" x="{LEFT}" y="{TOP - 2}">{escape(unit)}</text>')
    return "".join(out)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _svg(ident: str, title: str, desc: str, body: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" preserveAspectRatio="xMidYMid meet">'
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>'
        f"{body}</svg>"
    )


def requests_chart(run: RunRecord, ident: str) -> str:
    stats = run_stats(run)
    total = [float(t[1] + t[2]) for t in run.ticks]
    api = [float(t[1]) for t in run.ticks]
    total_s, step = _spans(total, "max")
    api_s, _ = _spans(api, "max")
    top = _nice_top(max([run.rps * 1.25, *total_s]))
    plot_h = HEIGHT - TOP - BOTTOM
    limit_y = TOP + plot_h - run.rps / top * plot_h
    per = "second" if step == 1 else f"busiest second of each {step} s"
    body = (
        _frame(top, len(run.ticks), "requests/s")
        + f'<path class="storage" d="{_area(total_s, top)}"/>'
        + f'<path class="api" d="{_area(api_s, top)}"/>'
        + f'<line class="limit" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{limit_y:.1f}" '
        f'y2="{limit_y:.1f}"/>'
        + f'<text class="limit-label" x="{WIDTH - RIGHT - 4}" y="{limit_y - 4:.1f}" '
        f'text-anchor="end">limit {run.rps:g}/s</text>'
    )
    desc = (
        f"Requests per {per} over {_duration(len(run.ticks))}: {stats.requests} in all "
        f"({stats.api} API calls, {stats.storage} storage PUTs), busiest second "
        f"{stats.busiest}, mean {stats.mean_rps:.1f}/s over the busy seconds, against the "
        f"limit of {run.rps:g}/s; {stats.rate_limited} answered 429. " + stats.verdict(run.rps)
    )
    return _svg(ident, "Requests per second against the rate limit", desc, body)


def throughput_chart(run: RunRecord, ident: str) -> str:
    stats = run_stats(run)
    files, step = _spans([float(t[4]) for t in run.ticks], "mean")
    mbs, _ = _spans([t[5] / 1e6 for t in run.ticks], "mean")
    top_files = _nice_top(max([1.0, *files]))
    top_mb = max(mbs, default=0.0) or 1.0
    scaled = [v / top_mb * top_files for v in mbs]
    body = (
        _frame(top_files, len(run.ticks), "files/s")
        + f'<polyline class="files" points="{_line(files, top_files)}"/>'
        + f'<polyline class="mbs" points="{_line(scaled, top_files)}"/>'
        + f'<text class="tick mbs-label" x="{WIDTH - RIGHT}" y="{TOP - 2}" text-anchor="end">'
        f"MB/s (top {top_mb:.2f})</text>"
    )
    per = "second" if step == 1 else f"{step}-second span (mean)"
    desc = (
        f"Files and megabytes uploaded per {per}: {stats.files} files, "
        f"{stats.megabytes:.1f} MB; {stats.files_per_s:.1f} files/s and "
        f"{stats.mb_per_s:.2f} MB/s over the busy seconds."
    )
    return _svg(ident, "Upload throughput: files per second and MB per second", desc, body)
