"""The review page itself: one HTML file, its thumbnails in a folder beside it.

Plain HTML first: every listing is a ``<details>`` section, every image a pair of lazily
loaded thumbnails (original, edited output) with alt texts and its state in words. A small
inline script adds a search over listing names and filters by image state; a Content
Security Policy lets the page load nothing but its own thumbnails.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from datetime import datetime
from html import escape
from pathlib import Path

from styldod_batch.review.assets import SCRIPT, STYLE
from styldod_batch.review.chart import requests_chart, run_stats, throughput_chart
from styldod_batch.review.model import (
    PROBLEM_STATES,
    ImageView,
    ListingSection,
    OrderView,
    Review,
)
from styldod_batch.review.runlog import RunRecord
from styldod_batch.review.thumbs import Thumb

# Sections start open when the whole page holds at most this many images (else only the
# listings with problems do): a browser lays out what is open.
OPEN_UP_TO = 600
# Charts of at most this many runs (the latest).
RUNS_DRAWN = 5

_LABELS = {
    "failed": "failed",
    "refused": "refused",
    "error": "service error",
    "changed": "changed",
    "late": "late",
    "processing": "processing",
    "completed": "edited",
    "downloaded": "downloaded",
    "uploaded": "not ordered",
}


_LEGEND = (
    ("#0b57d0", "API calls"),
    ("#9ec5fe", "storage PUTs"),
    ("#b00020", "rate limit (dashed)"),
    ("#1a7f37", "MB/s (dashed)"),
)


def _orders_of(run: RunRecord) -> str:
    resumed = sum(1 for o in run.orders if o.resumed)
    text = f"{len(run.orders)} orders"
    if resumed:
        text += f" ({resumed} of them placed by an earlier run)"
    return text


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _attr(text: str) -> str:
    return escape(text, quote=True)


class PageWriter:
    """Renders a ``Review`` whose thumbnails live in ``thumbs_url`` (relative to the page)."""

    def __init__(self, review: Review, thumbs_url: str, *, open_up_to: int = OPEN_UP_TO) -> None:
        self.review = review
        self.open_up_to = open_up_to
        self.thumbs_url = thumbs_url.rstrip("/") + "/"

    def chunks(self) -> Iterator[str]:
        review = self.review
        images = sum(len(s.images) for s in review.listings)
        title = f"Styldod review: {len(review.listings)} listings, {images} images"
        policy = (
            "default-src 'none'; img-src 'self' file: data:; "
            f"style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; base-uri 'none'; "
            "form-action 'none'"
        )
        yield (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="referrer" content="no-referrer">'
            '<link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        )
        yield from self._header(images)
        yield from self._filters()
        yield from self._runs()
        yield '<main id="listings" aria-labelledby="listings-h">'
        yield '<h2 id="listings-h">Listings</h2>\n'
        if not review.listings:
            yield '<p class="muted">No listing matches.</p>'
        open_all = images <= self.open_up_to
        for number, section in enumerate(review.listings, start=1):
            yield from self._section(number, section, open_all)
        yield "</main>\n"
        yield from self._failures()
        yield f"<script>{SCRIPT}</script>\n</body></html>\n"

    # -- parts ---------------------------------------------------------------------------------

    def _header(self, images: int) -> Iterator[str]:
        review = self.review
        counts = review.counts()
        orders = sum(len(s.orders) for s in review.listings)
        yield '<header><h1>The morning review</h1><p class="meta">'
        yield f"Generated {escape(_when(review.generated))} from the ledger "
        yield f"<code>{escape(review.ledger or '(none)')}</code>"
        shown = review.filters.describe()
        yield (f"; showing {escape('; '.join(shown))}" if shown else "; everything it holds")
        yield f".</p><p>{len(review.listings)} listings, {orders} orders, {images} images.</p>"
        yield '<ul class="totals" aria-label="Images by state">'
        for state, n in counts.items():
            yield f'<li class="badge s-{state}">{n} {_LABELS[state]}</li>'
        yield "</ul></header>\n"

    def _filters(self) -> Iterator[str]:
        states = self.review.counts()
        yield (
            '<form class="filters" id="filters" role="search" hidden '
            'aria-label="Filter the listings">'
            '<label for="search">Find a listing</label>'
            '<input type="search" id="search" placeholder="listing name" autocomplete="off">'
            "<fieldset><legend>Show images</legend>"
        )
        for state in states:
            problem = " data-problem" if state in PROBLEM_STATES else ""
            yield (
                f'<label><input type="checkbox" name="state" value="{state}" checked{problem}>'
                f' <span class="s-{state}">{_LABELS[state]}</span></label>'
            )
        yield (
            '</fieldset><button type="button" id="problems">Problems only</button>'
            '<button type="button" id="everything">Show all</button>'
            '<button type="button" id="expand">Expand all</button>'
            '<button type="button" id="collapse">Collapse all</button>'
            '<output id="shown" aria-live="polite"></output></form>\n'
        )

    def _runs(self) -> Iterator[str]:
        runs = self.review.runs
        yield '<section id="runs" aria-labelledby="runs-h"><h2 id="runs-h">Runs</h2>'
        if not runs:
            yield (
                '<p class="muted">No run of these orders left a timeline (the run log beside '
                "the ledger is written by runs of this version of styldod-batch), so there is "
                "no picture of the requests to draw.</p></section>\n"
            )
            return
        if len(runs) > RUNS_DRAWN:
            yield f'<p class="muted">The latest {RUNS_DRAWN} of {len(runs)} runs.</p>'
        yield '<div class="runs">'
        for run in runs[-RUNS_DRAWN:][::-1]:
            yield from self._run(run)
        yield "</div></section>\n"

    def _run(self, run: RunRecord) -> Iterator[str]:
        stats = run_stats(run)
        ident = "run-" + "".join(c for c in run.run_id if c.isalnum())
        end = _when(run.ended) if run.ended else "did not finish (or is still running)"
        yield f'<article class="run" id="{ident}"><h3>Run {escape(run.run_id)}</h3>'
        yield (
            f'<p class="meta">From {escape(_when(run.started))} to {escape(end)}; '
            f"{_orders_of(run)}; {stats.requests} requests ({stats.api} API, "
            f"{stats.storage} storage), busiest second {stats.busiest}, "
            f"{stats.rate_limited} answered 429; {stats.files} files, {stats.megabytes:.1f} MB "
            f"uploaded: {stats.files_per_s:.1f} files/s, {stats.mb_per_s:.2f} MB/s over "
            f"{stats.seconds} busy seconds.</p>"
        )
        yield f"<p><strong>{escape(stats.verdict(run.rps))}</strong></p>"
        if stats.requests:
            yield (
                '<p class="legend" aria-hidden="true">'
                + "".join(
                    f'<span><svg class="swatch" viewBox="0 0 1 1"><rect width="1" height="1" '
                    f'fill="{colour}"/></svg>{text}</span>'
                    for colour, text in _LEGEND
                )
                + "</p>"
            )
            yield '<div class="charts">'
            yield requests_chart(run, ident + "-rps")
            yield throughput_chart(run, ident + "-tp")
            yield "</div>"
        yield "</article>\n"

    def _section(self, number: int, section: ListingSection, open_all: bool) -> Iterator[str]:
        counts = section.counts()
        problems = any(s in PROBLEM_STATES for s in counts)
        opened = " open" if open_all or problems else ""
        states = " ".join(counts)
        yield (
            f'<details class="listing" id="listing-{number}" '
            f'data-name="{_attr(section.name.lower())}" data-states="{states}"{opened}>'
            f'<summary><span class="name">{escape(section.name)}</span>'
        )
        for state, n in counts.items():
            yield f' <span class="badge s-{state}">{n} {_LABELS[state]}</span>'
        yield (
            f'</summary><div class="body"><p class="meta">{escape(section.identity)}'
            + (
                f"; outputs in <code>{escape(section.label)}/</code>"
                if section.label and section.label != section.name
                else ""
            )
            + "</p>"
        )
        if section.orders:
            yield from self._orders(section.orders)
        if opened:
            yield '<ul class="images">'
            yield "".join(self._image(section, image) for image in section.images)
            yield "</ul></div></details>\n"
            return
        # A closed section of a large page: its pictures get their addresses when it opens
        # (thousands of <img src> cost a browser a millisecond each, lazy or not, even
        # unseen). Without JavaScript the <noscript> copy is the list.
        yield '<ul class="images deferred">'
        yield "".join(self._image(section, image, "data-src") for image in section.images)
        yield '</ul><noscript><ul class="images">'
        yield "".join(self._image(section, image) for image in section.images)
        yield "</ul></noscript></div></details>\n"

    def _orders(self, orders: list[OrderView]) -> Iterator[str]:
        yield (
            '<table><caption>Orders</caption><thead><tr><th scope="col">Order</th>'
            '<th scope="col">ID</th><th scope="col">State</th><th scope="col">Images</th>'
            '<th scope="col">Placed</th><th scope="col">Events</th></tr></thead><tbody>'
        )
        for order in orders:
            state = order.status or order.state
            if order.state != "created":
                state = order.state + (f" ({order.status})" if order.status else "")
            placed = order.placed
            when = _when(placed.at) if placed is not None else "before the run log"
            if placed is not None and order.run_id:
                when += f' <span class="muted">run {escape(order.run_id)}</span>'
            error = (
                f'<br><span class="s-failed">{escape(order.error)}</span>' if order.error else ""
            )
            follow = " (follow-up)" if order.follow_up else ""
            yield (
                f'<tr><th scope="row">{escape(order.name)}{follow}</th>'
                f"<td><code>{escape(order.order_id or '-')}</code></td>"
                f"<td>{escape(state)}{error}</td><td>{order.images}</td><td>{when}</td>"
                f"<td>{escape(', '.join(e.removeprefix('order.') for e in order.events)) or '-'}"
                "</td></tr>"
            )
        yield "</tbody></table>"

    def _image(self, section: ListingSection, image: ImageView, src: str = "src") -> str:
        name = image.client_image_id
        label = _LABELS[image.state]
        original = self._thumb(image.original, f"original {name}", image.path, src)
        if image.state == "downloaded":
            output = self._thumb(image.output, f"edited {name}", image.output_path, src)
        else:
            output = self._placeholder(
                {
                    "completed": "edited, output not downloaded yet",
                    "processing": "being edited",
                }.get(image.state, "no edited output"),
            )
        why = f'<p class="why">{escape(image.note)}</p>' if image.note else ""
        order = f" · {escape(image.order)}" if image.order not in ("", section.name) else ""
        # The captions "original" and "edited" come from the stylesheet (one per figure).
        return (
            f'<li class="s-{image.state}"><div class="pair"><figure>{original}</figure>'
            f'<figure>{output}</figure></div><p class="cap">{escape(name)} <strong>{label}'
            f"</strong>{order}</p>{why}</li>"
        )

    def _thumb(self, thumb: Thumb | str | None, alt: str, path: str | None, src: str) -> str:
        if not isinstance(thumb, Thumb):
            return self._placeholder(thumb or "no preview")
        img = (
            f'<img {src}="{self.thumbs_url}{thumb.name}" width="{thumb.width}" '
            f'height="{thumb.height}" alt="{_attr(alt)}" loading="lazy">'
        )
        if path and os.path.isabs(path):
            return f'<a href="{_attr(Path(path).as_uri())}">{img}</a>'
        return img

    @staticmethod
    def _placeholder(text: str) -> str:
        return f'<span class="nothumb">{escape(text)}</span>'

    def _failures(self) -> Iterator[str]:
        failures = self.review.failures
        if not failures:
            return
        yield '<section id="failures" aria-labelledby="failures-h">'
        yield (
            '<h2 id="failures-h">Inputs that failed before they had a listing '
            f"({len(failures)})</h2><table><thead><tr>"
            '<th scope="col">Path</th><th scope="col">Why</th></tr></thead><tbody>'
        )
        for path, error in failures:
            yield (
                f'<tr><td><code>{escape(path)}</code></td><td class="err">{escape(error)}</td></tr>'
            )
        yield "</tbody></table></section>\n"
