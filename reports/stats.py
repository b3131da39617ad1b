"""Statistics of the reports: bootstrap intervals, paired tests against the baseline, Holm's
correction and the seeds a difference would need. Pure functions of numbers.

The unit of replication is the trial seed: every comparison pairs an axis value with the
baseline at the same seed (same data order, same initialisation stream), so seed-to-seed
variation common to both cancels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

# Fixed seed so that re-rendering the same results gives byte-identical intervals.
BOOTSTRAP_SEED = 20240917
BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95
ALPHA = 0.05  # family-wise error rate of the Holm-corrected tests
POWER = 0.8  # for the seeds-needed estimate


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of `values`.

    Returns (nan, nan) for fewer than two values: one seed carries no information about
    seed-to-seed variance, and a zero-width interval would falsely suggest certainty.
    A fresh generator per call keeps each group's CI independent of how many came before.
    With two or three values the percentile bootstrap cannot reach beyond the observed range
    and is too narrow; the pages say how many seeds each interval rests on.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def paired_t_pvalue(diffs: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of a paired t-test (one-sample t-test of the differences against 0).

    NaN when it cannot be computed: fewer than two pairs, or differences that do not vary
    (then the t statistic is infinite or undefined and a p-value would be meaningless).
    """
    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.ptp(d) == 0:
        return math.nan
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    return float(2 * special.stdtr(d.size - 1, -abs(t)))  # Student's t CDF: scipy's ufunc


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    NaN entries (tests that could not be run) are not part of the family and stay NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_power(effect_size: float, n: int) -> float:
    """Power of the two-sided paired t-test at ALPHA with `n` pairs for a true mean difference
    of `effect_size` standard deviations (noncentral t)."""
    df = n - 1
    crit = special.stdtrit(df, 1 - ALPHA / 2)
    nc = abs(effect_size) * math.sqrt(n)
    power = float(1 - special.nctdtr(df, nc, crit) + special.nctdtr(df, nc, -crit))
    # scipy's noncentral t returns NaN far in the tail, where the power is 1 for all purposes.
    return 1.0 if math.isnan(power) and nc > crit else power


MAX_SEEDS = 1000


def seeds_needed(diffs: Sequence[float] | np.ndarray, power: float = POWER) -> float:
    """Seeds a paired t-test would need to detect the observed mean difference at ALPHA with
    `power`, taking the observed spread as the truth: the smallest n with that power.

    NaN when it cannot be estimated (fewer than two pairs, no spread, or no difference);
    inf beyond MAX_SEEDS.
    """
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan
    sd, mean = float(d.std(ddof=1)), float(abs(d.mean()))
    if sd == 0 or mean == 0:
        return math.nan
    effect = mean / sd
    # Start from the normal approximation ((z_a + z_b) / effect)^2, then walk: power grows
    # with n, so the first n that reaches it is the answer.
    z = special.ndtri(1 - ALPHA / 2) + special.ndtri(power)
    n = max(2, math.ceil((z / effect) ** 2))
    if n > MAX_SEEDS:
        return math.inf
    while n > 2 and paired_power(effect, n - 1) >= power:
        n -= 1
    while paired_power(effect, n) < power:
        n += 1
        if n > MAX_SEEDS:
            return math.inf
    return float(n)
