"""Helpers for tests that read report pages: the page's own content, without the inlined
plotly.js bundle (whose 4 MB hold words like "time", "failed", "running" and "0.4")."""

from __future__ import annotations

from pathlib import Path

from plotly.offline import get_plotlyjs


def own_text(page: Path | str) -> str:
    """The page without the plotly.js bundle, which must be there (self-contained page)."""
    text = page.read_text() if isinstance(page, Path) else page
    bundle = get_plotlyjs()
    assert bundle in text, "the page does not inline plotly.js"
    own = text.replace(bundle, "")
    assert len(own) < len(text) // 2  # what is left is the page's own, not a second bundle
    return own
