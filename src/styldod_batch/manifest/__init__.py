"""Manifests: a CSV or JSON Lines file that lists a job's images, read as a stream.

Each row names one image file::

    path,client_image_id,order,sequence,basic_editing,style
    listing-1/front.jpg,,listing-1,1,true,
    listing-1/kitchen.jpg,kitchen-01,listing-1,2,,modern

or, as JSON Lines (``.jsonl`` / ``.ndjson``, or any file whose first character is ``{``)::

    {"path": "listing-1/front.jpg", "order": "listing-1", "options": {"basic_editing": true}}

``path`` is required and relative to the manifest's folder unless absolute. ``order`` names
the order the image goes in: it is the listing's identity, so every manifest of an account that
names ``listing-42`` speaks of one listing. Rows without one belong to their file's folder,
exactly as a folder run sees it (the order is named after the folder). ``client_image_id``
defaults to the path as written (POSIX form) with an ``order``, to the file name without;
``sequence`` is a positive integer. Options
come from an ``options`` JSON object, or from one column (field) per option: every name that is
not one of the fields above is an option. In CSV an empty cell sets nothing, and an option cell
is read as JSON when it parses (``true``, ``3``, ``"x"``), else as the text itself; a known
string option (``style``, ``notes``) keeps its text as written. A null sets nothing.

The rows of one order need not be together (a spreadsheet sorted by another column is fine):
the manifest is read once, a line at a time, into a temporary SQLite index, and the engine
takes it back listing by listing. Within a listing a ``client_image_id`` or a file may appear
once (they are what the ledger knows an image by). A listing larger than the order size is
split into several orders, as a folder is.

Memory stays bounded whatever the manifest's length: rows live in the index on disk, and only
one listing is taken back at a time.
"""

from styldod_batch.manifest.feed import ManifestFeed
from styldod_batch.manifest.parse import read_manifest
from styldod_batch.manifest.rows import (
    FIELDS,
    MAX_LINE_BYTES,
    MAX_PROBLEMS,
    ManifestFormat,
    ManifestProblem,
    ManifestRow,
    manifest_format,
)
from styldod_batch.manifest.staging import (
    StagedManifest,
    manifest_items,
    stage_manifest,
    validate_manifest,
)

__all__ = [
    "FIELDS",
    "MAX_LINE_BYTES",
    "MAX_PROBLEMS",
    "ManifestFeed",
    "ManifestFormat",
    "ManifestProblem",
    "ManifestRow",
    "StagedManifest",
    "manifest_format",
    "manifest_items",
    "read_manifest",
    "stage_manifest",
    "validate_manifest",
]
