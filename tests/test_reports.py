"""The report pages from a generated results database (real SQLite, written through db.queries
as the runner writes it): the statistics they show (the model behind each test, clip-level
intervals, the minimum detectable effect), partial studies, factorial interactions, axis
importance, and self-contained, escaped HTML."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from plotly.offline import get_plotlyjs
from scipy import stats
from sqlalchemy import select
from typer.testing import CliRunner

from bench.synthetic import Synthetic, generate, key
from db.engine import make_engine
from db.queries import export_frame, finish_trial
from db.schema import Trial
from orchestrator.probing import TaskPredictions
from reports.data import AVERAGE_TASK, interactions, load_results
from reports.importance import axis_importance
from reports.inference import analyse, pooled_noise, recipe, study_design, verdict
from reports.stats import detectable, holm
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


def test_comparisons_test_each_value_against_the_pooled_noise_of_every_cell(
    tmp_path: Path,
) -> None:
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
    for task in [*TASKS, AVERAGE_TASK]:
        # The seed-blocked model, as statsmodels fits it: score ~ cell + seed.
        rows = [
            dict(value=acc.at[key(syn, i, s), task], cell=f"c{i}", seed=str(s))
            for i in range(len(configs))
            for s in syn.seeds
        ]
        ols = smf.ols("value ~ C(cell) + C(seed)", pd.DataFrame(rows)).fit()
        for setting in ("time", "multiblock"):
            base = np.array([acc.at[key(syn, 0, s), task] for s in syn.seeds])
            other = np.array([acc.at[key(syn, index[setting], s), task] for s in syn.seeds])
            row = comp[(comp["setting"] == setting) & (comp["task"] == task)].iloc[0]
            want = ols.t_test(f"C(cell)[T.c{index[setting]}] = 0")
            assert row["n"] == 4 and row["df"] == 6 == ols.df_resid
            assert row["model"] == "seed-blocked model (3 cells), df 6"
            assert row["diff"] == pytest.approx((other - base).mean())
            assert row["p"] == pytest.approx(float(want.pvalue))
            low, high = np.ravel(want.conf_int())
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
            # The paired t-test beside it.
            assert row["p_paired"] == pytest.approx(stats.ttest_rel(other, base).pvalue)
    # Holm over the axis' whole family: two values x (two tasks + the average).
    assert len(comp) == 6
    assert comp["p_holm"].tolist() == pytest.approx(holm(comp["p"].tolist()).tolist())


def test_two_seeds_and_one_pair_per_value_give_an_interval_and_no_mark(tmp_path: Path) -> None:
    """The issue's case: two seeds whose differences happen to agree. One value against the
    baseline leaves one degree of freedom: a wide interval, no p-value, no star."""
    syn = Synthetic(
        axes={"masking": ["unstructured", "time"]},
        seeds=(0, 1),
        tasks=TASKS,
        noise=0.05,
        effects={("masking", "time"): -3.4},
    )
    engine = build(tmp_path, syn)
    comp = analyse(load_results(engine, syn.study))["masking"].comparisons
    assert (comp["df"] == 1).all() and comp["p"].isna().all() and comp["p_holm"].isna().all()
    acc = accuracy(engine, syn.study)
    d = np.array(
        [acc.at[key(syn, 1, s), "env-sfx"] - acc.at[key(syn, 0, s), "env-sfx"] for s in (0, 1)]
    )
    row = comp[comp["task"] == "env-sfx"].iloc[0]
    # Student's t on one degree of freedom (12.7 standard errors each side), not the range
    # of the two differences that a percentile bootstrap returns.
    low, high = stats.t.interval(0.95, 1, loc=d.mean(), scale=stats.sem(d))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    assert row["ci_low"] < d.min() - 5 * np.ptp(d) and row["ci_high"] > d.max() + 5 * np.ptp(d)
    assert all("interval only" in v and "too few" in v for v in comp["verdict"])
    render_reports(engine, syn.study, tmp_path / "out")
    page = (tmp_path / "out" / "masking.html").read_text()
    assert '<tr class="yes">' not in page and "paired t, df 1" in page


def test_two_seeds_of_a_factorial_are_tested_against_the_pooled_residual(tmp_path: Path) -> None:
    syn = Synthetic(
        design="factorial",
        axes={"masking": ["unstructured", "time"], "target": ["a", "b"]},
        seeds=(0, 1),
        tasks=TASKS,
        noise=0.3,
        effects={("masking", "time"): -4.0},
    )
    engine = build(tmp_path, syn)
    res = load_results(engine, syn.study, syn.expected())
    analyses = analyse(res)
    comp = analyses["masking"].comparisons
    assert (comp["df"] == 3).all()  # (4 cells - 1) x (2 seeds - 1)
    assert set(comp["model"]) == {"seed-blocked model (4 cells), df 3"}
    avg = comp[comp["task"] == AVERAGE_TASK].iloc[0]
    assert avg["verdict"] == "significant"
    render_reports(engine, syn.study, tmp_path / "out", expected=syn.expected())
    page = (tmp_path / "out" / "masking.html").read_text()
    assert "seed-blocked model (4 cells), df 3" in page
    assert "The Holm family: the 3 tests of the page (1 value(s) x 3 column(s))" in page
    index = (tmp_path / "out" / "index.html").read_text()
    assert "What this design can detect" in index
    assert "masking, the 3 tests of the page" in index


def test_a_partial_study_fits_the_model_to_the_trials_it_has(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time", "multiblock"]},
        seeds=(0, 1, 2),
        tasks=TASKS,
        fail=((2, 1),),
    )
    engine = build(tmp_path, syn)
    res = load_results(engine, syn.study, syn.expected())
    comp = analyse(res)["masking"].comparisons
    acc = accuracy(engine, syn.study)
    rows = [
        dict(value=acc.at[key(syn, i, s), "env-sfx"], cell=f"c{i}", seed=str(s))
        for i in range(3)
        for s in syn.seeds
        if (i, s) != (2, 1)
    ]
    ols = smf.ols("value ~ C(cell) + C(seed)", pd.DataFrame(rows)).fit()
    row = comp[(comp["setting"] == "time") & (comp["task"] == "env-sfx")].iloc[0]
    assert row["df"] == ols.df_resid == 3
    assert row["diff"] == pytest.approx(float(ols.params["C(cell)[T.c1]"]))
    assert row["p"] == pytest.approx(float(ols.pvalues["C(cell)[T.c1]"]))


def add_predictions(engine, syn: Synthetic, clips: int = 120, seed: int = 0) -> None:
    """Store per-clip test predictions for every finished trial, as the runner does: the
    same clips (in groups of two) for every trial, each value getting its own clips right."""
    rng = np.random.default_rng(seed)
    scores = export_frame(engine, syn.study)
    scores = scores[scores["status"] == "done"]
    with engine.connect() as conn:
        ids = dict(conn.execute(select(Trial.key, Trial.id)).all())
    hard = {t: rng.random(clips) for t in syn.tasks}
    for k, g in scores.groupby("key", sort=True):
        metrics = {(r.task, r.metric): r.value for r in g.itertuples() if r.task is not None}
        setting = g["setting"].iloc[0]
        own = np.random.default_rng(zlib.crc32(setting.encode()))  # the value's own clips
        predictions = {}
        for t in syn.tasks:
            p_right = np.clip(hard[t] + own.normal(0, 0.2, clips), 0, 1)
            right = rng.random(clips) < p_right
            truth = np.array(["a", "b"])[np.arange(clips) % 2]
            pred = np.where(right, truth, np.where(truth == "a", "b", "a"))
            predictions[t] = TaskPredictions(
                clips=np.arange(clips),
                groups=np.arange(clips) // 2,
                folds=np.arange(clips) % 5,
                truth=truth,
                pred=pred,
            )
        finish_trial(engine, ids[k], metrics, 100.0, None, predictions=predictions)


def test_stored_predictions_add_the_clips_to_the_interval(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time", "multiblock"]}, seeds=(0, 1, 2), tasks=TASKS
    )
    engine = build(tmp_path, syn)
    before = analyse(load_results(engine, syn.study))["masking"].comparisons
    add_predictions(engine, syn)
    res = load_results(engine, syn.study)
    assert len(res.predictions) == 9 * len(TASKS) * 120
    after = analyse(res)["masking"].comparisons
    assert after["model"].str.contains(r"seed-blocked model \(3 cells\), df 4 \+ clips").all()
    assert ((after["seed_share"] > 0) & (after["seed_share"] <= 1)).all()
    assert (after["ci_high"] - after["ci_low"] >= before["ci_high"] - before["ci_low"] - 1e-9).all()
    assert after["diff"].tolist() == pytest.approx(before["diff"].tolist())
    render_reports(engine, syn.study, tmp_path / "one")
    render_reports(engine, syn.study, tmp_path / "two")
    for name in ("masking.html", "index.html"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert "+ clips" in (tmp_path / "one" / "masking.html").read_text()


def test_the_overview_gives_the_minimum_detectable_effect_of_the_design(tmp_path: Path) -> None:
    syn = Synthetic(
        axes={"masking": ["unstructured", "time", "multiblock"], "ratio": ["0.6", "0.8"]},
        seeds=(0, 1, 2),
        tasks=TASKS,
    )
    engine = build(tmp_path, syn)
    res = load_results(engine, syn.study, syn.expected())
    design = study_design(res)
    noise = pooled_noise(design)
    assert noise is not None and noise.df == (4 - 1) * (3 - 1)
    # One value against the baseline, 3 seeds, 4 cells: SE = sigma * sqrt(2 / 3) on 6 df.
    se = math.sqrt(noise.sigma2 * 2 / 3)
    render_reports(engine, syn.study, tmp_path / "out", expected=syn.expected())
    index = (tmp_path / "out" / "index.html").read_text()
    assert f'<td class="num">{detectable(se, 6):.2f}</td>' in index
    # The masking page's family holds 2 values x 3 columns: Holm's first step at 0.05 / 6.
    assert f'<td class="num">{detectable(se, 6, 0.05 / 6):.2f}</td>' in index


def test_dry_run_prints_what_the_planned_study_can_detect(tmp_path: Path) -> None:
    from orchestrator.cli import app
    from orchestrator.spec import load_spec

    text = """
study: plan
design: factorial
seeds: [0, 1, 2, 3]
axes:
  masking: {path: mask.strategy, values: [unstructured, time]}
  target: {path: target.branch, values: [targets-only, full-input]}
baseline:
  data: {corpus: [corpus-0ad]}
  probe: {tasks: [env-sfx, speech-digits]}
"""
    exp = tmp_path / "exp.yaml"
    exp.write_text(text)
    runner = CliRunner()
    out = tmp_path / "out"
    got = runner.invoke(app, ["run", str(exp), "--dry-run", "-o", str(out)])
    assert got.exit_code == 0, got.output
    assert "minimum detectable effect" not in got.output  # no results: no noise estimate
    spec = load_spec(exp, out)
    syn = Synthetic(
        study=spec.study,
        design="factorial",
        axes={"masking": ["unstructured", "time"], "target": ["targets-only", "full-input"]},
        seeds=(0, 1),
        tasks=tuple(spec.baseline.probe.tasks),
    )
    out.mkdir(parents=True, exist_ok=True)
    engine = make_engine(spec.results_url)
    generate(engine, syn)
    noise = pooled_noise(study_design(load_results(engine, spec.study)))
    got = runner.invoke(app, ["run", str(exp), "--dry-run", "-o", str(out)])
    assert got.exit_code == 0, got.output
    # 4 cells x 4 seeds: df 9; a main effect of a 2 x 2 compares two cells with two.
    se = math.sqrt(noise.sigma2 * 1.0 / 4)
    assert f"masking: {detectable(se, 9):.2f} points by one test" in got.output
    assert "(4 cells x 4 seeds, test df 9)" in got.output


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


def test_verdicts_say_what_is_missing() -> None:
    assert verdict(1, math.nan, math.nan, math.nan, False) == "1 seed: too few to tell"
    assert "interval only" in verdict(2, 1.0, math.nan, math.nan, False)
    assert verdict(3, 6.0, 0.01, 2.0, True) == "significant"
    assert verdict(3, 6.0, 0.3, 12.0, False) == "too few seeds to tell (12 needed)"
    assert "too few test clips" in verdict(3, 6.0, 0.3, -1.0, False)
    assert verdict(8, 6.0, 0.3, 5.0, False) == "not significant"
