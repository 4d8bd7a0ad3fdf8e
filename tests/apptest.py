"""AppTest helpers shared by the per-page tests (tests/test_page_*.py)."""

from __future__ import annotations

import io
import json

import numpy as np
from conftest import PROJECT_ROOT
from PIL import Image
from streamlit.testing.v1 import AppTest

HOME = str(PROJECT_ROOT / "Home.py")


def open_page(page: str | None, workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("XAI_WORKSPACE", str(workspace))
    at = AppTest.from_file(HOME, default_timeout=240).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plots(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def images(at) -> list:
    return list(at.get("image"))


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A small PNG that claims 30,000 x 30,000 pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")
    return buffer.getvalue()
