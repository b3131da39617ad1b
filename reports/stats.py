"""Statistics of the reports: Student-t intervals over seeds, the seed-blocked linear model of a
whole design, the clip-level bootstrap, Holm's correction, power and the minimum detectable
effect. Pure functions of numbers, vectorised over leading axes so that the calibration tests
simulate thousands of studies through the very code the pages use (docs/statistics.md).

The unit of replication is the trial seed: every cell of a design runs at the same seeds (same
data order, same initialisation stream), so a seed is a block and seed-to-seed variation
common to every cell cancels in a comparison. The clips of a probe task are a second, crossed
source of noise: every trial scores the same clips, so a difference can also move with the
draw of test clips, which more seeds cannot remove.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

CI_LEVEL = 0.95
ALPHA = 0.05  # family-wise error rate of the Holm-corrected tests
POWER = 0.8  # for the seeds-needed estimate and the minimum detectable effect
# A significance mark needs a noise estimate resting on at least two degrees of freedom: with
# one (two seeds, one pair per value) the variance is one squared number, and two nearly
# equal differences make any difference look certain.
MIN_TEST_DF = 2
# The clip-level bootstrap: resamples and its fixed seed (a rerun gives the same pages).
CLIP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240917
MAX_SEEDS = 1000

Array = np.ndarray


@dataclass(frozen=True)
class TTest:
    """An estimate with its standard error and a Student-t interval and test on `df` degrees
    of freedom. Fields broadcast together (floats for one test, arrays for many); NaN where
    the data cannot give them (one seed, no spread)."""

    estimate: Array
    se: Array
    df: Array
    low: Array
    high: Array
    p: Array


def t_test(estimate: Array, se: Array, df: Array, level: float = CI_LEVEL) -> TTest:
    """Interval and two-sided p-value of `estimate` against 0 from its standard error.

    No p-value when the standard error is 0 (the data do not vary: t is infinite or undefined
    and a p-value would be meaningless); nothing at all below one degree of freedom."""
    est, se, df = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (estimate, se, df)))
    ok = df >= 1
    dfs = np.where(ok, df, 1.0)
    crit = np.where(ok, special.stdtrit(dfs, 0.5 + level / 2), np.nan)
    low, high = est - crit * se, est + crit * se
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * special.stdtr(dfs, -np.abs(est / se))  # Student's t CDF: scipy's ufunc
    p = np.where(ok & (se > 0), p, np.nan)
    return TTest(est, se, np.where(ok, df, np.nan), low, high, p)


def mean_interval(values: Sequence[float] | Array, level: float = CI_LEVEL) -> TTest:
    """Student-t interval and test of the mean of the last axis (one sample over seeds; for
    paired differences, the paired t-test). With n values: df n - 1; one value gives NaN."""
    x = np.asarray(values, dtype=float)
    n = x.shape[-1]
    mean = x.mean(axis=-1) if n else np.full(x.shape[:-1], np.nan)
    if n < 2:
        nan = np.full(np.shape(mean), np.nan)
        return TTest(mean, nan, nan, nan, nan, nan)
    se = x.std(axis=-1, ddof=1) / math.sqrt(n)
    return t_test(mean, se, np.full(np.shape(mean), n - 1.0), level)


# --------------------------------------------------------------------------------------------
# The seed-blocked linear model of a design
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockFit:
    """score = cell + seed + noise, least squares (a randomised complete block design with the
    cells as treatments and the seeds as blocks). `effects` (..., C): the cells' estimates,
    meaningful only in contrasts (weights summing to 0); a contrast's variance is
    sigma2 * L @ unit_cov @ L. `sigma2`: the pooled residual variance on `df` degrees of
    freedom; `observed` (C,): cells with at least one score."""

    effects: Array
    unit_cov: Array
    sigma2: Array
    df: float
    observed: Array

    def contrast(self, weights: Array, level: float = CI_LEVEL) -> TTest:
        """Test of each contrast (rows of `weights`, (K, C), each summing to 0) against the
        pooled residual."""
        w = np.atleast_2d(np.asarray(weights, dtype=float))
        est = self.effects @ w.T  # (..., K)
        unit = np.einsum("kc,cd,kd->k", w, self.unit_cov, w)
        se = np.sqrt(np.asarray(self.sigma2)[..., None] * unit)
        return t_test(est, se, np.full(est.shape, self.df), level)


def block_fit(y: Array) -> BlockFit | None:
    """Fit score = cell + seed to `y` (..., C cells, S seeds; NaN where a trial has no score).

    A complete table has a closed form (residual = y - cell mean - seed mean + grand mean,
    on (C - 1)(S - 1) degrees of freedom), vectorised over leading axes; an incomplete one (a
    partial study: 2-D only) is fitted by ordinary least squares (statsmodels) on the cells
    and seeds that have scores. None when no degree of freedom is left for the noise."""
    y = np.asarray(y, dtype=float)
    c, s = y.shape[-2:]
    if not np.isnan(y).any():
        df = (c - 1) * (s - 1)
        if df < 1:
            return None
        cell = y.mean(axis=-1)
        resid = (
            y - cell[..., :, None] - y.mean(axis=-2)[..., None, :] + cell.mean(-1)[..., None, None]
        )
        sigma2 = (resid**2).sum(axis=(-2, -1)) / df
        return BlockFit(cell, np.eye(c) / s, sigma2, float(df), np.ones(c, bool))
    if y.ndim != 2:
        raise ValueError("an incomplete table is fitted one at a time (2-D)")
    return _block_fit_ols(y)


def _block_fit_ols(y: Array) -> BlockFit | None:
    import statsmodels.api as sm  # only partial studies need it; it takes a second to import

    c, _ = y.shape
    observed = ~np.isnan(y).all(axis=1)
    cells, seeds = np.nonzero(~np.isnan(y))
    used_seeds = np.unique(seeds)
    kept = np.flatnonzero(observed)
    col = {int(k): i for i, k in enumerate(kept)}
    n = cells.size
    if n < 3:
        return None
    # Cell indicators (no intercept), then indicators of every seed but the first.
    x = np.zeros((n, kept.size + used_seeds.size - 1))
    x[np.arange(n), [col[int(k)] for k in cells]] = 1.0
    for j, sd in enumerate(used_seeds[1:]):
        x[seeds == sd, kept.size + j] = 1.0
    if n - x.shape[1] < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return None  # no degree of freedom left for the noise, or cells not comparable
    fit = sm.OLS(y[cells, seeds], x).fit()
    df = float(fit.df_resid)
    effects = np.full(c, np.nan)
    effects[kept] = fit.params[: kept.size]
    unit = np.zeros((c, c))
    unit[np.ix_(kept, kept)] = fit.normalized_cov_params[: kept.size, : kept.size]
    return BlockFit(effects, unit, np.asarray(float(fit.scale)), df, observed)


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------


def _resample_weights(groups: int, resamples: int, seed: int) -> Array:
    """(G, B) bootstrap counts: each column draws `groups` groups with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(groups, np.full(groups, 1.0 / groups), size=resamples).T.astype(float)


def contrast_clip_variance(
    correct: Array,
    counts: Array,
    weights: Array,
    *,
    resamples: int = CLIP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Array:
    """The variance (points^2) that the draw of test clips adds to contrasts of the cells'
    accuracies averaged over seeds, by a bootstrap over clip groups.

    `correct` (..., C, S, G): correct clips per cell, seed and clip group (near-duplicates
    share a group); `counts` (G,): clips per group; `weights` (K, C): the contrasts. Returns
    (..., K).

    Every trial scores the same clips, so clips are crossed with seeds: one draw of groups
    (with replacement, a fixed seed) is applied to every seed and cell. The variance of the
    seed-averaged contrast over draws then holds the clip effect B (which clips a value gets
    right whatever the seed) plus W / S, the seed x clip part, which the seed-level variance
    already counts (it is why two seeds' accuracies differ). The variance of a single seed's
    contrast holds B + W; the two give B = V_mean - (V_single - V_mean) / (S - 1), the part
    added to the seed-level variance (clamped at 0)."""
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    x = 100.0 * np.einsum("kc,...csg->...ksg", w, np.asarray(correct, dtype=float))
    lead, (s, g) = x.shape[:-2], x.shape[-2:]
    if g < 2:
        return np.full(lead, np.nan)
    draws = _resample_weights(g, resamples, seed)
    # A resample's contrast is x @ u_b, u_b = draws_b / (clips drawn): linear in x for the
    # given draws, so its variance over the draws is the quadratic form x' Cov(u) x, the
    # same number as computing every resample, in G x G rather than B operations per contrast.
    u = draws / (np.asarray(counts, dtype=float) @ draws)
    cov = np.cov(u)  # (G, G), over the B draws (ddof 1)
    v_mean = np.einsum("...g,gh,...h->...", x.mean(axis=-2), cov, x.mean(axis=-2))
    if s > 1:
        v_single = np.einsum("...sg,gh,...sh->...s", x, cov, x).mean(axis=-1)
        v_mean = np.maximum(0.0, v_mean - (v_single - v_mean) / (s - 1))
    return v_mean


def with_clips(
    seed_level: TTest, clip_var: Array, clip_df: Array, level: float = CI_LEVEL
) -> TTest:
    """Add the clip-draw variance to a seed-level test: SE^2 = SE_seed^2 + V_clip, on
    Welch-Satterthwaite degrees of freedom. `clip_df` is the seeds the clip part rests on
    minus one: its seed x clip correction is measured on them (contrast_clip_variance), and
    taking the clip groups' count instead trusted it far more than it deserves (13% false
    positives per family at three seeds in the simulations: docs/statistics.md). Where
    `clip_var` is NaN the seed-level test stands."""
    vs = np.asarray(seed_level.se, dtype=float) ** 2
    vc = np.asarray(clip_var, dtype=float)
    have = np.isfinite(vc)
    vc = np.where(have, vc, 0.0)
    total = vs + vc
    dfs, dfc = np.asarray(seed_level.df, dtype=float), np.asarray(clip_df, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / (vs**2 / dfs + vc**2 / dfc)
    df = np.where(have & (total > 0), df, dfs)
    return t_test(seed_level.estimate, np.sqrt(total), df, level)


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float] | Array) -> Array:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1) over the last axis.

    NaN entries (tests that were not run) are not part of the family and stay NaN."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, axis=-1, kind="stable")  # NaN sorts last
    ps = np.take_along_axis(p, order, axis=-1)
    m = (~np.isnan(p)).sum(axis=-1, keepdims=True)
    rank = np.arange(p.shape[-1])
    adj = np.minimum(1.0, (m - rank) * ps)
    adj = np.fmax.accumulate(adj, axis=-1)
    adj = np.where(np.isnan(ps), np.nan, adj)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


def significant(p_holm: Array, df: Array) -> Array:
    """The marks: Holm-adjusted p below ALPHA from a test on at least MIN_TEST_DF degrees of
    freedom (the seed-level noise estimate's)."""
    p, df = np.asarray(p_holm, dtype=float), np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        return (p < ALPHA) & (df >= MIN_TEST_DF)


def family_marks(p: Array, df: Array) -> tuple[Array, Array]:
    """One family's (last axis) Holm-adjusted p-values and marks. A test on fewer than
    MIN_TEST_DF degrees of freedom is not run: it is left out of the family (NaN)."""
    p, df = np.broadcast_arrays(np.asarray(p, dtype=float), np.asarray(df, dtype=float))
    with np.errstate(invalid="ignore"):
        run = np.where(df >= MIN_TEST_DF, p, np.nan)
    adjusted = holm(run)
    return adjusted, significant(adjusted, df)


# --------------------------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------------------------


def t_power(ncp: float, df: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided t-test at `alpha` on `df` degrees of freedom when the true
    difference is `ncp` standard errors (noncentral t)."""
    crit = float(special.stdtrit(df, 1 - alpha / 2))
    nc = abs(ncp)
    upper = 1 - float(special.nctdtr(df, nc, crit))
    lower = float(special.nctdtr(df, nc, -crit))  # the wrong tail: below 1e-5 where it fails
    # scipy's noncentral t returns NaN far in its tails: there the power is 1, the wrong
    # tail 0, for all purposes.
    if math.isnan(upper):
        upper = 1.0 if nc > crit else math.nan
    return upper + (0.0 if math.isnan(lower) else lower)


def paired_power(effect_size: float, n: int) -> float:
    """Power of the paired t-test with `n` pairs for a true mean difference of `effect_size`
    standard deviations of the differences."""
    return t_power(effect_size * math.sqrt(n), n - 1)


def detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable effect: the true difference that a two-sided t-test at `alpha`
    with standard error `se` on `df` degrees of freedom detects with `power`. NaN without a
    noise estimate (df < 1 or no standard error)."""
    if not (df >= 1 and se > 0 and math.isfinite(se)):
        return math.nan
    ncp = optimize.brentq(lambda d: t_power(d, df, alpha) - power, 0.0, 1e3, xtol=1e-10)
    return float(ncp * se)


def seeds_needed(
    effect: float, sigma2: float, l2: float, cells: int, clip_var: float = 0.0
) -> float:
    """Seeds a design of `cells` cells would need for its test of a contrast to detect `effect`
    at ALPHA with POWER, if the observed noise held: the smallest S with enough power when
    the contrast's variance is sigma2 * l2 / S (+ the clip variance, which seeds do not
    shrink) on (cells - 1)(S - 1) degrees of freedom. One pair per value (the paired t-test)
    is cells = 2 with sigma2 * l2 the variance of a difference.

    NaN when it cannot be estimated (no noise, no difference); inf beyond MAX_SEEDS, or when
    the clip variance alone keeps the power below POWER."""
    if not (sigma2 > 0 and effect != 0 and math.isfinite(effect)) or cells < 2:
        return math.nan
    cv = 0.0 if not math.isfinite(clip_var) else clip_var

    def enough(s: int) -> bool:
        se = math.sqrt(sigma2 * l2 / s + cv)
        return t_power(effect / se, (cells - 1) * (s - 1)) >= POWER

    if not enough(MAX_SEEDS):
        return math.inf
    lo, hi = 1, MAX_SEEDS  # power grows with S: bisect for the first S with enough of it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return float(hi)
