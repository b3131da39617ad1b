"""Each value of an axis against the baseline value: the model behind each test, its interval,
the Holm family of the axis' page and the verdict; and the smallest effect the design can
detect. docs/statistics.md gives the method and its measured calibration.

Every row of a comparison names the model its interval and p-value come from:

- the seed-blocked model: every cell of a study runs at the same seeds, so per task (and on
  the task average) score = cell + seed is fitted to all the cells together, and a value's
  effect (its cells' mean minus the baseline cells' mean) is tested against the residual
  pooled over every cell: (cells - 1)(seeds - 1) degrees of freedom in a complete study;
- the paired t-test: the value's own differences to the baseline at each seed, on seeds - 1
  degrees of freedom; shown beside the model's p-value, and the test wherever the model has
  no more degrees of freedom than it;
- + clips: where the test predictions are stored, the variance of the draw of test clips (a
  bootstrap over clip groups) is added to the seed-level variance (Welch-Satterthwaite df).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.data import (
    AVERAGE_TASK,
    AxisView,
    Results,
    axis_view,
    in_value_order,
    order_values,
    page_axes,
    summarise,
    trial_accuracy,
    trial_label,
    view_scores,
)
from reports.stats import (
    ALPHA,
    MAX_SEEDS,
    MIN_TEST_DF,
    POWER,
    BlockFit,
    TTest,
    block_fit,
    contrast_clip_variance,
    detectable,
    family_marks,
    mean_interval,
    seeds_needed,
    with_clips,
)

# --------------------------------------------------------------------------------------------
# The design: cells x seeds tables, the seed-blocked fits, the clips
# --------------------------------------------------------------------------------------------


@dataclass
class ClipTable:
    """One task's test predictions: correct clips per cell, seed and clip group (NaN where the
    trial stored none), over the clips that every trial with predictions scored."""

    correct: np.ndarray  # (C, S, G)
    counts: np.ndarray  # (G,) clips per group


@dataclass
class Design:
    """The study's cells (a configuration: the baseline, axis=value, a factorial cell or a
    list entry) and seeds, planned trials included, with each column's (task or average)
    cells x seeds accuracy table and its seed-blocked fit."""

    cells: list[str]
    seeds: list[int]
    cell_of: dict[str, int]  # trial key -> cell index
    seed_of: dict[str, int]  # trial key -> seed index
    tables: dict[str, np.ndarray]  # column -> (C, S) accuracy %, NaN without a result
    fits: dict[str, BlockFit | None]
    clips: dict[str, ClipTable]  # task -> its predictions, where stored


def study_design(res: Results) -> Design:
    t = res.trials
    labels = [trial_label(a, s) for a, s in zip(t["axis"], t["setting"], strict=True)]
    cells = sorted(set(labels))
    seeds = sorted({int(s) for s in t["seed"]})
    ci = {c: i for i, c in enumerate(cells)}
    si = {s: i for i, s in enumerate(seeds)}
    cell_of = {k: ci[lab] for k, lab in zip(t["key"], labels, strict=True)}
    seed_of = {k: si[int(s)] for k, s in zip(t["key"], t["seed"], strict=True)}
    acc = trial_accuracy(res)
    tables: dict[str, np.ndarray] = {}
    fits: dict[str, BlockFit | None] = {}
    keys = [k for k in acc.index if k in cell_of]
    rows = np.array([cell_of[k] for k in keys], dtype=int)
    cols = np.array([seed_of[k] for k in keys], dtype=int)
    for col in acc.columns:
        y = np.full((len(cells), len(seeds)), np.nan)
        v = acc.loc[keys, col].to_numpy(dtype=float)
        ok = np.isfinite(v)
        y[rows[ok], cols[ok]] = v[ok]  # one trial per cell and seed: the key says so
        tables[col] = y
        fits[col] = block_fit(y)
    return Design(
        cells,
        seeds,
        cell_of,
        seed_of,
        tables,
        fits,
        _clip_tables(res, cell_of, seed_of, len(cells), len(seeds)),
    )


def _clip_tables(
    res: Results, cell_of: dict[str, int], seed_of: dict[str, int], n_cells: int, n_seeds: int
) -> dict[str, ClipTable]:
    out = {}
    pred = res.predictions[res.predictions["key"].isin(cell_of)]
    for task in res.tasks:
        p = pred[pred["task"] == task]
        if p.empty:
            continue
        # The clips every trial with predictions scored (a changed data set leaves others out).
        trials = p["key"].nunique()
        per_clip = p.groupby("clip")["key"].nunique()
        p = p[p["clip"].isin(per_clip.index[per_clip == trials])]
        if p.empty:
            continue
        counts = p.drop_duplicates("clip").groupby("group").size().sort_index()
        sums = p.groupby(["key", "group"])["correct"].sum().unstack("group", fill_value=0)
        sums = sums.reindex(columns=counts.index, fill_value=0)
        correct = np.full((n_cells, n_seeds, len(counts)), np.nan)
        for k, row in zip(sums.index, sums.to_numpy(dtype=float), strict=True):
            correct[cell_of[k], seed_of[k]] = row
        out[task] = ClipTable(correct, counts.to_numpy(dtype=float))
    return out


def value_weights(view: AxisView, design: Design) -> dict[str, np.ndarray]:
    """Per value of the axis (the baseline's excepted): its contrast over the design's cells,
    the mean of its cells minus the mean of the baseline value's cells (planned ones too)."""
    if view.base_label is None:
        return {}
    cells: dict[str, set[int]] = {}
    for k, v in zip(view.trials["key"], view.trials["setting"], strict=True):
        if k in design.cell_of:
            cells.setdefault(v, set()).add(design.cell_of[k])
    base = cells.get(view.base_label, set())
    out = {}
    for v in order_values(list(cells), view.base_label)[1:]:
        w = np.zeros(len(design.cells))
        w[sorted(cells[v])] += 1.0 / len(cells[v])
        w[sorted(base)] -= 1.0 / max(1, len(base))
        if base:
            out[v] = w
    return out


def _observed(w: np.ndarray, observed: np.ndarray) -> np.ndarray | None:
    """The contrast over the cells that have scores (equal weights within each side)."""
    pos, neg = (w > 0) & observed, (w < 0) & observed
    if not pos.any() or not neg.any():
        return None
    out = np.zeros_like(w)
    out[pos], out[neg] = 1.0 / pos.sum(), -1.0 / neg.sum()
    return out


def _clip_var(design: Design, task: str, w: np.ndarray) -> tuple[float, int]:
    """The clip-draw variance of a contrast on one task (points^2) and the seeds it rests on:
    those at which every cell of the contrast stored predictions (NaN, 0 where none did)."""
    ct = design.clips.get(task)
    used = np.flatnonzero(w)
    if ct is None or used.size == 0:
        return math.nan, 0
    have = ~np.isnan(ct.correct[used][:, :, 0]).any(axis=0)  # seeds with every cell
    if not have.any():
        return math.nan, 0
    v = contrast_clip_variance(ct.correct[used][:, have], ct.counts, w[used][None])
    return float(v[0]), int(have.sum())


def clip_part(design: Design, column: str, tasks: list[str], w: np.ndarray) -> tuple[float, int]:
    """The clip variance of a contrast on a task, or on the task average (the tasks' clips are
    drawn independently: the mean of T differences has the sum of their variances / T^2),
    with the seeds it rests on."""
    if column != AVERAGE_TASK:
        return _clip_var(design, column, w)
    parts = [_clip_var(design, t, w) for t in tasks]
    if not parts or any(math.isnan(v) for v, _ in parts):
        return math.nan, 0
    return sum(v for v, _ in parts) / len(parts) ** 2, min(n for _, n in parts)


# --------------------------------------------------------------------------------------------
# The comparisons of one axis
# --------------------------------------------------------------------------------------------

COMPARISON_COLUMNS = [
    *("setting", "task", "n", "diff", "ci_low", "ci_high", "df", "model", "p", "p_holm"),
    *("p_paired", "seed_share", "clip_var", "seeds_needed", "verdict"),
]


def _first(t: TTest) -> dict[str, float]:
    return {
        f: float(np.ravel(getattr(t, f))[0]) for f in ("estimate", "se", "df", "low", "high", "p")
    }


def compare(res: Results, view: AxisView, scores: pd.DataFrame, design: Design) -> pd.DataFrame:
    """Each value against the baseline value, per task and on the task average: the
    difference in points, its 95% interval and p-value from the model the row names, the
    paired t-test's p beside it, and Holm's correction over the axis' family (every tested
    value x task, the average included)."""
    base = view.base_label
    if base is None or scores.empty or base not in set(scores["setting"]):
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    weights = value_weights(view, design)
    settings = order_values(scores["setting"].tolist(), base)[1:]
    # One table: (task, seed) rows, value columns, NaN where a seed has no result.
    wide = scores.pivot_table(index=["task", "seed"], columns="setting", values="value")
    col = {c: i for i, c in enumerate(wide.columns)}
    grid = wide.to_numpy(dtype=float)
    row_tasks = wide.index.get_level_values(0).to_numpy()
    rows = []
    for task in [*res.tasks, AVERAGE_TASK]:
        block = grid[row_tasks == task]
        if block.size == 0:
            continue
        fit = design.fits.get(task)
        for setting in settings:
            d = block[:, col[setting]] - block[:, col[base]]
            d = d[~np.isnan(d)]
            if d.size == 0:
                continue
            rows.append(_row(res, design, task, setting, d, fit, weights.get(setting)))
    out = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    if out.empty:
        return out
    out["p_holm"], marks = family_marks(out["p"].to_numpy(float), out["df"].to_numpy(float))
    out["verdict"] = [
        verdict(r.n, r.df, r.p_holm, r.seeds_needed, bool(m))
        for r, m in zip(out.itertuples(), marks, strict=True)
    ]
    return out


def _row(
    res: Results,
    design: Design,
    task: str,
    setting: str,
    d: np.ndarray,
    fit: BlockFit | None,
    w_planned: np.ndarray | None,
) -> dict:
    n = d.size
    paired = _first(mean_interval(d))
    row = dict(setting=setting, task=task, n=n, p_paired=paired["p"], seed_share=math.nan)
    row.update(clip_var=math.nan, p_holm=math.nan, verdict="")
    if n < 2:  # one seed: no interval, no test, whatever the other cells hold
        nan = math.nan
        row.update(diff=float(d.mean()), ci_low=nan, ci_high=nan, df=nan, p=nan)
        row.update(model="one seed", seeds_needed=nan, p_paired=nan)
        return row
    w = None if fit is None or w_planned is None else _observed(w_planned, fit.observed)
    if w is not None and fit is not None and fit.df > n - 1:
        seed = _first(fit.contrast(w))
        # For the seeds-needed estimate: the contrast's variance as sigma2 * l2 / seeds.
        seeds_with = int((~np.isnan(design.tables[task]).all(axis=0)).sum())
        sigma2 = float(fit.sigma2) if float(fit.sigma2) > 0 else math.nan
        l2 = seed["se"] ** 2 / sigma2 * seeds_with
        cells = int(fit.observed.sum())
        model = f"seed-blocked model ({cells} cells), df {fit.df:g}"
    else:
        seed = paired
        w = w if w is not None else w_planned
        sigma2, l2, cells = float(np.var(d, ddof=1)), 1.0, 2
        model = f"paired t, df {n - 1}"
    cv, clip_seeds = clip_part(design, task, res.tasks, w) if w is not None else (math.nan, 0)
    if clip_seeds < 2:  # one seed cannot separate the clips' part from the seeds'
        cv = math.nan
    final = _first(with_clips(_as_test(seed), cv, clip_seeds - 1))
    if math.isfinite(cv):
        model += f" + clips (Satterthwaite df {final['df']:.1f})"
        total = seed["se"] ** 2 + cv
        row["seed_share"] = seed["se"] ** 2 / total if total > 0 else math.nan
        row["clip_var"] = cv
    testable = seed["df"] >= MIN_TEST_DF
    row.update(
        diff=seed["estimate"],
        ci_low=final["low"],
        ci_high=final["high"],
        df=seed["df"],
        p=final["p"] if testable else math.nan,
        model=model,
        seeds_needed=seeds_needed(abs(seed["estimate"]), sigma2, l2, cells, cv),
    )
    if math.isinf(row["seeds_needed"]) and math.isfinite(cv):
        # Is it the clips? Seeds do not shrink their part; more test clips would.
        alone = seeds_needed(abs(seed["estimate"]), sigma2, l2, cells)
        row["seeds_needed"] = -1.0 if math.isfinite(alone) else math.inf
    if not paired["df"] >= MIN_TEST_DF:
        row["p_paired"] = math.nan
    return row


def _as_test(f: dict[str, float]) -> TTest:
    return TTest(*(np.asarray(f[k]) for k in ("estimate", "se", "df", "low", "high", "p")))


def verdict(n: int, df: float, p_holm: float, needed: float, marked: bool) -> str:
    """`df`: the seed-level noise estimate's degrees of freedom; `marked`: stats.significant;
    `needed`: seeds_needed, -1 where the clips' noise alone keeps the power short."""
    if n < 2:
        return f"{n} seed: too few to tell"
    if not df >= MIN_TEST_DF:
        return (
            f"{n} seeds: too few to tell (interval only; a test on {df:g} degree of freedom "
            "marks nothing)"
        )
    if math.isnan(p_holm):
        return "identical across seeds: no test"
    if marked:
        return "significant"
    if needed == -1.0:
        return "too few test clips to tell (the clips' noise alone hides it; seeds cannot help)"
    if math.isinf(needed):
        return f"too few seeds to tell (over {MAX_SEEDS} needed: no effect to speak of)"
    if not math.isnan(needed) and needed > n:
        return f"too few seeds to tell ({int(needed)} needed)"
    return "not significant"


def too_few(verdict_text: str) -> bool:
    return "too few" in verdict_text or "no test" in verdict_text


def family_note(comparisons: pd.DataFrame) -> str:
    """The Holm family of an axis' page, in words."""
    tested = int(comparisons["p"].notna().sum()) if not comparisons.empty else 0
    if tested == 0:
        return "no test (an interval needs two seeds, a test two degrees of freedom)"
    values = comparisons.loc[comparisons["p"].notna(), "setting"].nunique()
    columns = comparisons.loc[comparisons["p"].notna(), "task"].nunique()
    left = len(comparisons) - tested
    return f"the {tested} tests of the page ({values} value(s) x {columns} column(s))" + (
        f"; {left} comparison(s) without a test are not in it" if left else ""
    )


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


@dataclass
class AxisAnalysis:
    view: AxisView
    summary: pd.DataFrame
    comparisons: pd.DataFrame


def analyse(res: Results, design: Design | None = None) -> dict[str, AxisAnalysis]:
    design = design if design is not None else study_design(res)
    out = {}
    for axis in page_axes(res):
        view = axis_view(res, axis)
        scores = view_scores(res, view)
        base = view.base_label
        out[axis] = AxisAnalysis(
            view,
            in_value_order(summarise(scores), base),
            in_value_order(compare(res, view, scores, design), base),
        )
    return out


def ablation_map(analyses: dict[str, AxisAnalysis]) -> pd.DataFrame:
    """Rows axis and value, columns task: the difference to the baseline with its test."""
    parts = [a.comparisons.assign(axis=axis) for axis, a in analyses.items()]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=["axis", *COMPARISON_COLUMNS])
    return pd.concat(parts, ignore_index=True)[["axis", *COMPARISON_COLUMNS]]


RECIPE_COLUMNS = ["axis", "best", "gain", "ci_low", "ci_high", "model", "p_holm", "n", "verdict"]


def recipe(analyses: dict[str, AxisAnalysis], base: dict[str, str]) -> pd.DataFrame:
    """Per axis: the value with the best task-averaged score, its gain over the baseline value
    (points), the interval and Holm-corrected p of the model behind it, and the verdict."""
    rows = []
    nan = math.nan
    for axis, a in analyses.items():
        avg = a.comparisons[a.comparisons["task"] == AVERAGE_TASK]
        if avg.empty:  # one task: its own column
            avg = a.comparisons
        base_value = a.view.base_label
        empty = dict(ci_low=nan, ci_high=nan, model="", p_holm=nan)
        if base_value is None or avg.empty:
            rows.append(
                dict(axis=axis, best=base.get(axis, ""), gain=nan, n=0, **empty)
                | dict(verdict="no paired results yet")
            )
            continue
        best = avg.loc[avg["diff"].idxmax()]
        if best["diff"] <= 0:
            rows.append(
                dict(axis=axis, best=f"{base_value} (baseline)", gain=0.0, **empty)
                | dict(n=int(avg["n"].max()), verdict="no value beat the baseline")
            )
            continue
        rows.append(
            dict(
                axis=axis,
                best=best["setting"],
                gain=best["diff"],
                ci_low=best["ci_low"],
                ci_high=best["ci_high"],
                model=best["model"],
                p_holm=best["p_holm"],
                n=int(best["n"]),
                verdict=best["verdict"],
            )
        )
    return pd.DataFrame(rows, columns=RECIPE_COLUMNS)


# --------------------------------------------------------------------------------------------
# What the design can detect
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Noise:
    """The seed-to-seed noise of one trial's score, from a seed-blocked fit."""

    column: str  # the task average, or the one task
    sigma2: float  # points^2
    df: float


def pooled_noise(design: Design) -> Noise | None:
    """The residual variance of the task average's seed-blocked fit (of the one task's when
    the study has one); None without a degree of freedom for it."""
    cols = [AVERAGE_TASK] if AVERAGE_TASK in design.fits else list(design.fits)[:1]
    for c in cols:
        fit = design.fits.get(c)
        if fit is not None and float(fit.sigma2) > 0:
            return Noise(c, float(fit.sigma2), fit.df)
    return None


DETECTABLE_COLUMNS = [
    *("axis", "values", "cells", "seeds", "df", "noise_sd", "noise_df", "clip_sd"),
    *("mde", "family", "mde_family"),
]


def detectable_effects(
    res: Results, design: Design, noise: Noise | None, clip_var: dict[str, float] | None = None
) -> pd.DataFrame:
    """Per axis: the smallest true difference (points, on the column the noise is measured on)
    that the design, as planned (every trial of the experiments file, finished or not), detects
    with POWER: by one two-sided test at ALPHA, and within its page's Holm family (the first
    step of Holm's procedure, ALPHA / m). The seed-level noise is `noise`; `clip_var` per axis
    adds the clip-draw variance measured for it. inf: no test of the design can mark anything
    (fewer than MIN_TEST_DF degrees of freedom)."""
    rows = []
    c, s = len(design.cells), len(design.seeds)
    df = (c - 1) * (s - 1)
    columns = len(res.tasks) + (1 if len(res.tasks) > 1 else 0)
    for axis in page_axes(res):
        weights = value_weights(axis_view(res, axis), design)
        if not weights or noise is None:
            continue
        l2 = max(float((w**2).sum()) for w in weights.values())
        cv = (clip_var or {}).get(axis, math.nan)
        se = math.sqrt(noise.sigma2 * l2 / s + (cv if math.isfinite(cv) else 0.0))
        m = len(weights) * columns
        ok = df >= MIN_TEST_DF
        rows.append(
            dict(
                axis=axis,
                values=len(weights),
                cells=c,
                seeds=s,
                df=df,
                noise_sd=math.sqrt(noise.sigma2),
                noise_df=noise.df,
                clip_sd=math.sqrt(cv) if math.isfinite(cv) else math.nan,
                mde=detectable(se, df) if ok else math.inf,
                family=m,
                mde_family=detectable(se, df, ALPHA / m) if ok else math.inf,
            )
        )
    return pd.DataFrame(rows, columns=DETECTABLE_COLUMNS)


def axis_clip_var(analyses: dict[str, AxisAnalysis], column: str) -> dict[str, float]:
    """Per axis, the median clip-draw variance of its comparisons on `column`."""
    out = {}
    for axis, a in analyses.items():
        c = a.comparisons
        v = c.loc[c["task"] == column, "clip_var"].dropna() if not c.empty else pd.Series([])
        if len(v):
            out[axis] = float(np.median(v.to_numpy(dtype=float)))
    return out


MDE_NOTE = (
    f"the smallest true difference a test of this design detects with {POWER:.0%} power "
    f"(two-sided, alpha {ALPHA})"
)
