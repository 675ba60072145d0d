"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, make_tree


def test_readme_library_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    make_tree(tmp_path / "photos", folders=2, files=3, size=2000)
    completed = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("order listing-0") == 2
    assert "Images: 6 total, 6 uploaded, 0 skipped, 0 failed" in completed.stdout
    assert "Outputs: 6 downloaded" in completed.stdout
    # Upload, follow and download in one program: each output is the sandbox's "edit" of its
    # input (the same bytes), in edited/<listing>/<image>.
    for photo in (tmp_path / "photos").rglob("*.jpg"):
        edited = tmp_path / "edited" / photo.parent.name / photo.name
        assert edited.read_bytes() == photo.read_bytes()
