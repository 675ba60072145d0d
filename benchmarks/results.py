"""Results: the JSON document, the Markdown table and the chart (matplotlib, Agg)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import orjson

from benchmarks.workloads import Lane, Workload


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def lane_summary(lane: Lane, workload: Workload) -> dict[str, Any]:
    contender = lane.contender
    base: dict[str, Any] = {
        "contender": contender.name,
        "target": lane.target,
        "engine": contender.is_engine,
        "note": "; ".join(n for n in [contender.note, *lane.notes] if n),
    }
    if lane.skipped is not None:
        return {**base, "skipped": lane.skipped}
    # Medians over the runs that passed their checks (all of them, if none did).
    runs = [r for r in lane.runs if r.ok] or lane.runs
    wall = _median([r.wall_s for r in runs])
    assert wall is not None
    files = workload.fileset.count
    total = workload.fileset.total_bytes
    limited = [r.rate_limited for r in runs]
    bounds = [r.bound_s for r in runs if r.bound_s is not None]
    bound = _median(bounds)
    summary = {
        **base,
        "runs": len(runs),
        "failed_runs": len(lane.runs) - sum(1 for r in lane.runs if r.ok),
        "wall_s": _round(wall),
        "wall_s_each": [_round(r.wall_s) for r in lane.runs],
        "cpu_s": _round(_median([r.cpu_s for r in runs])),
        "files_per_s": _round(files / wall, 1),
        "mb_per_s": _round(total / 1e6 / wall, 2) if total > files else None,
        "peak_rss_mb": _round(max(r.peak_rss_mb for r in runs), 1),
        "rate_limited": None if None in limited else max(x or 0 for x in limited),
        "rate_limited_each": limited,
        "inner_s": _round(_median([r.inner_s for r in runs if r.inner_s is not None])),
        "requests": _median([float(r.requests) for r in runs if r.requests is not None]),
        "files_verified": min(r.files for r in lane.runs),
        "bytes_verified": min(r.bytes for r in lane.runs),
        "failures": lane.failures,
    }
    if bound is not None:
        summary["bound_s"] = _round(bound, 2)
        summary["wall_vs_bound"] = _round(wall / bound, 3)
    windows = [r.max_per_window for r in runs if r.max_per_window is not None]
    if windows:
        summary["max_requests_in_1s"] = max(windows)
        summary["max_api_requests_in_1s"] = max(
            r.max_api_per_window or 0 for r in runs if r.max_api_per_window is not None
        )
    orders = [r.orders for r in runs if r.orders is not None]
    if orders:
        summary["orders"] = min(orders)
    extra = [r.extra for r in runs if r.extra]
    if extra:
        summary["details_each"] = extra
    return summary


def _groups(workload: Workload) -> list[list[Lane]]:
    live = [lane for lane in workload.lanes if lane.skipped is None and lane.runs]
    if workload.compare_across_targets:
        return [live]
    by_target: dict[str, list[Lane]] = {}
    for lane in live:
        by_target.setdefault(lane.target, []).append(lane)
    return list(by_target.values())


def workload_summary(workload: Workload) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for lane in workload.lanes:
        results.setdefault(lane.target, {})[lane.contender.name] = lane_summary(lane, workload)
    for group in _groups(workload):
        engines = [lane for lane in group if lane.contender.is_engine]
        if not engines:
            continue
        engine = results[engines[0].target][engines[0].contender.name]
        ratios: dict[str, dict[str, float | None]] = {}
        for lane in group:
            if lane.contender.is_engine:
                continue
            peer = results[lane.target][lane.contender.name]
            wall_ratio = _round(engine["wall_s"] / peer["wall_s"], 3)
            fps_ratio = _round(engine["files_per_s"] / peer["files_per_s"], 3)
            peer["engine_wall_ratio"] = wall_ratio
            ratios[f"{lane.contender.name} @ {lane.target}"] = {
                "wall": wall_ratio,
                "files_per_s": fps_ratio,
                "cpu": _round(engine["cpu_s"] / peer["cpu_s"], 3) if peer["cpu_s"] else None,
            }
        engine["ratios"] = ratios
    return {
        "title": workload.title,
        "files": workload.fileset.count,
        "bytes": workload.fileset.total_bytes,
        "folders": len(workload.fileset.folders),
        "runs": workload.runs,
        "rate_limit_rps": workload.rate,
        "engine_rss_bound_mb": workload.engine_rss_bound_mb,
        "notes": workload.notes,
        "results": results,
    }


def document(
    *,
    mode: str,
    concurrency: int,
    machine: dict[str, Any],
    workloads: list[Workload],
    failures: list[str],
    notes: list[str],
    duration_s: float,
    generated_at: str,
) -> dict[str, Any]:
    return {
        "generated_at": generated_at,
        "mode": mode,
        "duration_s": round(duration_s, 1),
        "concurrency": concurrency,
        "machine": machine,
        "ratio_meaning": "engine value / peer value: wall > 1 means the engine took longer",
        "workloads": {w.key: workload_summary(w) for w in workloads},
        "ok": not failures,
        "failures": failures,
        "notes": notes,
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


# -- Markdown --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _spread(values: list[float]) -> str:
    return "-" if len(values) < 2 else f"{min(values):.2f}-{max(values):.2f}"


def _rate(value: float | None) -> str:
    """Three significant figures or so: 2,974 / 420 / 18.0 / 0.26."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for key, workload in doc["workloads"].items():
        for target in workload["results"].values():
            for entry in target.values():
                rows.append((key, entry))
    return rows


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    v = m["versions"]
    out = [
        f"# Benchmark results ({doc['mode']})",
        "",
        f"{doc['generated_at']}, {doc['duration_s']:.0f} s in all. Machine: {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}.",
        "",
        "Versions: " + ", ".join(f"{name} {value}" for name, value in v.items() if value) + ".",
        "",
        f"Concurrency {doc['concurrency']} for every contender; wall time is the median of "
        "the runs (range: the fastest and slowest run), each run a separate process "
        "(start-up included); CPU is user+sys of that "
        "process and its children; peak RSS from wait4; MB = 10^6 bytes. "
        "'engine ÷ this' is the engine's wall time divided by this contender's on the same "
        "target (above 1: the engine is slower).",
        "",
        "| Workload | Target | Contender | Runs | Wall s | Range s | CPU s | Files/s | MB/s "
        "| Peak RSS MB | 429s | engine ÷ this |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, entry in _rows(doc):
        title = f"({key})"
        if "skipped" in entry:
            out.append(
                f"| {title} | {entry['target']} | {entry['contender']} | - | skipped: "
                f"{entry['skipped']} | | | | | | | |"
            )
            continue
        name = f"**{entry['contender']}**" if entry["engine"] else entry["contender"]
        runs = str(entry["runs"])
        if entry["failed_runs"]:
            runs += f" (+{entry['failed_runs']} failed)"
        out.append(
            f"| {title} | {entry['target']} | {name} | {runs} "
            f"| {_fmt(entry['wall_s'])} | {_spread(entry['wall_s_each'])} | {_fmt(entry['cpu_s'])} "
            f"| {_rate(entry['files_per_s'])} | {_rate(entry['mb_per_s'])} "
            f"| {_fmt(entry['peak_rss_mb'], 1)} | {_fmt(entry['rate_limited'])} "
            f"| {_fmt(entry.get('engine_wall_ratio'))} |"
        )
    out += ["", "Workloads:", ""]
    for key, workload in doc["workloads"].items():
        size = workload["bytes"] / workload["files"]
        shown = f"{size / 1024**2:.0f} MiB" if size >= 1024**2 else f"{size / 1024:.0f} KiB"
        if size < 1024:
            shown = f"{size:.0f} B"
        line = (
            f"- ({key}) {workload['title']}: {workload['files']:,} files of {shown}"
            + (f" in {workload['folders']} folders" if workload["folders"] > 1 else "")
            + f", {workload['runs']} run(s) per contender."
        )
        out.append(line)
        out += [f"  {note}" for note in workload["notes"]]
    rate = [(key, w) for key, w in doc["workloads"].items() if w["rate_limit_rps"] is not None]
    for key, workload in rate:
        out += [
            "",
            f"## ({key}) the rate-limited job at {workload['rate_limit_rps']:g} requests/s",
            "",
            "| Contender | Target | Requests | Bound s | Wall s | Wall ÷ bound | 429s "
            "| Max requests in 1 s (all / API) | Orders |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for target in workload["results"].values():
            for entry in target.values():
                if "skipped" in entry:
                    continue
                window = (
                    f"{entry['max_requests_in_1s']} / {entry['max_api_requests_in_1s']}"
                    if "max_requests_in_1s" in entry
                    else "-"
                )
                orders = entry.get("orders")
                out.append(
                    f"| {entry['contender']} | {entry['target']} | {_fmt(entry['requests'], 0)} "
                    f"| {_fmt(entry.get('bound_s'))} | {_fmt(entry['wall_s'])} "
                    f"| {_fmt(entry.get('wall_vs_bound'), 3)} | {_fmt(entry['rate_limited'])} "
                    f"| {window} | {orders if orders is not None else 'cannot'} |"
                )
    bounds = [(k, w) for k, w in doc["workloads"].items() if w["engine_rss_bound_mb"]]
    if bounds:
        out += ["", "## Memory bounds", ""]
        for key, workload in bounds:
            for target in workload["results"].values():
                for entry in target.values():
                    if entry.get("engine") and "skipped" not in entry:
                        verdict = (
                            "within"
                            if entry["peak_rss_mb"] <= workload["engine_rss_bound_mb"]
                            else "OVER"
                        )
                        out.append(
                            f"- ({key}) {entry['contender']}: peak RSS "
                            f"{entry['peak_rss_mb']:.1f} MB, {verdict} the bound of "
                            f"{workload['engine_rss_bound_mb']:g} MB."
                        )
    out += ["", "## Contenders", ""]
    seen = set()
    for _key, entry in _rows(doc):
        if entry["note"] and (entry["contender"], entry["note"]) not in seen:
            seen.add((entry["contender"], entry["note"]))
            out.append(f"- {entry['contender']} ({entry['target']}): {entry['note']}")
    if doc["notes"]:
        out += ["", "## Notes", ""] + [f"- {note}" for note in doc["notes"]]
    out += ["", "## Correctness", ""]
    if doc["failures"]:
        out += [f"- FAILED: {failure}" for failure in doc["failures"]]
    else:
        out.append(
            "Every run was checked on its target: every file arrived with its exact size; the "
            "engine received no 429 and stayed within its memory bounds."
        )
    return "\n".join(out) + "\n"


# -- chart -----------------------------------------------------------------------------------

ENGINE_COLOR = "#d62728"
PEER_COLOR = "#7f7f7f"


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = doc["workloads"]
    panels: list[tuple[str, str, list[dict[str, Any]]]] = []
    for key, workload in workloads.items():
        entries = [
            e for t in workload["results"].values() for e in t.values() if "skipped" not in e
        ]
        if entries:
            panels.append((key, workload["title"], entries))
    memory = [
        (key, e)
        for key, workload in workloads.items()
        for t in workload["results"].values()
        for e in t.values()
        if "skipped" not in e and (key in ("b", "d", "e"))
    ]
    count = len(panels) + (1 if memory else 0)
    columns = 2
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 4.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (key, title, entries) in zip(flat, panels, strict=False):
        labels = [f"{e['contender']} → {e['target']}" for e in entries]
        walls = [e["wall_s"] for e in entries]
        colors = [ENGINE_COLOR if e["engine"] else PEER_COLOR for e in entries]
        ax.barh(labels, walls, color=colors)
        ax.invert_yaxis()
        for index, entry in enumerate(entries):
            text = f" {entry['wall_s']:.2f} s"
            if entry.get("mb_per_s") and entry["mb_per_s"] * 1e6 / entry["files_per_s"] > 1e6:
                text += f", {_rate(entry['mb_per_s'])} MB/s"
            elif entry.get("files_per_s"):
                text += f", {_rate(entry['files_per_s'])} files/s"
            if entry.get("bound_s"):
                text += f"; bound (|) {entry['bound_s']:.1f} s"
            ax.text(entry["wall_s"], index, text, va="center", fontsize=8)
        for index, entry in enumerate(entries):
            if entry.get("bound_s"):
                ax.plot(entry["bound_s"], index, marker="|", color="black", markersize=16)
        ax.set_xlim(0, max(float(w) for w in walls) * 1.6)
        ax.set_title(f"({key}) {title}: wall time, s (lower is better)", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    if memory:
        ax = flat[len(panels)]
        labels = [f"({key}) {e['contender']} → {e['target']}" for key, e in memory]
        values = [e["peak_rss_mb"] for _, e in memory]
        colors = [ENGINE_COLOR if e["engine"] else PEER_COLOR for _, e in memory]
        ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        for index, value in enumerate(values):
            ax.text(value, index, f" {value:.0f} MB", va="center", fontsize=8)
        for key, workload in workloads.items():
            if workload.get("engine_rss_bound_mb"):
                ax.axvline(
                    workload["engine_rss_bound_mb"], color="black", linestyle=":", linewidth=1
                )
                ax.text(
                    workload["engine_rss_bound_mb"],
                    -0.6,
                    f"({key}) bound",
                    fontsize=7,
                    ha="center",
                )
        ax.set_xscale("log")
        ax.set_xlim(right=max(values) * 4)  # room for the labels
        ax.set_title("Peak RSS, MB (log scale; dotted: the engine's bounds)", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    for ax in flat[count:]:
        ax.set_visible(False)
    machine = doc["machine"]
    fig.suptitle(
        f"styldod-batch benchmarks ({doc['mode']}), concurrency {doc['concurrency']}: "
        f"{machine['cpu']}, {machine['cores']} cores — red: the engine",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
