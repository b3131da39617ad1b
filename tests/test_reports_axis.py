"""Tests for reports.axis: summary statistics and the self-contained HTML page.

Single-seed convention (documented in reports.axis.bootstrap_ci): ci_low and ci_high are NaN.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from reports.axis import (
    AVERAGE_TASK,
    bootstrap_ci,
    build_axis_figures,
    render_axis_report,
    select_axis_rows,
    summarise,
)

STUDY = "study-alpha"
AXIS = "masking"
TASKS = ("env-sfx", "speech-cmd")
SEEDS = (0, 1, 2)
# Hand-picked accuracies: (setting, task) -> value per seed. macro_f1 = accuracy - 0.1.
ACC = {
    ("block", "env-sfx"): [0.60, 0.70, 0.80],
    ("block", "speech-cmd"): [0.50, 0.55, 0.65],
    ("multiblock", "env-sfx"): [0.72, 0.74, 0.79],
    ("multiblock", "speech-cmd"): [0.40, 0.45, 0.41],
}
BASE_ACC = {"env-sfx": [0.66, 0.68, 0.70], "speech-cmd": [0.52, 0.50, 0.57]}
REF_ACC = {"random-init": 0.20, "logmel-stats": 0.35}


def _row(key: str, seed: int, axis: str, setting: str, status: str, task, metric, value) -> dict:
    return dict(
        study=STUDY,
        key=key,
        seed=seed,
        axis=axis,
        setting=setting,
        status=status,
        task=task,
        metric=metric,
        value=value,
        baseline_setting="unstructured",
    )


def _trial_rows(key: str, seed: int, axis: str, setting: str, accs: dict[str, float]) -> list:
    out = []
    for task, acc in accs.items():
        out.append(_row(key, seed, axis, setting, "done", task, "accuracy", acc))
        out.append(_row(key, seed, axis, setting, "done", task, "macro_f1", acc - 0.1))
    return out


@pytest.fixture
def df() -> pd.DataFrame:
    rows: list[dict] = []
    for setting in ("block", "multiblock"):
        for i, seed in enumerate(SEEDS):
            accs = {t: ACC[(setting, t)][i] for t in TASKS}
            rows += _trial_rows(f"{setting}-hash-{seed:04d}abcdef", seed, AXIS, setting, accs)
    for i, seed in enumerate(SEEDS):
        accs = {t: BASE_ACC[t][i] for t in TASKS}
        rows += _trial_rows(f"basehash{seed:02d}xyz", seed, "baseline", "whatever", accs)
    for ref, acc in REF_ACC.items():
        rows += _trial_rows(f"ref-{ref}-key", 0, "reference", ref, {t: acc for t in TASKS})
    # A failed trial: no task / metric / value, only the status row.
    rows.append(_row("FAILEDKEY1-rest", 3, AXIS, "block", "failed", None, None, np.nan))
    # A trial of another axis: must not show up.
    rows += _trial_rows("otheraxis-key", 0, "patch_size", "16", {t: 0.99 for t in TASKS})
    return pd.DataFrame(rows)


def _cell(summary: pd.DataFrame, setting: str, task: str) -> pd.Series:
    sel = summary[(summary["setting"] == setting) & (summary["task"] == task)]
    assert len(sel) == 1, (setting, task, summary)
    return sel.iloc[0]


def test_summarise_means_cis_and_counts(df: pd.DataFrame) -> None:
    s = summarise(select_axis_rows(df, AXIS), "accuracy")
    assert list(s.columns) == ["setting", "task", "n_seeds", "mean", "ci_low", "ci_high"]
    assert set(s["setting"]) == {"block", "multiblock", "unstructured (baseline)"}
    assert (s["mean"] < 0.9).all()  # the other axis (all 0.99) is excluded

    expected = dict(ACC)
    expected.update({("unstructured (baseline)", t): v for t, v in BASE_ACC.items()})
    for (setting, task), vals in expected.items():
        c = _cell(s, setting, task)
        assert c["n_seeds"] == 3  # the failed seed 3 of "block" must not count
        assert c["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert min(vals) - 1e-12 <= c["ci_low"] <= c["mean"] + 1e-12
        assert c["mean"] - 1e-12 <= c["ci_high"] <= max(vals) + 1e-12
        assert c["ci_low"] < c["ci_high"]  # values differ, so the interval has width

    # Average over tasks: per-seed mean over tasks, then mean across seeds.
    avg = _cell(s, "block", AVERAGE_TASK)
    per_seed = np.mean([ACC[("block", t)] for t in TASKS], axis=0)
    assert avg["n_seeds"] == 3
    assert avg["mean"] == pytest.approx(per_seed.mean(), abs=1e-12)
    assert per_seed.min() <= avg["ci_low"] <= avg["mean"] <= avg["ci_high"] <= per_seed.max()

    f1 = summarise(select_axis_rows(df, AXIS), "macro_f1")
    assert _cell(f1, "block", "env-sfx")["mean"] == pytest.approx(0.6, abs=1e-12)


def test_summarise_is_deterministic(df: pd.DataFrame) -> None:
    rows = select_axis_rows(df, AXIS)
    pd.testing.assert_frame_equal(summarise(rows, "accuracy"), summarise(rows, "accuracy"))


def test_single_seed_ci_is_nan(df: pd.DataFrame) -> None:
    one = select_axis_rows(df[df["seed"] == 0], AXIS)
    s = summarise(one, "accuracy")
    c = _cell(s, "block", "env-sfx")
    assert c["n_seeds"] == 1
    assert c["mean"] == pytest.approx(0.60)
    assert math.isnan(c["ci_low"]) and math.isnan(c["ci_high"])
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))


def test_nan_values_and_pending_rows_are_ignored(df: pd.DataFrame) -> None:
    extra = pd.DataFrame(
        [
            dict(df.iloc[0].to_dict(), seed=9, value=np.nan),
            dict(df.iloc[0].to_dict(), seed=10, status="pending", value=0.0),
        ]
    )
    s = summarise(select_axis_rows(pd.concat([df, extra]), AXIS), "accuracy")
    c = _cell(s, "block", "env-sfx")
    assert c["n_seeds"] == 3
    assert c["mean"] == pytest.approx(0.70)


def test_figures_have_titles_bars_and_reference_lines(df: pd.DataFrame) -> None:
    figs = build_axis_figures(df, AXIS)
    assert len(figs) == 2
    assert f"Probe accuracy by {AXIS} setting" in figs[0].layout.title.text
    assert f"Probe macro_f1 by {AXIS} setting" in figs[1].layout.title.text
    names = [t.name for t in figs[0].data]
    assert names[0] == "unstructured (baseline)"  # baseline listed first
    assert set(names) == {"unstructured (baseline)", "block", "multiblock"}
    assert list(figs[0].data[0].x) == [*TASKS, AVERAGE_TASK]
    ref_names = {sh.name for sh in figs[0].layout.shapes}
    assert ref_names == {"random-init", "logmel-stats"}
    assert all(sh.line.dash in ("dash", "dashdot") for sh in figs[0].layout.shapes)
    ys = {(sh.name, round(sh.y0, 6)) for sh in figs[0].layout.shapes}
    assert ("random-init", 0.2) in ys and ("logmel-stats", 0.35) in ys


def test_single_seed_note_in_subtitle(df: pd.DataFrame) -> None:
    fig = build_axis_figures(df[df["seed"] == 0], AXIS)[0]
    assert "single seed" in fig.layout.title.subtitle.text
    fig3 = build_axis_figures(df, AXIS)[0]
    assert "single seed" not in fig3.layout.title.subtitle.text


def test_render_axis_report_is_self_contained(df: pd.DataFrame, tmp_path: Path) -> None:
    out = render_axis_report(df, AXIS, STUDY, tmp_path / "sub" / "masking.html")
    assert out == tmp_path / "sub" / "masking.html"
    text = out.read_text(encoding="utf-8")
    # No temp file left behind by the atomic write.
    assert [p.name for p in out.parent.iterdir()] == ["masking.html"]

    bundle = get_plotlyjs()
    banner = bundle[: bundle.index("\n", bundle.index("plotly.js v"))].strip()
    assert "plotly.js v" in banner
    assert text.count(banner) == 1
    assert text.count(bundle) == 1
    # plotly.js itself carries default URLs (map tiles, topojson) that contain "cdn."; they are
    # only used by map traces. Everything outside the bundle must be free of network references.
    rest = text.replace(bundle, "")
    assert "cdn." not in rest
    assert 'src="http' not in text
    assert "<script src" not in text

    assert AXIS in text and STUDY in text
    for setting in ("block", "multiblock", "unstructured (baseline)"):
        assert setting in text
    assert "FAILEDKEY1" in text  # first 10 chars of the failed trial's key
    assert "FAILED (no results)" in text
    assert "1 trial(s) failed" in text
    assert "otheraxis" not in rest  # trials of another axis are not listed
    assert "done / 1 failed / 0 pending" in text


def test_render_escapes_user_strings(df: pd.DataFrame, tmp_path: Path) -> None:
    evil = "<img onerror=x>"
    d = df.copy()
    d.loc[d["setting"] == "block", "setting"] = evil
    d["study"] = "st<u>dy"
    out = render_axis_report(d, AXIS, "st<u>dy", tmp_path / "r.html")
    rest = out.read_text(encoding="utf-8").replace(get_plotlyjs(), "")
    assert evil not in rest
    assert "<u>" not in rest
    assert "&lt;img onerror=x&gt;" in rest
