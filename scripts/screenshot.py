"""Takes the README's screenshot: the Explainer page on a workspace's newest run, in Debian's Chromium.

Usage: .venv/bin/python scripts/screenshot.py WORKSPACE [OUT.png]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import DONE, browser_page, dashboard, open_page


def main(workspace: str, out: str = "assets/screenshot.png") -> None:
    with dashboard(workspace) as url, browser_page(1400, 1050) as page:
        open_page(page, f"{url}/Explainer")
        page.wait_for_function(
            "document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 7", timeout=180_000
        )
        page.wait_for_selector(DONE)
        page.locator('[data-testid="stMainBlockContainer"]').evaluate("el => el.scrollIntoView()")
        page.get_by_text("Explanations", exact=True).scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
