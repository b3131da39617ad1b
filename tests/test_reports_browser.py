"""Every report page in a real browser (headless Chromium): it renders (the screenshot is not
blank), the console stays silent, and the figures' titles are drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.synthetic import Synthetic, generate
from db.engine import make_engine
from reports.study import render_reports
from tests.browser import load

EXPECTED = {
    "index.html": [
        "Ablation map — study synthetic",
        "Interaction: masking x ratio",
        "Interaction: masking x target",
        "Interaction: ratio x target",
        "Axis importance (fANOVA)",
        "Cost per trial",
    ],
    "masking.html": [
        "Probe accuracy by masking",
        "Paired difference to the baseline (unstructured) by masking",
        "Probe macro_f1 by masking",
        "Training curves by masking",
    ],
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A partial factorial study: one trial failed, one running, one not started."""
    tmp = tmp_path_factory.mktemp("browser")
    syn = Synthetic(
        design="factorial",
        axes={
            "masking": ["unstructured", "time"],
            "ratio": ["0.6", "0.8"],
            "target": ["layer", "instance"],
        },
        seeds=(0, 1, 2),
        fail=((1, 0),),
        running=((2, 1),),
        skip=((3, 2),),
    )
    engine = make_engine(f"sqlite:///{tmp / 'results.db'}")
    generate(engine, syn)
    paths = render_reports(engine, syn.study, tmp / "reports", expected=syn.expected())
    return {p.name: p for p in paths}


@pytest.mark.parametrize("name", ["index.html", "masking.html", "ratio.html", "target.html"])
def test_page_renders_in_chromium(pages: dict[str, Path], name: str, tmp_path: Path) -> None:
    got = load(pages[name], tmp_path)
    assert got.console == []
    assert got.ink() > 0.05, "the screenshot is (nearly) blank"
    titles = got.figure_titles
    for title in EXPECTED.get(name, []):
        assert title in titles, (title, titles)
    assert len(titles) >= (4 if name != "index.html" else 6)


def test_the_check_sees_script_errors_and_blank_pages(tmp_path: Path) -> None:
    """The browser check can fail: a script error reaches the console, a blank page has no
    ink and no figure title."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined();</script></body></html>")
    got = load(bad, tmp_path / "run")
    assert any("notDefined" in line for line in got.console)
    assert got.ink() < 0.01 and got.figure_titles == []
