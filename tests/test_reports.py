"""The report pages from a generated results database (real SQLite, written through db.queries
as the runner writes it): the statistics they show, partial studies, factorial interactions,
axis importance, and self-contained, escaped HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from scipy import stats

from bench.synthetic import Synthetic, generate, key
from db.engine import make_engine
from db.queries import export_frame
from reports.data import AVERAGE_TASK, analyse, interactions, load_results, recipe
from reports.importance import axis_importance
from reports.stats import holm
from reports.study import render_reports

TASKS = ("env-sfx", "speech-digits")


def build(tmp_path: Path, syn: Synthetic, name: str = "r.db"):
    engine = make_engine(f"sqlite:///{tmp_path / name}")
    generate(engine, syn)
    return engine


def accuracy(engine, study: str) -> pd.DataFrame:
    """Accuracy in percent by key and task, straight from the export."""
    df = export_frame(engine, study)
    df = df[(df["metric"] == "accuracy") & (df["status"] == "done") & (df["axis"] != "reference")]
    return df.pivot_table(index="key", columns="task", values="value") * 100


def test_comparisons_are_paired_by_seed_with_holm_over_the_axis(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time", "multiblock"]}, seeds=(0, 1, 2, 3), tasks=TASKS
    )
    engine = build(tmp_path, syn)
    res = load_results(engine, syn.study, syn.expected())
    comp = analyse(res)["masking"].comparisons
    acc = accuracy(engine, syn.study)
    acc[AVERAGE_TASK] = acc[list(TASKS)].mean(axis=1)
    configs = syn.configs()
    index = {c[1]: i for i, c in enumerate(configs)}
    for setting in ("time", "multiblock"):
        for task in [*TASKS, AVERAGE_TASK]:
            base = np.array([acc.at[key(syn, 0, s), task] for s in syn.seeds])
            other = np.array([acc.at[key(syn, index[setting], s), task] for s in syn.seeds])
            row = comp[(comp["setting"] == setting) & (comp["task"] == task)].iloc[0]
            assert row["n"] == 4
            assert row["diff"] == pytest.approx((other - base).mean())
            assert row["p"] == pytest.approx(stats.ttest_rel(other, base).pvalue)
            assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    # Holm over the axis' whole family: two values x (two tasks + the average).
    assert len(comp) == 6
    assert comp["p_holm"].tolist() == pytest.approx(holm(comp["p"].tolist()))


def test_factorial_value_pools_its_cells_at_each_seed(tmp_path: Path) -> None:
    syn = Synthetic(
        design="factorial", axes={"a": ["x", "y"], "b": ["1", "2", "3"]}, seeds=(0, 1), tasks=TASKS
    )
    engine = build(tmp_path, syn)
    res = load_results(engine, syn.study, syn.expected())
    comp = analyse(res)["a"].comparisons
    acc = accuracy(engine, syn.study)
    row = comp[(comp["setting"] == "y") & (comp["task"] == "env-sfx")].iloc[0]
    diffs = []
    for s in syn.seeds:
        ys = [
            acc.at[key(syn, i, s), "env-sfx"]
            for i, c in enumerate(syn.configs())
            if c[2]["a"] == "y"
        ]
        xs = [
            acc.at[key(syn, i, s), "env-sfx"]
            for i, c in enumerate(syn.configs())
            if c[2]["a"] == "x"
        ]
        diffs.append(np.mean(ys) - np.mean(xs))
    assert row["n"] == 2 and row["diff"] == pytest.approx(np.mean(diffs))


def test_interaction_is_zero_when_additive_and_measured_when_not(tmp_path: Path) -> None:
    axes = {"a": ["x", "y"], "b": ["1", "2"], "c": ["p", "q"]}
    additive = Synthetic(
        design="factorial",
        axes=axes,
        seeds=(0, 1),
        tasks=TASKS,
        noise=0.0,
        effects={("a", "y"): 3.0, ("b", "2"): -2.0},
    )
    res = load_results(build(tmp_path, additive, "add.db"), additive.study)
    pairs = {(a, b): (diff, dep) for a, b, diff, dep in interactions(res)}
    assert set(pairs) == {("a", "b"), ("a", "c"), ("b", "c")}
    diff, dep = pairs[("a", "b")]
    assert dep == pytest.approx(0.0, abs=1e-9)
    assert diff.loc["y", "1"] == pytest.approx(3.0) and diff.loc["x", "2"] == pytest.approx(-2.0)
    crossed = Synthetic(
        design="factorial",
        axes=axes,
        seeds=(0, 1),
        tasks=TASKS,
        noise=0.0,
        effects={("a", "y"): 3.0},
        interaction={("a", "y", "b", "2"): 4.0},
    )
    res = load_results(build(tmp_path, crossed, "int.db"), crossed.study)
    pairs = {(a, b): (diff, dep) for a, b, diff, dep in interactions(res)}
    # In a 2x2 table an interaction of I in one cell leaves residuals of I/4 everywhere.
    assert pairs[("a", "b")][1] == pytest.approx(1.0)
    assert pairs[("a", "c")][1] == pytest.approx(0.0, abs=1e-9)


def test_importance_puts_the_axis_that_moves_scores_first(tmp_path: Path) -> None:
    syn = Synthetic(
        design="factorial",
        axes={"big": ["a", "b", "c"], "none": ["1", "2", "3"]},
        seeds=(0, 1),
        tasks=TASKS,
        noise=0.3,
        effects={("big", "b"): 6.0, ("big", "c"): -6.0},
    )
    res = load_results(build(tmp_path, syn), syn.study)
    table, note = axis_importance(res)
    assert "fANOVA" in note and "seed 0" in note and "9 configurations" in note
    assert table.loc["big", AVERAGE_TASK] > 0.9 > table.loc["none", AVERAGE_TASK]
    again, _ = axis_importance(res)
    pd.testing.assert_frame_equal(table, again)  # the evaluator is pinned


def test_importance_says_why_when_it_cannot_be_computed(tmp_path: Path) -> None:
    syn = Synthetic(axes={"masking": ["unstructured", "time"]}, seeds=(0,), tasks=TASKS)
    table, note = axis_importance(load_results(build(tmp_path, syn), syn.study))
    assert table.empty and "importance needs at least 3" in note


def test_recipe_reports_best_value_gain_and_significance(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time", "multiblock"], "ratio": ["0.6", "0.8"]},
        seeds=(0, 1, 2, 3, 4),
        tasks=TASKS,
        noise=0.2,
        effects={("masking", "multiblock"): 5.0, ("masking", "time"): 1.0, ("ratio", "0.8"): -4.0},
    )
    res = load_results(build(tmp_path, syn), syn.study)
    rec = recipe(analyse(res), res.base).set_index("axis")
    assert rec.at["masking", "best"] == "multiblock"
    assert rec.at["masking", "gain"] == pytest.approx(5.0, abs=1.0)
    assert rec.at["masking", "verdict"] == "significant"
    assert rec.at["ratio", "best"] == "0.6 (baseline)"
    assert rec.at["ratio", "verdict"] == "no value beat the baseline"


def test_partial_study_renders_and_says_what_is_missing(tmp_path: Path) -> None:
    syn = Synthetic(
        design="factorial",
        axes={"masking": ["unstructured", "time"], "ratio": ["0.6", "0.8"]},
        seeds=(0, 1),
        tasks=TASKS,
        fail=((1, 0),),
        running=((2, 1),),
        skip=((3, 1),),
    )
    engine = build(tmp_path, syn)
    out = tmp_path / "reports"
    paths = render_reports(engine, syn.study, out, expected=syn.expected())
    assert [p.name for p in paths] == ["masking.html", "ratio.html", "index.html"]
    index = (out / "index.html").read_text()
    assert "Partial study: 3 of 8 trials have no result yet" in index
    assert "failed: loss diverged at step 40" in index
    assert "running" in index and "not started" in index
    for name in ("Ablation map", "Interaction: masking x ratio", "Cost per trial", "Recipe"):
        assert name in index
    masking = (out / "masking.html").read_text()
    assert "Missing results (this page is partial)" in masking
    assert "Paired difference to the baseline (unstructured) by masking" in masking
    assert "Training curves by masking" in masking


def test_one_seed_warns_that_it_cannot_tell(tmp_path: Path) -> None:
    syn = Synthetic(axes={"masking": ["unstructured", "time"]}, seeds=(0,), tasks=TASKS)
    engine = build(tmp_path, syn)
    res = load_results(engine, syn.study)
    comp = analyse(res)["masking"].comparisons
    assert set(comp["verdict"]) == {"1 seed: too few to tell"}
    assert comp["p"].isna().all() and comp["ci_low"].isna().all()
    render_reports(engine, syn.study, tmp_path / "out")
    index = (tmp_path / "out" / "index.html").read_text()
    assert "Seeds too few to tell" in index
    assert "1 seed: too few to tell" in index
    assert (
        "single seed gives no uncertainty estimate"
        in (tmp_path / "out" / "masking.html").read_text()
    )


def test_results_of_an_earlier_version_of_the_study_are_left_out(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time", "multiblock"]}, seeds=(0, 1), tasks=TASKS
    )
    engine = build(tmp_path, syn)
    now = [e for e in syn.expected() if e["setting"] != "multiblock"]
    res = load_results(engine, syn.study, now)
    assert res.stale == 2
    assert "multiblock" not in set(analyse(res)["masking"].comparisons["setting"])
    render_reports(engine, syn.study, tmp_path / "out", expected=now)
    assert "2 result(s) of earlier versions" in (tmp_path / "out" / "index.html").read_text()


def test_a_study_with_no_results_yet_renders(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time"]},
        seeds=(0, 1),
        tasks=TASKS,
        skip=tuple((i, s) for i in range(2) for s in (0, 1)),
    )
    engine = build(tmp_path, syn)
    render_reports(engine, syn.study, tmp_path / "out", expected=syn.expected())
    index = (tmp_path / "out" / "index.html").read_text()
    assert "Partial study: 4 of 4 trials have no result yet" in index
    assert "no paired results yet" in index


def test_pages_are_self_contained_and_escape_user_strings(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)>"
    syn = Synthetic(axes={"masking": ["unstructured", evil]}, seeds=(0, 1), tasks=TASKS)
    engine = build(tmp_path, syn)
    render_reports(engine, syn.study, tmp_path / "out")
    bundle = get_plotlyjs()
    for page in (tmp_path / "out").glob("*.html"):
        text = page.read_text()
        assert text.count(bundle) == 1  # plotly.js inlined, once
        rest = text.replace(bundle, "")
        assert "<script src" not in rest and 'src="http' not in rest
        assert evil not in rest
    assert "&lt;img src=x onerror=alert(1)&gt;" in (tmp_path / "out" / "masking.html").read_text()


def test_rendering_twice_gives_the_same_pages(tmp_path: Path) -> None:
    syn = Synthetic(
        design="factorial", axes={"a": ["x", "y"], "b": ["1", "2"]}, seeds=(0, 1, 2), tasks=TASKS
    )
    engine = build(tmp_path, syn)
    first = [p.read_text() for p in render_reports(engine, syn.study, tmp_path / "one")]
    second = [p.read_text() for p in render_reports(engine, syn.study, tmp_path / "two")]
    assert first == second
