"""The layering the README promises: ``core`` is pure Python (no Streamlit, nothing from ``ui`` or the
pages), so the command line, the API and the tests use it without a browser."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_streamlit_ui_or_pages():
    files = sorted((ROOT / "core").rglob("*.py"))
    assert len(files) > 40  # the whole package, not an empty glob
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_modules(f) & {"streamlit", "ui", "pages"})
        for f in files
        if imported_modules(f) & {"streamlit", "ui", "pages"}
    }
    assert offenders == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ui import charts\n    import streamlit as st\n", encoding="utf-8")
    assert {"ui", "streamlit"} <= imported_modules(sample)
