"""Which folders the dashboard may read: a configurable set of data roots.

``XAI_DATA_ROOTS`` (paths separated by ``os.pathsep``) sets them; the default is the workspace and the
current directory. A path outside every root is refused with a message that lists the roots.
"""

from __future__ import annotations

import os
from pathlib import Path


class DataRootError(ValueError):
    """A path lies outside the folders the dashboard may read."""


def data_roots(workspace) -> list[Path]:
    configured = os.environ.get("XAI_DATA_ROOTS")
    if configured:
        return [Path(p).expanduser().resolve() for p in configured.split(os.pathsep) if p.strip()]
    return [Path(workspace).resolve(), Path.cwd().resolve()]


def resolve_within(path, roots) -> Path:
    """``path`` resolved (symbolic links followed) if it lies inside one of ``roots``; else DataRootError."""
    text = str(path).strip()
    if not text:
        raise DataRootError("No folder given.")
    resolved = Path(text).expanduser().resolve()
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise DataRootError(
        f"{resolved} is outside the folders this dashboard may read ({allowed}). "
        "Set XAI_DATA_ROOTS to allow another folder."
    )
