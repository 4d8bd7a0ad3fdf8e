"""One real-browser test: every page in Chromium, rendered content asserted, no exception box, screenshots.

Screenshots land in test-artifacts/ (ignored by git)."""

from __future__ import annotations

from urllib.parse import urlparse

from browser import DONE, browser_page, dashboard, open_page
from conftest import ARTIFACTS

EXCEPTION = '[data-testid="stException"]'


def _settle(page, selector: str, count: int, timeout_ms: int = 120_000) -> None:
    page.wait_for_function(
        "([s, n]) => document.querySelectorAll(s).length >= n", arg=[selector, count], timeout=timeout_ms
    )
    page.wait_for_selector(DONE, timeout=timeout_ms)


def test_every_page_in_a_real_browser(app_workspace, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    bad_upload = tmp_path / "not_an_image.png"
    bad_upload.write_bytes(b"plain text pretending to be a PNG")
    too_large = tmp_path / "too_large.keras"
    too_large.write_bytes(bytes(51 * 2**20))  # over server.maxUploadSize (50 MB)
    outside = []  # every request that leaves the machine (icons and fonts must ship with the app)
    with dashboard(app_workspace) as url, browser_page() as page:
        page.on(
            "request", lambda request: urlparse(request.url).hostname != "127.0.0.1" and outside.append(request.url)
        )
        # Home: the current run at a glance.
        open_page(page, url)
        page.get_by_text("Current run").wait_for()
        _settle(page, '[data-testid="stMetric"]', 4)
        assert page.locator('[data-testid="stMetric"]').count() == 4
        assert "compact_cnn" in page.locator('[data-testid="stMetric"]').first.inner_text()
        nav = page.locator('[data-testid="stSidebarNav"]')
        for name in ("Dataset", "Training", "Evaluation", "Explainer"):
            assert nav.get_by_text(name, exact=True).count() == 1
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "home.png"))

        # Dataset: distribution chart and sample grid; a rescan reads the folder again.
        open_page(page, f"{url}/Dataset")
        _settle(page, ".js-plotly-plot", 1)
        _settle(page, '[data-testid="stImage"] img', 18)
        assert page.get_by_text("Class distribution").count() == 1
        picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input')
        label, needed, shown = picker.evaluate("e => [e.value, e.scrollWidth, e.clientWidth]")
        assert label.startswith("app-test · ") and needed <= shown  # the run's label fits the sidebar
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "dataset.png"))
        page.get_by_role("button", name="Rescan").click()
        page.wait_for_selector(DONE)
        _settle(page, '[data-testid="stImage"] img', 18)
        assert page.locator(EXCEPTION).count() == 0

        # Training: two curves.
        open_page(page, f"{url}/Training")
        _settle(page, ".js-plotly-plot", 2)
        assert page.get_by_text("Hyper-parameters").count() == 1
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "training.png"))

        # Evaluation: report (blank cells where a value does not apply), confusion matrix, ROC and PR curves.
        open_page(page, f"{url}/Evaluation")
        _settle(page, ".js-plotly-plot", 3)
        assert page.get_by_text("Classification report").count() == 1
        report = page.locator('[data-testid="stTable"]').first.inner_text()
        assert "accuracy" in report and "None" not in report and "nan" not in report
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "evaluation.png"))
        page.get_by_text("ROC curves (one-vs-rest)").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "evaluation_curves.png"))

        # Explainer: the image, then overlay + heatmap for each of the three methods, with timings.
        open_page(page, f"{url}/Explainer")
        _settle(page, '[data-testid="stImage"] img', 7, timeout_ms=180_000)
        for title in ("Grad-CAM", "Occlusion sensitivity", "Vanilla gradients"):
            assert page.get_by_text(title, exact=True).count() >= 1
        assert page.get_by_text(" ms", exact=False).count() >= 3
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "explainer.png"))

        # A bad upload gets a message, not a traceback.
        page.get_by_text("Upload", exact=True).click()
        page.wait_for_selector(DONE)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad_upload))
        page.get_by_text("cannot be used").wait_for(timeout=60_000)
        page.wait_for_selector(DONE)
        assert "not an image" in page.locator('[data-testid="stAlert"]').first.inner_text()
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "explainer_bad_upload.png"))

        # Import: the page title matches the sidebar; an upload over the limit is explained in words.
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Import model", exact=True).click()
        page.wait_for_selector(DONE)
        page.get_by_role("heading", name="Import model").wait_for()
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(too_large))
        page.get_by_text("at most 50 MB").first.wait_for()
        assert page.get_by_text("A file over 50 MB is refused by the browser").count() == 1
        assert page.locator(EXCEPTION).count() == 0
        page.screenshot(path=str(ARTIFACTS / "import_too_large.png"))

        # The other pages: each renders without an exception box (their own tests check their content).
        for name in ("Inside_the_model", "Audit", "Feedback", "Embeddings"):
            open_page(page, f"{url}/{name}")
            page.wait_for_timeout(1500)  # a page may start a second script run (a rerun) right away
            page.wait_for_selector(DONE, timeout=180_000)
            assert page.locator(EXCEPTION).count() == 0, name
            page.screenshot(path=str(ARTIFACTS / f"{name.lower()}.png"))

    assert outside == [], f"requests left 127.0.0.1: {outside}"
