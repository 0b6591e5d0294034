"""The web page in a real headless Chromium (Debian's package, driven by Playwright): log in
with a key, submit a job from the form, watch it complete, find the figure and candidates.

Slow (a whole job on a local Ray Serve). Needs ``/usr/bin/chromium`` (``apt-get install
chromium``); ``RAY_APP_SCREENSHOT=path.png`` keeps a screenshot of the finished job page.
"""

import os
import shutil
from pathlib import Path

import pytest
from api_server import ray_app_serve

CHROMIUM = os.environ.get("RAY_APP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium")]
# flags for a machine with no network and no display (Chromium tries Google's hosts otherwise)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_submit_watch_and_see_the_figure(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with ray_app_serve(tmp_path / "home") as (url, key, _proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.fill("#key", key)
        page.click("#save-key")
        expect(page.locator("#stream-key option[value='gd-1']")).to_have_count(1,
                                                                               timeout=30000)
        page.fill("#job-id", "from-the-page")
        page.click("#submit")
        expect(page.locator("#submit-result")).to_contain_text("submitted from-the-page",
                                                               timeout=30000)
        row = page.locator("#jobs tr[data-job-id='from-the-page']")
        expect(row).to_have_count(1, timeout=30000)
        row.locator("a").click()
        expect(page.locator("#job-state")).to_have_text("COMPLETED", timeout=300000)
        figure = page.locator("#fig-summary-png")
        expect(figure).to_have_count(1, timeout=60000)
        page.wait_for_function("document.querySelector('#fig-summary-png').naturalWidth > 0",
                               timeout=60000)
        cells = page.locator("#candidates tbody tr").first.locator("td")
        expect(cells.nth(6)).to_contain_text("GD-1")  # the candidate is named after GD-1
        assert page.locator("#files li").count() >= 5
        shot = os.environ.get("RAY_APP_SCREENSHOT") or str(tmp_path / "job.png")
        page.screenshot(path=shot, full_page=True)
        browser.close()
        assert not errors, errors
