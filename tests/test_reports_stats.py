"""The reports' statistics against hand-worked values, scipy and statsmodels: Student-t
intervals, the seed-blocked model (closed form and least squares), the clip bootstrap, Holm's
correction, power, the minimum detectable effect and the seeds needed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from reports.stats import (
    MIN_TEST_DF,
    _resample_weights,
    block_fit,
    contrast_clip_variance,
    detectable,
    family_marks,
    holm,
    mean_interval,
    paired_power,
    seeds_needed,
    t_power,
    with_clips,
)


def test_mean_interval_is_the_student_t_interval_and_paired_test() -> None:
    a = np.array([50.1, 52.3, 49.8, 51.0])
    b = np.array([48.0, 50.9, 49.9, 48.2])
    t = mean_interval(a - b)
    low, high = stats.t.interval(0.95, 3, loc=(a - b).mean(), scale=stats.sem(a - b))
    assert (float(t.low), float(t.high)) == pytest.approx((low, high))
    assert float(t.p) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert float(t.df) == 3


def test_two_seeds_give_a_wide_interval_and_one_seed_none() -> None:
    t = mean_interval([-3.46, -3.36])  # the two nearly equal differences
    # t on one degree of freedom: 12.7 standard errors each side, not the two values' range.
    assert float(t.low) < -3.46 - 0.5 and float(t.high) > -3.36 + 0.5
    assert float(t.df) == 1 < MIN_TEST_DF
    one = mean_interval([0.5])
    assert all(math.isnan(float(v)) for v in (one.low, one.high, one.p))


def test_no_p_value_without_spread() -> None:
    assert math.isnan(float(mean_interval([2.0, 2.0, 2.0]).p))


def frame(y: np.ndarray) -> pd.DataFrame:
    c, s = np.nonzero(~np.isnan(y))
    return pd.DataFrame({"value": y[c, s], "cell": c.astype(str), "seed": s.astype(str)})


@pytest.mark.parametrize("missing", [(), ((1, 2), (3, 0))])
def test_block_fit_is_statsmodels_ols_with_cell_and_seed(missing: tuple) -> None:
    rng = np.random.default_rng(3)
    y = 60 + rng.normal(0, 2, (4, 1)) + rng.normal(0, 3, (1, 5)) + rng.normal(0, 1, (4, 5))
    for c, s in missing:
        y[c, s] = np.nan
    fit = block_fit(y)
    ols = smf.ols("value ~ C(cell) + C(seed)", frame(y)).fit()
    assert fit.df == ols.df_resid == 3 * 4 - len(missing)  # (C - 1)(S - 1), less each hole
    assert float(fit.sigma2) == pytest.approx(ols.scale)
    # Cell 2 against cell 0, and the mean of cells 1, 3 against cell 0.
    w = np.array([[-1.0, 0, 1, 0], [-1.0, 0.5, 0, 0.5]])
    got = fit.contrast(w)
    for i, name in enumerate(["C(cell)[T.2] = 0", "0.5 * C(cell)[T.1] + 0.5 * C(cell)[T.3] = 0"]):
        want = ols.t_test(name)
        assert got.estimate[i] == pytest.approx(float(np.ravel(want.effect)[0]))
        assert got.se[i] == pytest.approx(float(np.ravel(want.sd)[0]))
        assert got.p[i] == pytest.approx(float(want.pvalue))


def test_complete_block_fit_is_vectorised_over_studies() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(0, 1, (7, 3, 4, 5))
    fit = block_fit(y)
    one = block_fit(y[5, 2])
    assert float(fit.sigma2[5, 2]) == pytest.approx(float(one.sigma2))
    w = np.array([[-1.0, 1, 0, 0]])
    assert fit.contrast(w).p[5, 2, 0] == pytest.approx(one.contrast(w).p[0])
    # With two cells the model is the paired t-test.
    two = block_fit(y[0, 0, :2])
    paired = mean_interval(y[0, 0, 1] - y[0, 0, 0])
    assert float(two.contrast(np.array([[-1.0, 1]])).p[0]) == pytest.approx(float(paired.p))


def test_block_fit_needs_a_degree_of_freedom() -> None:
    assert block_fit(np.ones((3, 1))) is None  # one seed
    assert block_fit(np.ones((1, 4))) is None  # one cell
    y = np.array([[1.0, np.nan], [np.nan, 2.0]])  # no cell at a seed the other has
    assert block_fit(y) is None


def test_clip_variance_is_the_bootstrap_over_groups() -> None:
    """The quadratic form equals the variance over the actual resamples, and for one seed is
    the bootstrap variance of the accuracy difference."""
    rng = np.random.default_rng(5)
    g, counts = 60, rng.integers(1, 4, 60).astype(float)
    correct = np.stack([rng.binomial(counts.astype(int), p) for p in (0.5, 0.6)])[:, None, :]
    v = contrast_clip_variance(correct.astype(float), counts, np.array([[-1.0, 1.0]]))
    draws = _resample_weights(g, 2000, 20240917)
    diff = (correct[1, 0] - correct[0, 0]) @ draws / (counts @ draws) * 100
    assert float(v[0]) == pytest.approx(diff.var(ddof=1))
    # Near the textbook variance of a difference of paired proportions over the groups.
    d = (correct[1, 0] - correct[0, 0]) * 100
    r = d.sum() / counts.sum()
    assert float(v[0]) == pytest.approx(((d - r * counts) ** 2).sum() / counts.sum() ** 2, rel=0.15)


def test_clip_variance_leaves_out_the_part_the_seeds_already_count() -> None:
    """Seeds that disagree clip by clip at random (no persistent clip effect): the seed-level
    variance holds it all and the clip part is about 0; a persistent effect is kept."""
    rng = np.random.default_rng(6)
    g, s = 200, 4
    counts = np.ones(g)
    noise = rng.binomial(1, 0.5, (2, s, g)).astype(float)
    w = np.array([[-1.0, 1.0]])
    pure = float(contrast_clip_variance(noise, counts, w)[0])
    persistent = noise.copy()
    persistent[1] = np.where(rng.random(g) < 0.5, 1.0, 0.0)[None, :]  # same clips every seed
    kept = float(contrast_clip_variance(persistent, counts, w)[0])
    naive = float(contrast_clip_variance(persistent[:, :1], counts, w)[0])  # one seed
    assert pure < 0.1 * kept
    # The clip part of a difference of proportions: the persistent clips' variance / clips.
    assert kept == pytest.approx(1e4 * persistent[1, 0].var() / g, rel=0.25)
    assert naive == pytest.approx(2 * kept, rel=0.25)  # one seed cannot tell the parts apart


def test_with_clips_widens_the_interval_and_stands_without_them() -> None:
    t = mean_interval([1.0, 2.0, 1.5, 2.5])
    same = with_clips(t, math.nan, 3)
    assert float(same.low) == pytest.approx(float(t.low)) and float(same.df) == 3
    wider = with_clips(t, 1.0, 3)
    assert float(wider.high - wider.low) > float(t.high - t.low)
    vs = float(t.se) ** 2
    assert float(wider.df) == pytest.approx((vs + 1) ** 2 / (vs**2 / 3 + 1 / 3))


def test_holm_matches_the_hand_worked_step_down() -> None:
    # Sorted p: 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 0.5).
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])


def test_holm_leaves_untestable_entries_out_and_works_per_row() -> None:
    got = holm([0.01, math.nan, 0.04])
    assert got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.04)
    assert math.isnan(got[1])
    rows = np.array([[0.03, 0.01, 0.5, 0.02], [0.01, np.nan, 0.04, np.nan]])
    got = holm(rows)
    assert got[0] == pytest.approx(holm(rows[0]))
    assert got[1, [0, 2]] == pytest.approx([0.02, 0.04])


def test_holm_is_capped_at_one_and_never_below_the_raw_p() -> None:
    p = [0.9, 0.8, 0.01, 0.2, 0.049]
    assert all(1.0 >= a >= r for a, r in zip(holm(p), p, strict=True))


def test_a_test_on_one_degree_of_freedom_marks_nothing_and_leaves_the_family() -> None:
    p_holm, marks = family_marks([1e-6, 0.01, 0.02], [1, 5, 5])
    assert math.isnan(p_holm[0]) and not marks[0]
    assert p_holm[1:] == pytest.approx([0.02, 0.02]) and marks[1:].all()


def test_power_of_a_t_test_agrees_with_simulation() -> None:
    rng = np.random.default_rng(0)
    n, effect = 5, 1.2
    sims = rng.normal(effect, 1.0, size=(20000, n))
    p = stats.ttest_1samp(sims, 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(paired_power(effect, n), abs=0.015)
    assert t_power(1e4, 2) == 1.0  # far in the tail, where scipy's noncentral t fails


def test_detectable_effect_has_the_power() -> None:
    for se, df in ((1.0, 3), (0.7, 12), (2.0, 2)):
        mde = detectable(se, df)
        assert t_power(mde / se, df) == pytest.approx(0.8, abs=1e-6)
        assert detectable(se, df, alpha=0.01) > mde
    assert math.isnan(detectable(1.0, 0))


def test_seeds_needed_is_the_smallest_n_with_the_power() -> None:
    d = np.array([1.0, 3.0, -1.0, 1.1])
    # One pair per value: the paired t-test's noncentral t.
    n = int(seeds_needed(d.mean(), d.var(ddof=1), 1.0, 2))
    effect = d.mean() / d.std(ddof=1)
    assert paired_power(effect, n) >= 0.8 > paired_power(effect, n - 1)
    # The pooled model of more cells needs fewer; clip noise that seeds cannot remove, more.
    pooled = seeds_needed(d.mean(), d.var(ddof=1) / 2, 2.0, 6)
    assert pooled < n
    assert seeds_needed(d.mean(), d.var(ddof=1), 1.0, 2, clip_var=0.2) > n
    assert math.isinf(seeds_needed(d.mean(), d.var(ddof=1), 1.0, 2, clip_var=10.0))
    assert math.isnan(seeds_needed(0.0, 1.0, 1.0, 2))
