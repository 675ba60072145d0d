"""The page's stylesheet (screen and print) and its one small script (filters and search).

Everything is inline: the page links nothing, and reads whole without the script."""

from __future__ import annotations

from styldod_batch.review.model import IMAGE_STATES

_STATE_COLOURS = {
    "failed": "#b00020",
    "refused": "#b00020",
    "error": "#b00020",
    "changed": "#8a5a00",
    "late": "#8a5a00",
    "processing": "#555",
    "completed": "#1a5e20",
    "downloaded": "#1a5e20",
    "uploaded": "#555",
}

STYLE = (
    """
:root { color-scheme: light; --ink: #1d1d1f; --muted: #5b5b60; --line: #d7d7db;
  --panel: #f6f6f8; --accent: #0b57d0; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 1rem 1.25rem 3rem; color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: #fff; }
h1 { font-size: 1.6rem; margin: .2rem 0; }
h2 { font-size: 1.25rem; margin: 1.6rem 0 .5rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1rem 0 .3rem; }
.meta, .note, figcaption small, .muted { color: var(--muted); }
.totals { display: flex; flex-wrap: wrap; gap: .4rem; padding: 0; margin: .6rem 0;
  list-style: none; }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; font-size: .85rem;
  border: 1px solid currentColor; white-space: nowrap; }
.filters { position: sticky; top: 0; z-index: 2; background: #fffffff2; padding: .6rem 0;
  border-bottom: 1px solid var(--line); display: flex; flex-wrap: wrap; gap: .5rem 1rem;
  align-items: center; }
.filters[hidden], html:not(.js) ul.deferred { display: none; }
.filters input[type=search] { font: inherit; padding: .3rem .5rem; min-width: 16rem; }
.filters fieldset { border: 0; padding: 0; margin: 0; display: flex; flex-wrap: wrap;
  gap: .2rem .7rem; }
.filters legend { float: left; margin-right: .5rem; font-weight: 600; }
button { font: inherit; padding: .25rem .7rem; }
.runs { display: grid; gap: 1rem; }
.run { border: 1px solid var(--line); border-radius: .5rem; padding: .5rem 1rem 1rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr));
  gap: .5rem 1.5rem; }
.chart { width: 100%; height: auto; font-size: 11px; }
.chart .plot { fill: #fafafa; stroke: var(--line); }
.chart .grid { stroke: #e6e6ea; }
.chart .tick { fill: var(--muted); }
.chart .storage { fill: #9ec5fe; }
.chart .api { fill: #0b57d0; }
.chart .limit { stroke: #b00020; stroke-width: 2; stroke-dasharray: 6 4; }
.chart .limit-label { fill: #b00020; font-weight: 600; }
.chart .files { fill: none; stroke: #0b57d0; stroke-width: 1.5; }
.chart .mbs { fill: none; stroke: #1a7f37; stroke-width: 1.5; stroke-dasharray: 4 2; }
.chart .mbs-label { fill: #1a7f37; }
.legend span { margin-right: 1rem; font-size: .85rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; vertical-align: -.1rem;
  margin-right: .3rem; }
details.listing { border: 1px solid var(--line); border-radius: .5rem; margin: .6rem 0;
  background: #fff; }
details.listing > summary { padding: .5rem .8rem; cursor: pointer; background: var(--panel);
  border-radius: .5rem; display: flex; flex-wrap: wrap; gap: .3rem .6rem; align-items: baseline; }
details.listing[open] > summary { border-radius: .5rem .5rem 0 0; }
summary .name { font-weight: 650; font-size: 1.05rem; }
.body { padding: .3rem .8rem .8rem; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 .8rem; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
td.err { color: #b00020; }
ul.images { list-style: none; padding: 0; margin: 0; display: grid; gap: .8rem;
  grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); }
ul.images li { border: 1px solid var(--line); border-radius: .4rem; padding: .4rem;
  break-inside: avoid; color: var(--ink); }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: .3rem; }
.pair figure { margin: 0; }
.pair img, .nothumb { width: 100%; height: auto; max-height: 160px; object-fit: contain;
  background: #eee; display: block; }
.nothumb { aspect-ratio: 4 / 3; display: flex; align-items: center; justify-content: center;
  text-align: center; font-size: .8rem; color: var(--muted); padding: .3rem; }
.pair figure::after { content: "original"; display: block; font-size: .75rem;
  color: var(--muted); }
.pair figure + figure::after { content: "edited"; }
.cap { font-size: .85rem; overflow-wrap: anywhere; margin: .3rem 0 0; }
.why { font-size: .82rem; margin: .15rem 0 0; }
a { color: var(--accent); }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
"""
    + "".join(
        f".s-{s}, li.s-{s} strong, li.s-{s} .why {{ color: {c}; }}\n"
        f"li.s-{s} {{ border-left: 4px solid {c}; }}\n"
        f".hide-{s} li.s-{s} {{ display: none; }}\n"
        for s, c in _STATE_COLOURS.items()
    )
    + """
li.s-failed, li.s-refused, li.s-error { background: #fff5f5; }
li.s-changed, li.s-late { background: #fffaf0; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .filters, .noprint { display: none !important; }
  details.listing { break-inside: auto; border: 0; }
  details.listing > summary { background: none; border-bottom: 1px solid #999; }
  details.listing::details-content { content-visibility: visible; display: block; }
  ul.images { grid-template-columns: repeat(3, 1fr); gap: .4rem; }
  ul.images li, tr, .run { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
  .pair img, .nothumb { max-height: 110px; }
}
"""
)

assert set(_STATE_COLOURS) == set(IMAGE_STATES)

# Filters and search: they toggle classes and the ``hidden`` attribute, nothing more. The
# page is complete without them (the form is hidden until this runs).
SCRIPT = """
(function () {
  "use strict";
  var form = document.getElementById("filters");
  var sections = Array.prototype.slice.call(document.querySelectorAll("details.listing"));
  var search = document.getElementById("search");
  var boxes = Array.prototype.slice.call(form.querySelectorAll("input[name=state]"));
  var shown = document.getElementById("shown");
  document.documentElement.classList.add("js");
  function load(section) {
    section.querySelectorAll("img[data-src]").forEach(function (img) {
      img.src = img.getAttribute("data-src");
      img.removeAttribute("data-src");
    });
  }
  function apply() {
    var query = search.value.trim().toLowerCase();
    var on = {};
    boxes.forEach(function (box) {
      on[box.value] = box.checked;
      document.body.classList.toggle("hide-" + box.value, !box.checked);
    });
    var visible = 0;
    sections.forEach(function (section) {
      var states = section.getAttribute("data-states").split(" ");
      var anyState = states.some(function (s) { return s === "" || on[s] !== false; });
      var hit = query === "" || section.getAttribute("data-name").indexOf(query) !== -1;
      section.hidden = !(hit && anyState);
      if (!section.hidden) { visible += 1; }
    });
    shown.textContent = visible + " of " + sections.length + " listings shown";
  }
  function openAll(open) {
    sections.forEach(function (section) {
      if (!section.hidden) {
        if (open) { load(section); }
        section.open = open;
      }
    });
  }
  form.hidden = false;
  sections.forEach(function (section) {
    section.addEventListener("toggle", function () { if (section.open) { load(section); } });
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  search.addEventListener("input", apply);
  boxes.forEach(function (box) { box.addEventListener("change", apply); });
  document.getElementById("problems").addEventListener("click", function () {
    boxes.forEach(function (box) { box.checked = box.hasAttribute("data-problem"); });
    apply();
    openAll(true);
  });
  document.getElementById("everything").addEventListener("click", function () {
    search.value = "";
    boxes.forEach(function (box) { box.checked = true; });
    apply();
  });
  document.getElementById("expand").addEventListener("click", function () { openAll(true); });
  document.getElementById("collapse").addEventListener("click", function () { openAll(false); });
  window.addEventListener("beforeprint", function () {
    openAll(true);
    document.querySelectorAll("img[loading=lazy]").forEach(function (img) {
      img.loading = "eager";
    });
  });
  apply();
})();
"""
