"""Small wording helpers shared by the command line and the pages."""

from __future__ import annotations


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``1 image``, ``3 images``, ``1 run folder``; ``plural`` for irregular words (``1 family``, ``2 families``)."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def score(value, digits: int = 4) -> str:
    """A metric with ``digits`` decimals, or ``n/a`` when there is none (a ROC AUC of a one-class test split)."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"
