"""The morning review page (``styldod-batch report --html``), built from a real job on the
sandbox and opened in a real headless Chromium."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from styldod_batch import Settings, Uploader
from styldod_batch.cli import main
from styldod_batch.demo import make_sample_tree, sample_png
from styldod_batch.review import ReviewFilter, RunRecorder, thumbs_folder, write_review
from styldod_batch.review.runlog import read_runs, run_log_path
from styldod_batch.sandbox import Sandbox
from tests.browser import browser_missing, chromium
from tests.helpers import json_report, run_cli

LISTINGS = ("listing-101", "listing-102", "listing-103")


async def _night(sandbox: Sandbox, root: Path) -> Settings:
    """A night's job: three listings uploaded, ordered, followed and downloaded, one file
    that cannot be uploaded; then a second run meets a late photo and a changed one."""
    photos = root / "photos"
    make_sample_tree(photos, len(LISTINGS), 4)
    (photos / "listing-101" / "05-empty.png").write_bytes(b"")
    settings = Settings(
        base_url=sandbox.base_url,
        api_key=sandbox.api_key,
        state=root / "state",
        options={"basic_editing": True},
        follow_ups=False,
    )
    async with Uploader(settings) as up, RunRecorder(up):
        report = await up.run([photos])
        assert await up.follow(report, timeout_s=60)
        await up.download(report, root / "edited")
    assert report.failed == 1 and report.outputs.get("downloaded") == 12
    (photos / "listing-102" / "09-new.png").write_bytes(sample_png(200, 150, 999))
    (photos / "listing-103" / "01-front.png").write_bytes(sample_png(320, 240, 4242))
    async with Uploader(settings) as up, RunRecorder(up):
        again = await up.run([photos])
    assert len(again.late) == 1 and len(again.changed) == 1
    return settings


async def test_the_review_page_shows_the_night_and_caches_its_thumbnails(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = await _night(sandbox, tmp_path)
    runs = read_runs(run_log_path(settings))
    assert len(runs) == 2 and runs[0].files == 12 and len(runs[0].orders) == 3
    assert sum(t[1] + t[2] for t in runs[0].ticks) >= 12 + 3  # PUTs and API calls

    page = tmp_path / "review" / "index.html"
    first = await write_review(settings, page)
    assert (first.listings, first.orders, first.images) == (3, 3, 14)  # 12, late, failed
    assert first.thumbnails_made > 0
    second = await write_review(settings, page)
    assert second.thumbnails_made == 0 and second.thumbnails == first.thumbnails

    html = page.read_text()
    assert sandbox.api_key not in html
    assert not re.search(r"""(src|href)="https?:""", html)  # nothing from the internet
    for marked in ("s-failed", "s-late", "s-changed", "s-downloaded"):
        assert f'<li class="{marked}"' in html
    assert "empty file" in html  # the failure's reason, in its listing
    assert "<svg" in html and "limit 20/s" in html

    late_only = await write_review(
        settings, tmp_path / "late.html", ReviewFilter(states=frozenset({"late"}))
    )
    assert (late_only.listings, late_only.images) == (1, 1)
    last_run = await write_review(settings, tmp_path / "last.html", ReviewFilter(run="last"))
    assert last_run.orders == 3  # the second run met the first one's orders (resumed)
    nothing = await write_review(settings, tmp_path / "none.html", ReviewFilter(run="1999"))
    assert nothing.listings == 0
    first_run = await write_review(
        settings, tmp_path / "first.html", ReviewFilter(run=runs[0].run_id)
    )
    assert first_run.orders == 3


async def test_the_report_command_writes_the_page(sandbox: Sandbox, tmp_path: Path) -> None:
    settings = await _night(sandbox, tmp_path)
    page = tmp_path / "cli.html"
    argv = ["report", "--html", str(page), "--state", str(settings.state)]
    argv += ["--api-key", sandbox.api_key, "--base-url", sandbox.base_url]
    argv += ["--listing", "listing-10[12]", "--since", "1h"]
    assert await asyncio.to_thread(main, argv) == 0
    html = page.read_text()
    assert 'data-name="listing-101"' in html and 'data-name="listing-102"' in html
    assert 'data-name="listing-103"' not in html


async def test_upload_with_html_writes_the_page_of_its_listings(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    make_sample_tree(tmp_path / "photos", 2, 2)
    page = tmp_path / "upload.html"
    argv = ["upload", str(tmp_path / "photos" / "listing-101"), "--html", str(page)]
    argv += ["--api-key", sandbox.api_key, "--base-url", sandbox.base_url, "--json"]
    argv += ["--state", str(tmp_path / "state"), "--wait", "--download", str(tmp_path / "out")]
    done = await asyncio.to_thread(run_cli, *argv)
    assert done.returncode == 0, done.stderr
    assert json_report(done)["images"]["uploaded"] == 2  # stdout stays one JSON report
    assert "Review page: " in done.stderr
    html = page.read_text()
    assert 'data-name="listing-101"' in html and "listing-102" not in html
    assert html.count('<li class="s-downloaded"') == 2
    assert "limit 20/s" in html  # the run recorded its timeline


def test_the_demo_ends_with_its_review_page(tmp_path: Path) -> None:
    page = tmp_path / "demo" / "review.html"
    done = run_cli("demo", "--listings", "2", "--photos", "2", "--html", str(page))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().splitlines()[-2] == f"The morning review of these orders: {page}"
    html = page.read_text()
    assert html.count('<li class="s-downloaded"') == 4  # the outputs were fetched for it
    assert "limit 20/s" in html


def _require_browser() -> None:
    problem = browser_missing()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser test needs a headless Chromium: {problem}")
    pytest.skip(problem)


async def test_the_review_page_in_a_real_browser(sandbox: Sandbox, tmp_path: Path) -> None:
    _require_browser()
    settings = await _night(sandbox, tmp_path)
    page = tmp_path / "review.html"
    written = await write_review(settings, page)
    thumbs = len(list(thumbs_folder(page).glob("*.jpg")))
    assert thumbs > 0
    # A large night's page: closed sections, whose pictures load when they are opened.
    closed = tmp_path / "closed.html"
    await write_review(
        settings, closed, ReviewFilter(states=frozenset({"downloaded"})), open_up_to=0
    )
    assert '<ul class="images deferred">' in closed.read_text()
    shot = tmp_path / "review.png"
    checks = await asyncio.to_thread(_browse, page, closed, tmp_path / "profile", shot)
    print(f"\nscreenshot of the review page: {shot}")

    assert checks["errors"] == [], checks["errors"]
    assert sorted(checks["sections"]) == list(LISTINGS)
    # Every image on the page is in the DOM: originals (the empty file has none) and outputs.
    assert checks["images"] == page.read_text().count("<img ") >= written.images - 1 + 11
    assert checks["broken"] == [], checks["broken"]
    assert checks["search"] == ["listing-102"]
    assert set(checks["problems_shown"]) == {"failed", "late", "changed"}
    assert checks["problem_sections"] == list(LISTINGS)  # each has one problem
    assert checks["all_again"] == len(LISTINGS)
    assert shot.stat().st_size > 10_000
    assert checks["closed_before"] == (0, 0)  # no section open, no picture asked for
    assert checks["closed_after"] == (3, 22, 22)  # opened: 11 originals and 11 outputs


def _browse(page: Path, closed: Path, profile: Path, shot: Path) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    with chromium(profile, width=1280, height=2000) as driver:
        driver.get(page.as_uri())
        found: dict[str, Any] = {}
        found["sections"] = driver.execute_script(
            "return Array.from(document.querySelectorAll('details.listing'))"
            ".map(d => d.querySelector('summary .name').textContent)"
        )
        # Every image, loaded now: sections opened, lazy loading off, each scrolled to.
        driver.execute_script(
            "document.querySelectorAll('details.listing').forEach(d => { d.open = true; });"
        )
        _all_loaded(driver)
        found["images"] = driver.execute_script("return document.images.length")
        found["broken"] = driver.execute_script(
            "return Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
            ".map(i => i.getAttribute('src'))"
        )
        missing_alt = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.alt).length"
        )
        assert missing_alt == 0

        visible = (
            "return Array.from(document.querySelectorAll('details.listing'))"
            ".filter(d => !d.hidden).map(d => d.querySelector('summary .name').textContent)"
        )
        search = driver.find_element(By.ID, "search")
        search.send_keys("102")
        found["search"] = driver.execute_script(visible)
        search.clear()
        driver.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")

        driver.find_element(By.ID, "problems").click()
        found["problems_shown"] = driver.execute_script(
            "return Array.from(document.querySelectorAll('ul.images li'))"
            ".filter(li => li.offsetParent !== null).map(li => li.className.slice(2))"
        )
        found["problem_sections"] = driver.execute_script(visible)
        driver.find_element(By.ID, "everything").click()
        found["all_again"] = len(driver.execute_script(visible))

        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shot))
        found["errors"] = [
            entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"
        ]

        driver.get(closed.as_uri())
        found["closed_before"] = tuple(
            driver.execute_script(
                "return [document.querySelectorAll('details[open]').length,"
                " document.querySelectorAll('img[src]').length]"
            )
        )
        driver.find_element(By.ID, "expand").click()
        _all_loaded(driver)
        found["closed_after"] = tuple(
            driver.execute_script(
                "return [document.querySelectorAll('details[open]').length,"
                " document.images.length,"
                " Array.from(document.images).filter(i => i.naturalWidth > 0).length]"
            )
        )
        found["errors"] += [
            entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"
        ]
        return found


def _all_loaded(driver: Any) -> None:
    """Every picture asked for now (lazy loading off, each scrolled to), then loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script(
        "document.querySelectorAll('img').forEach(i => { i.loading = 'eager';"
        " i.scrollIntoView(); });"
    )
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
    )
