"""The Training page in Chromium: a double click on "Start training" starts one job, whose outcome (test
accuracy, links to its pages) appears without a reload; no exception anywhere."""

from __future__ import annotations

import shutil
import time

from browser import DONE, browser_page, dashboard, open_page
from conftest import ARTIFACTS
from playwright.sync_api import expect

from core import jobs


def test_double_click_starts_one_job_and_its_outcome_appears(app_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace, ignore=shutil.ignore_patterns("jobs", "logs"))
    with dashboard(workspace) as url, browser_page() as page:
        open_page(page, f"{url}/Training")
        page.get_by_role("tab", name="Train a new model").click()
        folder = page.get_by_role("textbox", name="Image folder")
        folder.fill(str(workspace / "datasets" / "shapes"))
        folder.press("Enter")
        page.wait_for_selector(DONE)
        epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
        # The rerun after Enter can leave the old form's inputs on the page for a moment: wait for one.
        expect(epochs).to_have_count(1, timeout=60_000)
        epochs.fill("1")
        page.get_by_role("spinbutton", name="Image size (px)").fill("16")
        page.get_by_role("button", name="Start training").dblclick()
        page.get_by_text("finished: test accuracy").first.wait_for(timeout=240_000)
        time.sleep(3)
        page.wait_for_selector(DONE)
        assert page.get_by_text("finished: test accuracy").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "training-job.png"))
        assert page.get_by_role("button", name="Evaluation").count() == 1
        assert page.locator('[data-testid="stException"]').count() == 0
    (job,) = jobs.list_jobs(workspace)  # two clicks, one job
    assert job.status == jobs.COMPLETE
