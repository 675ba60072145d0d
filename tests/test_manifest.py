"""Manifests: CSV and JSON Lines parsing, every problem named by line and column, the order
contiguity rule, the engine's events, and bounded memory over a quarter of a million rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from styldod_batch.errors import ConfigurationError, InputError
from styldod_batch.manifest import (
    ManifestProblem,
    ManifestRow,
    manifest_items,
    read_manifest,
    validate_manifest,
)
from styldod_batch.models import ImageItem
from styldod_batch.orders import Grouper
from styldod_batch.scan import GroupEnd

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"


def image(folder: Path, relative: str, data: bytes = JPEG) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def manifest(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def rows_of(path: Path) -> list[ManifestRow]:
    out = []
    for entry in read_manifest(path):
        assert isinstance(entry, ManifestRow), str(entry)
        out.append(entry)
    return out


def problems_of(path: Path) -> list[tuple[int, str | None, str]]:
    return [
        (p.line, p.column, p.message) for p in read_manifest(path) if isinstance(p, ManifestProblem)
    ]


# -- parsing -----------------------------------------------------------------------------------


def test_csv_with_one_column_per_option(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        '''
        path,client_image_id,order,sequence,basic_editing,style,lighting,notes
        listing-1/front.jpg,,L1,2,true,1920,3,
        listing-1/back.jpg,back-01,L1,,false,,soft,"a, quoted ""note"""
        ./listing-2/../listing-2/hall.jpg,,,,,"""modern""","""7""",
        ''',
    )

    rows = rows_of(path)

    assert rows == [
        ManifestRow(
            line=2,
            path=str(tmp_path / "listing-1/front.jpg"),
            client_image_id="listing-1/front.jpg",
            order="L1",
            sequence=2,
            # JSON when it parses; a string option keeps its text; empty cells set nothing.
            options={"basic_editing": True, "style": "1920", "lighting": 3},
            listing="order:L1",
            listing_name="L1",
        ),
        ManifestRow(
            line=3,
            path=str(tmp_path / "listing-1/back.jpg"),
            client_image_id="back-01",
            order="L1",
            sequence=None,
            options={"basic_editing": False, "lighting": "soft", "notes": 'a, quoted "note"'},
            listing="order:L1",
            listing_name="L1",
        ),
        # Without an order, the row belongs to its file's folder, as a folder run sees it.
        ManifestRow(
            line=4,
            path=str(tmp_path / "listing-2/hall.jpg"),
            client_image_id="hall.jpg",
            order=None,
            sequence=None,
            options={"style": "modern", "lighting": "7"},
            listing=f"folder:{tmp_path / 'listing-2'}",
            listing_name="listing-2",
        ),
    ]


def test_csv_with_an_options_column(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        """
        path,options
        a.jpg,"{""basic_editing"": true, ""service"": ""day_to_dusk"", ""extra"": [1]}"
        b.jpg,
        c.jpg,"{""style"": null}"
        """,
    )

    assert [row.options for row in rows_of(path)] == [
        {"basic_editing": True, "service": "day_to_dusk", "extra": [1]},
        {},
        {},
    ]


def test_paths_relative_to_the_manifest_folder_or_absolute(tmp_path: Path) -> None:
    elsewhere = image(tmp_path, "elsewhere/x.jpg")
    inside = image(tmp_path, "jobs/photos/y.jpg")
    path = manifest(
        tmp_path / "jobs",
        f"""
        path
        photos/z.jpg
        {inside}
        {elsewhere}
        """,
    )

    rows = rows_of(path)

    assert [row.path for row in rows] == [
        str(tmp_path / "jobs/photos/z.jpg"),
        str(inside),
        str(elsewhere),
    ]
    # Without an order, the default client_image_id is the file's name within its folder.
    assert [row.client_image_id for row in rows] == ["z.jpg", "y.jpg", "x.jpg"]
    assert [row.listing_name for row in rows] == ["photos", "photos", "elsewhere"]
    # With one, it is the path relative to the manifest's folder, in POSIX form.
    ordered = manifest(tmp_path / "jobs", f"path,order\nphotos/z.jpg,L\n{elsewhere},L\n", "o.csv")
    assert [row.client_image_id for row in rows_of(ordered)] == [
        "photos/z.jpg",
        "../elsewhere/x.jpg",
    ]


def test_a_relative_manifest_path_resolves_against_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest(tmp_path / "job", "path\nphotos/a.jpg\n")
    monkeypatch.chdir(tmp_path)

    (row,) = rows_of(Path("job/manifest.csv"))

    assert row.path == str(tmp_path / "job/photos/a.jpg")


def test_json_lines_with_an_options_field_and_one_field_per_option(tmp_path: Path) -> None:
    absolute = image(tmp_path, "abs/a.jpg")
    text = "\n".join(
        [
            json.dumps(
                {"path": "p/1.jpg", "order": "L1", "sequence": 3, "options": {"style": "x"}}
            ),
            "",
            json.dumps({"path": str(absolute), "client_image_id": "a", "basic_editing": True}),
            json.dumps({"path": "p/2.jpg", "order": 7, "options": None, "style": None}),
        ]
    )
    path = manifest(tmp_path, text, name="images.jsonl")

    rows = rows_of(path)

    assert [(r.line, r.client_image_id, r.order, r.sequence, r.options) for r in rows] == [
        (1, "p/1.jpg", "L1", 3, {"style": "x"}),
        (3, "a", None, None, {"basic_editing": True}),
        (4, "p/2.jpg", "7", None, {}),
    ]
    assert rows[1].path == str(absolute)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("list.txt", '\ufeff\n  {"path": "a.jpg"}\n', "a.jpg"),
        ("list", "path\nb.jpg\n", "b.jpg"),
        ("list.ndjson", '{"path": "c.jpg"}\n', "c.jpg"),
        ("bom.csv", "\ufeffpath,style\nd.jpg,x\n", "d.jpg"),
    ],
)
def test_the_format_comes_from_the_suffix_or_the_first_character(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")

    assert [row.client_image_id for row in rows_of(tmp_path / name)] == [expected]


# -- problems ----------------------------------------------------------------------------------

CSV_PROBLEMS = [
    ("path,order\n,L1\n", (2, "path", "no path: every row needs one")),
    ("path,sequence\na.jpg,x\n", (2, "sequence", "must be a positive integer, not 'x'")),
    ("path,sequence\na.jpg,0\n", (2, "sequence", "must be a positive integer, not '0'")),
    ("path,sequence\na.jpg,-2\n", (2, "sequence", "must be a positive integer, not '-2'")),
    ("path,options\na.jpg,{bad\n", (2, "options", "not a JSON object: ")),
    ("path,options\na.jpg,[1]\n", (2, "options", "must be a JSON object, not [1]")),
    ("path,basic_editing\na.jpg,maybe\n", (2, "basic_editing", "must be a boolean (true or f")),
    ("path,basic_editing\na.jpg,2\n", (2, "basic_editing", "must be a boolean (true or false)")),
    ("path,service\na.jpg,painting\n", (2, "service", "unknown service 'painting' (one of")),
    ("path,image_urls\na.jpg,[]\n", (2, "image_urls", "set by the uploader itself")),
    (
        'path,style,options\na.jpg,x,"{""style"": ""y""}"\n',
        (2, "style", "set both in its own column and in options"),
    ),
    ("path,order\na.jpg,L1,extra\n", (2, None, "3 cells, but the header names 2 columns")),
    # A quoted cell spanning lines: the row is named by the line it starts on.
    ('path,notes\na.jpg,"two\nlines"\nb.jpg,x,y\n', (4, None, "3 cells, but the header names 2")),
]

JSONL_PROBLEMS = [
    ('{"order": "L1"}\n', (1, "path", "no path: every row needs one")),
    ('{"path": ""}\n', (1, "path", "no path: every row needs one")),
    ('{"path": 3}\n', (1, "path", "must be a string, not 3")),
    ('{"path": "a.jpg"}\n\n{"path": "b.jpg",\n', (3, None, "not valid JSON: ")),
    ("[1, 2]\n", (1, None, "each line must be a JSON object")),
    ('{"path": "a.jpg", "client_image_id": 5}\n', (1, "client_image_id", "must be a string, no")),
    ('{"path": "a.jpg", "order": ["x"]}\n', (1, "order", 'must be a string, not ["x"]')),
    (
        '{"path": "a.jpg", "sequence": 1.5}\n',
        (1, "sequence", "must be a positive integer, not 1.5"),
    ),
    ('{"path": "a.jpg", "sequence": true}\n', (1, "sequence", "must be a positive integer, not t")),
    ('{"path": "a.jpg", "options": "x"}\n', (1, "options", 'must be a JSON object, not "x"')),
    ('{"path": "a.jpg", "options": {"style": 3}}\n', (1, "style", "must be a string, not 3")),
    ('{"path": "a.jpg", "notes": false}\n', (1, "notes", "must be a string, not false")),
    ('{"path": "a.jpg", "service": "x"}\n', (1, "service", "unknown service 'x'")),
    ('{"path": "a.jpg", "options": {"sequence": 2}}\n', (1, "sequence", "set by the uploader")),
]


@pytest.mark.parametrize(("text", "expected"), CSV_PROBLEMS)
def test_each_csv_problem_is_named_with_its_line_and_column(
    tmp_path: Path, text: str, expected: tuple[int, str | None, str]
) -> None:
    (problem,) = problems_of(manifest(tmp_path, text))

    assert problem[:2] == expected[:2]
    assert problem[2].startswith(expected[2])


@pytest.mark.parametrize(("text", "expected"), JSONL_PROBLEMS)
def test_each_json_lines_problem_is_named_with_its_line_and_column(
    tmp_path: Path, text: str, expected: tuple[int, str | None, str]
) -> None:
    (problem,) = problems_of(manifest(tmp_path, text, name="m.jsonl"))

    assert problem[:2] == expected[:2]
    assert problem[2].startswith(expected[2])


def test_a_problem_reads_manifest_line_column_message() -> None:
    assert str(ManifestProblem("m.csv", 7, "style", "must be a string")) == (
        "m.csv:7: style: must be a string"
    )
    assert str(ManifestProblem("m.csv", 3, None, "not valid JSON")) == "m.csv:3: not valid JSON"


def test_a_row_with_several_problems_reports_each_and_the_next_rows_still_read(
    tmp_path: Path,
) -> None:
    path = manifest(
        tmp_path,
        """
        path,sequence,basic_editing,service
        a.jpg,x,maybe,painting
        b.jpg,2,,
        """,
    )

    entries = list(read_manifest(path))

    assert [(e.line, e.column) for e in entries if isinstance(e, ManifestProblem)] == [
        (2, "sequence"),
        (2, "basic_editing"),
        (2, "service"),
    ]
    assert [e.client_image_id for e in entries if isinstance(e, ManifestRow)] == ["b.jpg"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("m.csv", b"", (1, None, "no header row: the manifest is empty")),
        ("m.csv", b"order,style\nL1,x\n", (1, "path", "the header has no path column")),
        (
            "m.csv",
            b"path,style,style\na.jpg,x,y\n",
            (1, "style", "this column appears twice in the header"),
        ),
        ("m.csv", b"path,,style\n", (1, None, "column 2 has no name")),
        ("m.csv", b"path\na.jpg\nb\xff.jpg\n", (3, None, "not UTF-8 text")),
        ("absent.csv", None, (0, None, "cannot read the manifest: no such file")),
    ],
)
def test_a_manifest_that_cannot_be_read_is_one_problem_and_a_configuration_error(
    tmp_path: Path, name: str, content: bytes | None, expected: tuple[int, str | None, str]
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    problems = problems_of(path)
    assert problems[-1] == expected
    assert [(p.line, p.column, p.message) for p in validate_manifest(path)][-1] == expected
    with pytest.raises(ConfigurationError, match=expected[2]):
        list(manifest_items(path))


def test_validation_reports_every_problem_of_the_manifest_together(tmp_path: Path) -> None:
    image(tmp_path, "L1/a.jpg")
    image(tmp_path, "L1/b.jpg")
    image(tmp_path, "L2/c.jpg")
    image(tmp_path, "L2/empty.jpg", b"")
    image(tmp_path, "L2/notes.txt", b"text")
    (tmp_path / "L2/folder.jpg").mkdir()
    path = manifest(
        tmp_path,
        """
        path,client_image_id,order,basic_editing
        L1/a.jpg,,L1,
        L1/b.jpg,a-id,L1,
        L1/missing.jpg,,L1,
        L1/b.jpg,b-again,L1,
        L1/b.jpg,L1/a.jpg,L1,
        L2/c.jpg,,L2,maybe
        L2/empty.jpg,,L2,
        L2/notes.txt,,L2,
        L2/folder.jpg,,L2,
        L1/a.jpg,a-late,L1,
        ,,L2,
        """,
    )

    problems = validate_manifest(path)

    assert [str(p) for p in problems] == [
        f"{path}:4: path: no such file: {tmp_path / 'L1/missing.jpg'}",
        f"{path}:5: path: this file is already listed in this order (line 3)",
        f"{path}:6: client_image_id: 'L1/a.jpg' is already used in this order (line 2)",
        f'{path}:7: basic_editing: must be a boolean (true or false), not "maybe"',
        f"{path}:8: path: empty file: {tmp_path / 'L2/empty.jpg'}",
        f"{path}:9: path: not an image type the API accepts "
        f"(.heic, .heif, .jpe, .jpeg, .jpg, .png, .tif, .tiff, .webp): {tmp_path / 'L2/notes.txt'}",
        f"{path}:10: path: not a regular file: {tmp_path / 'L2/folder.jpg'}",
        # Rows of an order need not be together: a later row is checked against the whole order.
        f"{path}:11: path: this file is already listed in this order (line 2)",
        f"{path}:12: path: no path: every row needs one",
    ]


def test_a_clean_manifest_validates_without_problems(tmp_path: Path) -> None:
    image(tmp_path, "L1/a.jpg")
    image(tmp_path, "L1/b.jpg")
    path = manifest(tmp_path, "path,order\nL1/a.jpg,X\nL1/b.jpg,X\nL1/a.jpg,Y\n")

    assert validate_manifest(path) == []


def test_an_empty_list_is_a_problem(tmp_path: Path) -> None:
    path = manifest(tmp_path, "path,order\n\n")

    assert [str(p) for p in validate_manifest(path)] == [f"{path}:1: the manifest lists no images"]


def test_rows_of_one_listing_need_not_be_together(tmp_path: Path) -> None:
    for name in ("x/1.jpg", "x/2.jpg", "y/1.jpg", "y/2.jpg", "top.jpg"):
        image(tmp_path, name)
    # As a spreadsheet exports it when sorted by another column.
    path = manifest(tmp_path, "path,order\nx/1.jpg,\ny/1.jpg,B\nx/2.jpg,\ny/2.jpg,B\ntop.jpg,\n")

    assert validate_manifest(path) == []
    events = [describe(e) for e in manifest_items(path)]

    assert events == [
        ("item", "x", "1.jpg", 0, {}),
        ("item", "x", "2.jpg", 0, {}),
        ("end", f"folder:{tmp_path / 'x'}"),
        ("item", "B", "y/1.jpg", 0, {}),
        ("item", "B", "y/2.jpg", 0, {}),
        ("end", "order:B"),
        ("item", tmp_path.name, "top.jpg", 0, {}),
        ("end", f"folder:{tmp_path}"),
    ]


def test_an_id_or_a_file_appears_once_in_a_listing_whatever_its_size(tmp_path: Path) -> None:
    for n in range(1, 6):
        image(tmp_path, f"L/{n}.jpg")
    rows = "\n".join(f"L/{n}.jpg,{'dup' if n in (1, 4) else n}" for n in range(1, 6))
    path = manifest(tmp_path, f"path,client_image_id\n{rows}\n")

    # The ledger knows an image by its listing and ID: split into orders of 3 or not.
    for size in (3, 5):
        problems = validate_manifest(path, max_images_per_order=size)
        assert [(p.line, p.column) for p in problems] == [(5, "client_image_id")]


def test_problems_are_capped_with_a_count_of_the_rest(tmp_path: Path) -> None:
    path = manifest(tmp_path, "path\n" + "missing.jpg\n" * 1205)

    problems = validate_manifest(path)

    assert len(problems) == 1001
    assert problems[999].line == 1001
    assert str(problems[-1]) == f"{path}:1002: ... and 205 more problems"
    assert len(validate_manifest(path, max_problems=1205)) == 1205


# -- the engine's events -----------------------------------------------------------------------


def describe(event: ImageItem | InputError | GroupEnd) -> tuple[Any, ...]:
    if isinstance(event, ImageItem):
        return ("item", event.group, event.client_image_id, event.sequence, event.options)
    if isinstance(event, GroupEnd):
        return ("end", event.group)
    return ("error", event.path, event.reason)


def test_manifest_items_give_groups_items_errors_and_group_ends_in_file_order(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job-7"
    for name in ("a.jpg", "b.png", "L2/c.jpg", "L2/d.jpg", "top.jpg"):
        image(job, name, JPEG * 3)
    path = manifest(
        job,
        """
        path,client_image_id,order,sequence,basic_editing
        a.jpg,front,Listing 1,5,true
        b.png,,Listing 1,,
        gone.jpg,,Listing 1,,
        L2/c.jpg,,,,
        L2/d.jpg,,,,maybe
        top.jpg,,,2,
        a.jpg,,Listing 1,,
        """,
    )

    events = list(manifest_items(path))

    # Rows that cannot be used first, then each listing in the order the manifest names it.
    assert [describe(e) for e in events] == [
        ("error", str(job / "gone.jpg"), f"{path}:4: path: no such file"),
        (
            "error",
            str(job / "L2/d.jpg"),
            f'{path}:6: basic_editing: must be a boolean (true or false), not "maybe"',
        ),
        (
            "error",
            str(job / "a.jpg"),
            f"{path}:8: path: this file is already listed in this order (line 2)",
        ),
        ("item", "Listing 1", "front", 5, {"basic_editing": True}),
        ("item", "Listing 1", "b.png", 0, {}),
        ("end", "order:Listing 1"),
        ("item", "L2", "c.jpg", 0, {}),
        ("end", f"folder:{job / 'L2'}"),
        # A file directly in the manifest's folder: the listing is that folder.
        ("item", "job-7", "top.jpg", 2, {}),
        ("end", f"folder:{job}"),
    ]
    first = events[3]
    assert isinstance(first, ImageItem)
    stat = (job / "a.jpg").stat()
    assert (first.path, first.relative, first.size, first.mtime_ns, first.content_type) == (
        str(job / "a.jpg"),
        "front",
        stat.st_size,
        stat.st_mtime_ns,
        "image/jpeg",
    )
    assert isinstance(events[4], ImageItem) and events[4].content_type == "image/png"


def test_a_row_without_a_path_is_an_input_error_named_by_its_manifest_line(
    tmp_path: Path,
) -> None:
    path = manifest(tmp_path, "path,order\n,L1\n")

    assert [describe(e) for e in manifest_items(path)] == [
        ("error", f"{path}:2", "path: no path: every row needs one"),
    ]


def test_manifest_sequences_pass_through_the_grouper_and_duplicates_become_errors(
    tmp_path: Path,
) -> None:
    for n in range(1, 5):
        image(tmp_path, f"L/{n}.jpg")
    path = manifest(
        tmp_path, "path,client_image_id,sequence\nL/1.jpg,,9\nL/2.jpg,,\nL/3.jpg,x,\nL/4.jpg,x,\n"
    )
    grouper = Grouper(order_size=100, by_folder=True)
    closed = []
    errors = []

    for event in manifest_items(path):
        if isinstance(event, ImageItem):
            grouper.add(event)
        elif isinstance(event, GroupEnd):
            closed.append(grouper.end_group(event.group))
        else:
            errors.append(event.reason)

    assert errors == [f"{path}:5: client_image_id: 'x' is already used in this order (line 4)"]
    (part,) = closed
    assert part is not None and (part.base_name, part.split) == ("L", False)
    assert [(i.client_image_id, i.sequence) for i in part.items] == [
        ("1.jpg", 9),
        ("2.jpg", 2),
        ("x", 3),
    ]


# -- a quarter of a million rows -------------------------------------------------------------------

ROWS = 250_000
PER_ORDER = 100
# The peak resident memory a streaming reader must stay under, the interpreter included: a
# streaming reader peaks near 80 MB on these rows, a reader that merely holds the rows as a
# list (list(read_manifest(...))) near 150 MB, so the bound tells the two apart as a million
# rows under 200 MB did, in a quarter of the time.
MAX_RSS_MB = 120

MEASURE = """
import json, sys, time
from pathlib import Path
from styldod_batch.manifest import stage_manifest
from styldod_batch.models import ImageItem
from styldod_batch.orders import Grouper
from styldod_batch.scan import GroupEnd

manifest = Path(sys.argv[1])
out = {}
began = time.perf_counter()
staged = stage_manifest(manifest)
out["rows"] = staged.rows
out["problems"] = [str(p) for p in staged.problems][:5]
out["stage_s"] = time.perf_counter() - began

# A dry grouping, as the engine does it: items into order parts, closed parts let go.
began = time.perf_counter()
grouper = Grouper(order_size=100, by_folder=True)
items = orders = 0
for event in staged.events():
    if isinstance(event, ImageItem):
        items += 1
        orders += grouper.add(event)[1] is not None
    elif isinstance(event, GroupEnd):
        orders += grouper.end_group(event.group) is not None
    else:
        raise SystemExit(f"unexpected {event!r}")
orders += len(grouper.end_all())
staged.close()
out.update(items=items, orders=orders, group_s=time.perf_counter() - began)
with open("/proc/self/status") as status:
    hwm = next(line for line in status if line.startswith("VmHWM:"))
out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
@pytest.mark.slow
def test_an_interleaved_250k_row_manifest_plans_in_bounded_memory(tmp_path: Path) -> None:
    # One real tiny file per place in an order, so no order lists a file twice.
    for k in range(PER_ORDER):
        image(tmp_path, f"photos/img-{k:03d}.jpg", b"\xff\xd8" + bytes([k]))
    path = tmp_path / "manifest.csv"
    began = time.perf_counter()
    with path.open("w", encoding="utf-8") as out:
        out.write("path,client_image_id,order,sequence,basic_editing\n")
        # Sorted by position, not by order: no two rows of one order are next to each other.
        for k in range(PER_ORDER):
            out.write(
                "".join(
                    f"photos/img-{k:03d}.jpg,{order}-{k},listing-{order:05d},{k + 1},"
                    f"{'true' if k % 7 == 0 else ''}\n"
                    for order in range(ROWS // PER_ORDER)
                )
            )
    written_s = time.perf_counter() - began

    began = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    total_s = time.perf_counter() - began
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)

    print(
        f"\n{ROWS:,}-row manifest ({path.stat().st_size / 1e6:.0f} MB, "
        f"written in {written_s:.1f} s): "
        f"peak RSS {result['peak_rss_mb']:.1f} MB; staged (read, checked, indexed) in "
        f"{result['stage_s']:.1f} s, taken back by order and grouped in "
        f"{result['group_s']:.1f} s; {total_s:.1f} s in all"
    )
    assert result["rows"] == ROWS
    assert result["problems"] == []
    assert (result["items"], result["orders"]) == (ROWS, ROWS // PER_ORDER)
    assert result["peak_rss_mb"] < MAX_RSS_MB
