"""A real headless Chromium for tests (Debian's ``chromium`` and ``chromium-driver``, which
``scripts/_browser.sh`` installs), driven through Selenium.

It is started so that it never reaches for the network: no background networking, no
component updates, no sync, no QUIC, and a fresh profile each time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> str | None:
    """Why no browser can be started here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    missing = [
        n for n, c in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)) if not _find(c)
    ]
    if missing:
        return f"{' and '.join(missing)} not installed (scripts/_browser.sh installs them)"
    return None


@contextmanager
def chromium(profile: Path, *, width: int = 1280, height: int = 2000) -> Iterator[Any]:
    """A headless Chromium (a Selenium WebDriver) with a fresh profile in ``profile``; its
    console messages are kept for ``driver.get_log("browser")``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _find(CHROMIUM), _find(CHROMEDRIVER)
    assert binary is not None and driver_path is not None, browser_missing()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()
