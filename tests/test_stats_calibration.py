"""Calibration of the reports' statistics, by simulation through the functions the pages use
(reports.stats): false-positive rate per family, coverage of the 95% intervals and power, for
studies of 2, 3 and 5 seeds (docs/statistics.md reports the measured numbers; run this file
as a script to print them).

The simulated study: a baseline and three values (four cells, as in the default study's 2 x 2
factorial or a one-factor-at-a-time axis of four values), two probe tasks and their average,
so an axis' page holds a family of 3 values x 3 columns = 9 tests. Two kinds of noise:

- seed level: a trial's accuracy is cell effect + seed effect (shared by every cell) + noise,
  SD 3.5 points per task (the default study's seed-to-seed spread, docs/learning.md);
- clip level: every trial scores the same 200 test clips (100 groups of two near-duplicates)
  and is right or wrong on each: a latent score of clip difficulty (group and clip), a
  persistent cell x clip part (which clips a configuration gets right, whatever the seed),
  a seed effect and fresh noise. The population difference between two cells with the same
  effect is then 0, although on one draw of test clips it is not.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from scipy import special

from reports.stats import (
    TTest,
    block_fit,
    contrast_clip_variance,
    family_marks,
    mean_interval,
    with_clips,
)

SEEDS = (2, 3, 5)
CELLS, TASKS, VALUES = 4, 2, 3
STUDIES = 2000  # seed-level simulations per seed count
CLIP_STUDIES = 1000  # clip-level ones (each carries 200 clips x cells x seeds x tasks)
NOISE_SD = 3.5  # points, one trial's seed-to-seed SD on one task
SEED_SD = 2.0  # points, the seed effect every cell shares (cancels in a comparison)
# Each value against the baseline (cell 0).
WEIGHTS = np.hstack([-np.ones((VALUES, 1)), np.eye(VALUES)])


def _limit(rate: float, n: int) -> float:
    """The rate plus two simulation standard errors."""
    return rate + 2 * math.sqrt(rate * (1 - rate) / n)


def with_average(y: np.ndarray) -> np.ndarray:
    """(R, T, C, S) per-task scores -> (R, T + 1, C, S) with the task average last."""
    return np.concatenate([y, y.mean(axis=1, keepdims=True)], axis=1)


def pooled(cols: np.ndarray) -> TTest:
    """The seed-blocked model's test of each value, per study and column: (R, T + 1, K)."""
    return block_fit(cols).contrast(WEIGHTS)


def paired(cols: np.ndarray) -> TTest:
    """The paired t-test of each value, per study and column: (R, T + 1, K)."""
    return mean_interval(cols[:, :, 1:, :] - cols[:, :, :1, :])


def fwer(t: TTest, seed_df: np.ndarray | None = None) -> float:
    """Share of studies with at least one mark in the family (the page's 9 tests). A test with
    the clips added is run where the seed-level test is (`seed_df`), as on the pages."""
    r = t.p.shape[0]
    p, df = np.broadcast_arrays(t.p, t.df if seed_df is None else seed_df)
    _, marks = family_marks(p.reshape(r, -1), df.reshape(r, -1))
    return float(marks.any(axis=1).mean())


def coverage(t: TTest, truth: np.ndarray | float) -> float:
    inside = (t.low <= truth) & (truth <= t.high)
    return float(inside[np.isfinite(t.low)].mean())


def power(t: TTest, where: tuple) -> tuple[float, float]:
    """(one test at 0.05, within the Holm family) rate of marks at `where` (an index into
    the (T + 1, K) columns x values)."""
    r = t.p.shape[0]
    p, df = np.broadcast_arrays(t.p, t.df)
    _, marks = family_marks(p.reshape(r, -1), df.reshape(r, -1))
    marks = marks.reshape(p.shape)
    single = (p < 0.05) & (df >= 2)
    return float(single[(slice(None), *where)].mean()), float(marks[(slice(None), *where)].mean())


# --------------------------------------------------------------------------------------------
# Seed-level noise
# --------------------------------------------------------------------------------------------


@cache
def seed_level(seeds: int, effect: float = 0.0) -> tuple[TTest, TTest]:
    """Paired and pooled tests over STUDIES simulated studies; `effect` (noise SDs) is the
    first value's true difference on every task."""
    rng = np.random.default_rng(1000 + seeds + int(effect * 10))
    shift = np.zeros((CELLS, 1))
    shift[1] = effect * NOISE_SD
    y = (
        60.0
        + rng.normal(0, SEED_SD, (STUDIES, TASKS, 1, seeds))
        + shift
        + rng.normal(0, NOISE_SD, (STUDIES, TASKS, CELLS, seeds))
    )
    cols = with_average(y)
    return paired(cols), pooled(cols)


@pytest.mark.parametrize("seeds", SEEDS)
def test_false_positive_rate_per_family_is_at_most_alpha(seeds: int) -> None:
    pair, pool = seed_level(seeds)
    assert pool.df.flat[0] == (CELLS - 1) * (seeds - 1)
    assert fwer(pool) <= _limit(0.05, STUDIES)
    assert fwer(pair) <= _limit(0.05, STUDIES)
    if seeds == 2:  # one degree of freedom: the paired test marks nothing
        assert fwer(pair) == 0.0
    else:  # and the tests are not simply mute
        assert fwer(pair) > 0.01 and fwer(pool) > 0.01


@pytest.mark.parametrize("seeds", (3, 5))
def test_intervals_cover_the_true_difference(seeds: int) -> None:
    for effect in (0.0, 1.5):
        pair, pool = seed_level(seeds, effect)
        truth = np.zeros((TASKS + 1, VALUES))
        truth[:, 0] = effect * NOISE_SD
        assert coverage(pair, truth) >= 0.93
        assert coverage(pool, truth) >= 0.93


def test_two_seed_intervals_are_shown_and_honest() -> None:
    pair, pool = seed_level(2)
    assert np.isfinite(pair.low).all() and np.isfinite(pool.low).all()
    assert coverage(pair, 0.0) >= 0.93 and coverage(pool, 0.0) >= 0.93
    # t on 1 df: the paired interval is wide (12.7 standard errors each side); the pooled
    # model, on 3 df, is narrower and as honest.
    assert np.median(pair.high - pair.low) > 2.5 * np.median(pool.high - pool.low)


def test_pooled_model_has_more_power_than_one_pair_per_value() -> None:
    pair, pool = seed_level(5, 1.5)
    one_pair, in_family_pair = power(pair, (0, 0))
    one_pool, in_family_pool = power(pool, (0, 0))
    assert one_pool > one_pair + 0.05
    assert in_family_pool > in_family_pair + 0.05


@cache
def departures(seeds: int) -> dict[str, tuple[TTest, TTest]]:
    """Paired and pooled tests under the null when the noise breaks the model's assumptions:
    heavy tails (Student's t on 3 df, same SD), and one value twice as noisy as the others."""
    rng = np.random.default_rng(500 + seeds)
    shape = (STUDIES, TASKS, CELLS, seeds)
    seed = rng.normal(0, SEED_SD, (STUDIES, TASKS, 1, seeds))
    heavy = rng.standard_t(3, shape) / math.sqrt(3) * NOISE_SD
    sd = np.array([1.0, 2.0, 1.0, 1.0])[:, None] * NOISE_SD
    out = {}
    for name, noise in (("heavy tails", heavy), ("one noisy value", rng.normal(0, 1, shape) * sd)):
        cols = with_average(60.0 + seed + noise)
        out[name] = (paired(cols), pooled(cols))
    return out


@pytest.mark.parametrize("seeds", (3, 5))
def test_heavy_tailed_noise_keeps_the_family_rate(seeds: int) -> None:
    pair, pool = departures(seeds)["heavy tails"]
    assert fwer(pair) <= _limit(0.05, STUDIES) and fwer(pool) <= _limit(0.05, STUDIES)
    assert coverage(pool, 0.0) >= 0.93


# --------------------------------------------------------------------------------------------
# Clip-level noise
# --------------------------------------------------------------------------------------------

GROUPS, PER_GROUP = 100, 2
LATENT = dict(mean=0.3, group=1.2, clip=0.5, cell_clip=0.6, seed=0.1, cell_seed=0.08)


@cache
def clip_level(seeds: int) -> dict:
    """Tests of the null (every cell the same in the population of clips) over CLIP_STUDIES
    simulated studies: seed-level (from the trials' accuracies) and with the clips added."""
    rng = np.random.default_rng(7 + seeds)
    r, t, c, g, k = CLIP_STUDIES, TASKS, CELLS, GROUPS, PER_GROUP
    z = LATENT
    fresh = math.sqrt(1 - z["cell_clip"] ** 2)
    latent = (
        z["mean"]
        + rng.normal(0, z["group"], (r, t, 1, 1, g, 1))
        + rng.normal(0, z["clip"], (r, t, 1, 1, g, k))
        + rng.normal(0, z["cell_clip"], (r, t, c, 1, g, k))
        + rng.normal(0, z["seed"], (r, t, 1, seeds, 1, 1))
        + rng.normal(0, z["cell_seed"], (r, t, c, seeds, 1, 1))
        + rng.normal(0, fresh, (r, t, c, seeds, g, k)).astype(np.float32)
    )
    correct = (latent > 0).sum(axis=-1).astype(float)  # (R, T, C, S, G) per group
    counts = np.full(g, float(k))
    acc = 100.0 * correct.sum(axis=-1) / (g * k)  # (R, T, C, S)
    cols = with_average(acc)
    clip = contrast_clip_variance(correct, counts, WEIGHTS)  # (R, T, K)
    clip = np.concatenate([clip, clip.sum(axis=1, keepdims=True) / t**2], axis=1)
    pair, pool = paired(cols), pooled(cols)
    return {
        "paired": pair,
        "pooled": pool,
        "paired + clips": with_clips(pair, clip, seeds - 1),
        "pooled + clips": with_clips(pool, clip, seeds - 1),
        "seed_df": {"paired + clips": pair.df, "pooled + clips": pool.df},
        "clip_share": float(np.nanmedian(clip / (clip + pool.se**2))),
        "trial_sd": float(acc.std(axis=-1, ddof=1).mean()),
    }


@pytest.mark.parametrize("seeds", SEEDS)
def test_with_clips_the_false_positive_rate_stays_at_most_alpha(seeds: int) -> None:
    sim = clip_level(seeds)
    for name in ("paired + clips", "pooled + clips"):
        assert fwer(sim[name], sim["seed_df"][name]) <= _limit(0.05, CLIP_STUDIES), name
    if seeds == 2:  # one seed-level degree of freedom: no mark, clips or not
        assert fwer(sim["paired + clips"], sim["seed_df"]["paired + clips"]) == 0.0
    if seeds == 5:  # the seed-level tests alone take the draw of clips for a real effect
        assert fwer(sim["pooled"]) > _limit(0.05, CLIP_STUDIES)


@pytest.mark.parametrize("seeds", (3, 5))
def test_with_clips_the_intervals_cover_the_population_difference(seeds: int) -> None:
    sim = clip_level(seeds)
    for name in ("paired + clips", "pooled + clips"):
        assert coverage(sim[name], 0.0) >= 0.93, name
    assert coverage(sim["pooled"], 0.0) < 0.93  # without the clips they would not


def test_simulated_trials_vary_like_the_measured_ones() -> None:
    assert 3.0 < clip_level(3)["trial_sd"] < 4.5  # points, as NOISE_SD


def test_a_true_population_difference_is_the_latent_shift() -> None:
    """The coverage tests' truth (0) is exact: equal cells have equal population accuracy;
    a shift d of the latent score moves it by Phi(...), the check that the model is probit."""
    z = LATENT
    scale = math.sqrt(1 + z["group"] ** 2 + z["clip"] ** 2 + z["seed"] ** 2 + z["cell_seed"] ** 2)
    acc = float(special.ndtr(z["mean"] / scale))
    assert 0.5 < acc < 0.65  # as the default study's tasks


def main() -> None:
    """Print the measured numbers (docs/statistics.md)."""
    print(f"{STUDIES} seed-level studies per seed count; family of {(TASKS + 1) * VALUES} tests")
    for s in SEEDS:
        pair, pool = seed_level(s)
        print(
            f"seeds {s}: FWER paired {fwer(pair):.3f}, pooled {fwer(pool):.3f} (df "
            f"{int(pool.df.flat[0])}); coverage paired {coverage(pair, 0.0):.3f}, pooled "
            f"{coverage(pool, 0.0):.3f}; median CI width on a task paired "
            f"{np.median((pair.high - pair.low)[:, 0]):.2f}, pooled "
            f"{np.median((pool.high - pool.low)[:, 0]):.2f} points"
        )
    pair, pool = seed_level(5, 1.5)
    print(
        "power at 1.5 noise SDs, 5 seeds (one test / in the family): paired "
        "{:.3f} / {:.3f}, pooled {:.3f} / {:.3f}".format(*power(pair, (0, 0)), *power(pool, (0, 0)))
    )
    for s in (3, 5):
        for name, (pair, pool) in departures(s).items():
            noisy = (slice(None), slice(None), 0)  # the first value, on every column
            print(
                f"seeds {s}, {name}: FWER paired {fwer(pair):.3f}, pooled {fwer(pool):.3f}; "
                f"first value's single-test rate paired {(pair.p[noisy] < 0.05).mean():.3f}, "
                f"pooled {(pool.p[noisy] < 0.05).mean():.3f}, coverage paired "
                f"{coverage(pair, 0.0):.3f}, pooled {coverage(pool, 0.0):.3f}"
            )
    print(f"{CLIP_STUDIES} clip-level studies per seed count")
    for s in SEEDS:
        sim = clip_level(s)
        parts = ", ".join(
            f"{n}: FWER {fwer(sim[n], sim['seed_df'].get(n)):.3f}, coverage "
            f"{coverage(sim[n], 0.0):.3f}"
            for n in ("paired", "pooled", "paired + clips", "pooled + clips")
        )
        print(
            f"seeds {s}: trial SD {sim['trial_sd']:.2f}, clips' share of the pooled variance "
            f"{sim['clip_share']:.2f}; {parts}"
        )


if __name__ == "__main__":
    main()
