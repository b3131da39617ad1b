"""The reports' statistics: bootstrap intervals, the paired test, Holm's correction and the
seeds-needed estimate, against hand-worked values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reports.stats import bootstrap_ci, holm, paired_power, paired_t_pvalue, seeds_needed


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible() -> None:
    x = [60.0, 70.0, 80.0, 65.0, 75.0]
    low, high = bootstrap_ci(x)
    assert low < np.mean(x) < high
    assert min(x) <= low and high <= max(x)
    assert bootstrap_ci(x) == (low, high)
    # Twice the spread, twice the width.
    low2, high2 = bootstrap_ci([2 * v for v in x])
    assert high2 - low2 == pytest.approx(2 * (high - low))


def test_bootstrap_ci_of_one_value_is_undefined() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_paired_p_value_is_scipys_paired_t_test() -> None:
    a = np.array([50.1, 52.3, 49.8, 51.0])
    b = np.array([48.0, 50.9, 49.9, 48.2])
    assert paired_t_pvalue(a - b) == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_paired_p_value_needs_two_varying_pairs() -> None:
    assert math.isnan(paired_t_pvalue([1.0]))
    assert math.isnan(paired_t_pvalue([2.0, 2.0, 2.0]))  # no spread: no meaningful test


def test_holm_matches_the_hand_worked_step_down() -> None:
    # Sorted p: 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 0.5).
    got = holm([0.03, 0.01, 0.5, 0.02])
    assert got == pytest.approx([0.06, 0.04, 0.5, 0.06])


def test_holm_leaves_untestable_entries_out_of_the_family() -> None:
    got = holm([0.01, math.nan, 0.04])
    assert got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.04)
    assert math.isnan(got[1])


def test_holm_is_capped_at_one_and_never_below_the_raw_p() -> None:
    p = [0.9, 0.8, 0.01, 0.2, 0.049]
    adj = holm(p)
    assert all(1.0 >= a >= r for a, r in zip(adj, p, strict=True))


def test_seeds_needed_grows_with_noise_and_shrinks_with_the_effect() -> None:
    small_noise = seeds_needed([1.0, 1.2, 0.8, 1.1])
    big_noise = seeds_needed([1.0, 3.0, -1.0, 1.1])
    assert 2 <= small_noise < big_noise
    assert seeds_needed([1.0, 4.0, -2.0, 1.1]) > big_noise
    assert math.isnan(seeds_needed([1.0])) and math.isnan(seeds_needed([1.0, 1.0]))


def test_seeds_needed_is_the_smallest_n_with_the_power() -> None:
    d = np.array([1.0, 3.0, -1.0, 1.1])
    n = int(seeds_needed(d))
    effect = d.mean() / d.std(ddof=1)
    assert paired_power(effect, n) >= 0.8 > paired_power(effect, n - 1)
    # The power of a t-test, by simulation, agrees with the noncentral t.
    rng = np.random.default_rng(0)
    sims = rng.normal(effect, 1.0, size=(20000, n))
    p = stats.ttest_1samp(sims, 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(paired_power(effect, n), abs=0.015)
