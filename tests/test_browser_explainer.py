"""The Explainer in a real browser (Chromium): more methods chosen in the sidebar, the grid rendered with
colour bars, raw ranges and downloads, no exception box; a screenshot in test-artifacts/explainer.png."""

from __future__ import annotations

from browser import DONE, browser_page, dashboard, open_page
from conftest import ARTIFACTS

EXCEPTION = '[data-testid="stException"]'
IMAGES = '[data-testid="stImage"] img'


def _wait_count(page, selector: str, count: int, timeout_ms: int = 180_000) -> None:
    page.wait_for_function(
        "([s, n]) => document.querySelectorAll(s).length >= n", arg=[selector, count], timeout=timeout_ms
    )
    page.wait_for_selector(DONE, timeout=timeout_ms)


def _add_method(page, title: str) -> None:
    box = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').first
    box.locator("input").click()
    page.keyboard.type(title)
    page.get_by_role("option", name=title, exact=True).click()
    page.keyboard.press("Escape")
    page.wait_for_selector(DONE, timeout=180_000)


def test_explainer_grid_in_a_real_browser(app_workspace):
    ARTIFACTS.mkdir(exist_ok=True)
    with dashboard(app_workspace) as url, browser_page(width=1500, height=2100) as page:
        open_page(page, f"{url}/Explainer")
        _wait_count(page, IMAGES, 1 + 3 * 3)  # the input, then overlay, heatmap, colour bar per method
        for title in ("Integrated Gradients", "Grad-CAM++"):
            _add_method(page, title)
        _wait_count(page, IMAGES, 1 + 5 * 3)
        for title in ("Grad-CAM", "Occlusion sensitivity", "Vanilla gradients", "Integrated Gradients", "Grad-CAM++"):
            assert page.get_by_text(title, exact=True).count() >= 1, title
        assert page.get_by_text("Raw range [", exact=False).count() == 5
        assert page.locator('[data-testid="stDownloadButton"]').count() == 5 * 2 + 3
        # parameter expanders come from describe(): one per chosen method that has parameters
        assert page.locator('[data-testid="stSidebar"] [data-testid="stExpander"]').count() == 4
        assert page.locator(EXCEPTION).count() == 0
        page.locator('[data-testid="stHeading"]').filter(has_text="Explanations").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "explainer.png"))
