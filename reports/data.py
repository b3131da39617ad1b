"""A study's results as the reports see them, read through db/, and the tables computed from
them: per-axis rows, per-value scores with their intervals over seeds, factorial interactions,
cost per trial. The comparisons with the baseline and their tests are reports.inference.

Scores are in percent. In a factorial design a value's score at a seed is the mean over the
cells holding that value (its main effect), and the baseline is the baseline's value of the
axis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from db.queries import curves_frame, predictions_frame, results_frame, study_spec
from reports.stats import mean_interval

AVERAGE_TASK = "average over tasks"
PROBE_METRICS = ("accuracy", "macro_f1")
REFERENCE_AXIS = "reference"
BASELINE_AXIS = "baseline"
FACTORIAL_AXIS = "factorial"  # what orchestrator.grid calls a factorial design's trials
LIST_AXIS = "config"  # and a list design's entries
NOT_STARTED = "not started"
# Statuses of trials that will never produce a result.
NO_RESULT = ("failed", "pruned")
PRED_COLUMNS = ["key", "task", "clip", "group", "correct"]


@dataclass
class Results:
    """Everything the pages draw, for one study."""

    study: str
    design: str
    axes: list[str]  # the report's axes, in the experiments file's order
    crossed: list[str]  # factorial: the crossed axes
    base: dict[str, str]  # each axis' baseline value, as text
    tasks: list[str]  # probe tasks, in the experiments file's order
    # One row per trial: key, seed, axis, setting, status, error, wall_s, settings (a dict).
    # Trials of the experiments file that have no row yet are there as "not started".
    trials: pd.DataFrame
    scores: pd.DataFrame  # key, task, metric, value (percent), probe metrics of done trials
    train: pd.DataFrame  # key, metric, value: the trials' training figures (seconds, FLOPs)
    curves: pd.DataFrame  # key, name, step, value
    references: pd.DataFrame  # setting, seed, task, metric, value (percent)
    stale: int = 0  # results of the study from earlier versions of the file, left out
    # Per task the study reads: {"clips": n, "skipped": {reason: n}} (clips its preparation
    # skipped: unreadable or silent audio), as recorded when the study was last run.
    data: dict[str, dict] = field(default_factory=dict)
    # Per finished trial, task and labelled test clip: key, task, clip, group, correct (the
    # share of the draws of the folds that scored it right: 0 or 1 under one draw).
    # Empty where the database holds no predictions (results recorded before they were).
    predictions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PRED_COLUMNS))


def load_results(engine: Engine, study: str, expected: Iterable[dict] | None = None) -> Results:
    """Read a study. `expected` (dicts with key, seed, axis, setting, settings) lists the
    trials the experiments file asks for: those without a row become "not started", and rows
    whose key is not among them (an earlier version of the file) are left out and counted."""
    spec = study_spec(engine, study) or {}
    df = results_frame(engine, study)
    trial_cols = ["key", "seed", "axis", "setting", "status", "error", "wall_s", "settings_json"]
    trial_cols += [c for c in ("precision", "attention") if c in df.columns]
    trials = df[trial_cols].drop_duplicates("key").reset_index(drop=True)
    trials["settings"] = [
        json.loads(s) if isinstance(s, str) and s else {} for s in trials.pop("settings_json")
    ]
    is_ref = trials["axis"] == REFERENCE_AXIS
    stale = 0
    if expected is not None:
        expected = list(expected)
        want = {e["key"] for e in expected}
        keep = is_ref | trials["key"].isin(want)
        stale = int((~keep).sum())
        trials = trials[keep].reset_index(drop=True)
        have = set(trials["key"])
        extra = [
            {
                **{k: e[k] for k in ("key", "seed", "axis", "setting", "settings")},
                "status": NOT_STARTED,
                "error": None,
                "wall_s": math.nan,
            }
            for e in expected
            if e["key"] not in have
        ]
        if extra:
            trials = pd.concat([trials, pd.DataFrame(extra)], ignore_index=True)
        is_ref = trials["axis"] == REFERENCE_AXIS
    kept = set(trials["key"])

    m = df[df["key"].isin(kept) & df["task"].notna()]
    m = m[np.isfinite(pd.to_numeric(m["value"], errors="coerce").astype(float))]
    probe = m[(m["task"] != "train") & m["metric"].isin(PROBE_METRICS) & (m["status"] == "done")]
    scores = probe[["key", "task", "metric", "value"]].copy()
    scores["value"] = scores["value"].astype(float) * 100.0
    train = m[m["task"] == "train"][["key", "metric", "value"]].reset_index(drop=True)

    ref_keys = trials.loc[is_ref, ["key", "setting", "seed"]]
    references = ref_keys.merge(scores, on="key")[["setting", "seed", "task", "metric", "value"]]
    scores = scores[~scores["key"].isin(set(ref_keys["key"]))].reset_index(drop=True)

    curves = curves_frame(engine, study)
    curves = curves[curves["key"].isin(kept)].reset_index(drop=True)

    baseline = spec.get("baseline") or {}
    tasks = list((baseline.get("probe") or {}).get("tasks") or [])
    for t in sorted(set(scores["task"]) - set(tasks)):
        tasks.append(t)
    base = dict(spec.get("baseline_settings") or {})
    if not base:  # results written before the spec carried them: the baseline trial's
        b = trials[trials["axis"] == BASELINE_AXIS]
        base = dict(b["settings"].iloc[0]) if len(b) else {}
    design = spec.get("design") or _guess_design(trials)
    axes = [a["name"] for a in spec.get("axes") or []]
    if not axes:
        axes = sorted(set(trials["axis"]) - {REFERENCE_AXIS, BASELINE_AXIS, FACTORIAL_AXIS})
    crossed = list(spec.get("crossed") or []) or (axes if design == "factorial" else [])
    if design == "list":
        base = {**base, LIST_AXIS: BASELINE_AXIS}
    return Results(
        study,
        design,
        axes,
        crossed,
        base,
        tasks,
        trials[~is_ref].reset_index(drop=True),
        scores,
        train,
        curves,
        references,
        stale,
        dict(spec.get("data") or {}),
        _predictions(engine, study, set(trials.loc[~is_ref, "key"])),
    )


def _predictions(engine: Engine, study: str, keys: set[str]) -> pd.DataFrame:
    """The finished trials' test predictions as the share of draws of the folds that scored
    each clip right (1 or 0 under one draw; see Results)."""
    p = predictions_frame(engine, study)
    p = p[p["key"].isin(keys) & (p["status"] == "done")]
    p = p.assign(correct=(p["truth"].astype(str) == p["pred"].astype(str)).astype(float))
    out = p.groupby(["key", "task", "clip", "group"], as_index=False, sort=False)["correct"].mean()
    return out[PRED_COLUMNS]


def _guess_design(trials: pd.DataFrame) -> str:
    axes = set(trials["axis"])
    return "factorial" if FACTORIAL_AXIS in axes else "list" if LIST_AXIS in axes else "ofat"


def page_axes(res: Results) -> list[str]:
    """The axis pages: each axis, or for a list design the one page of its entries."""
    return [LIST_AXIS] if res.design == "list" else list(res.axes)


# --------------------------------------------------------------------------------------------
# One axis
# --------------------------------------------------------------------------------------------


@dataclass
class AxisView:
    """The trials on one axis' page, each labelled with its value of the axis."""

    axis: str
    trials: pd.DataFrame  # key, seed, status, error, wall_s, setting (the value), is_base
    base_label: str | None  # the value differences are taken to; None: no such trial
    note: str = ""  # how the trials were chosen, for the page

    @property
    def values(self) -> list[str]:
        """The axis' values in display order: the baseline first, then numeric or text order."""
        return order_values(self.trials["setting"].tolist(), self.base_label)


def order_values(values: list[str], base: str | None) -> list[str]:
    uniq = list(dict.fromkeys(str(v) for v in values))
    rest = [v for v in uniq if v != base]
    try:
        rest.sort(key=float)
    except ValueError:
        rest.sort()
    return ([base] if base in uniq else []) + rest


def axis_view(res: Results, axis: str) -> AxisView:
    t = res.trials
    base = res.base.get(axis)
    if res.design == "factorial":
        if axis not in res.crossed:
            return AxisView(axis, t.iloc[0:0].assign(is_base=False), None, "not crossed")
        sel = t[t["axis"] == FACTORIAL_AXIS].copy()
        sel["setting"] = [str(s.get(axis)) for s in sel["settings"]]
        note = (
            f"factorial design: each value pools every cell that holds it (its main effect, "
            f"averaged over the other crossed axes {', '.join(a for a in res.crossed if a != axis)}"
            ") at each seed"
            if len(res.crossed) > 1
            else "factorial design over one axis"
        )
    else:
        sel = t[(t["axis"] == axis) | (t["axis"] == BASELINE_AXIS)].copy()
        sel.loc[sel["axis"] == BASELINE_AXIS, "setting"] = base if base is not None else "baseline"
        note = "one factor at a time: each value differs from the baseline in this axis only"
        if axis == LIST_AXIS:
            note = "list design: each entry against the baseline"
    sel["setting"] = sel["setting"].astype(str)
    if base is None or base not in set(sel["setting"]):
        base = None
    sel["is_base"] = sel["setting"] == base
    cols = ["key", "seed", "status", "error", "wall_s", "setting", "is_base", "settings"]
    return AxisView(axis, sel[cols].reset_index(drop=True), base, note)


def view_scores(res: Results, view: AxisView, metric: str = "accuracy") -> pd.DataFrame:
    """Per value, seed and task: the score (mean over the cells of a factorial at that seed),
    and the task average for seeds that have every task. Columns setting, seed, task, value."""
    s = res.scores[res.scores["metric"] == metric].merge(
        view.trials[["key", "seed", "setting"]], on="key"
    )
    if s.empty:
        return pd.DataFrame(columns=["setting", "seed", "task", "value"])
    per = s.groupby(["setting", "seed", "task"], as_index=False, sort=False)["value"].mean()
    wide = per.pivot_table(index=["setting", "seed"], columns="task", values="value")
    tasks = [t for t in res.tasks if t in wide.columns]
    avg = wide[tasks].dropna(how="any").mean(axis=1).rename("value").reset_index()
    avg["task"] = AVERAGE_TASK
    if len(tasks) < 2:
        avg = avg.iloc[0:0]
    return pd.concat([per, avg[["setting", "seed", "task", "value"]]], ignore_index=True)


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% Student-t CI across seeds per value and task (no CI from one seed)."""
    rows = []
    for (setting, task), g in scores.groupby(["setting", "task"], sort=False):
        v = g["value"].to_numpy(dtype=float)
        ci = mean_interval(v)
        rows.append(
            dict(
                setting=setting,
                task=task,
                n_seeds=v.size,
                mean=v.mean(),
                ci_low=float(ci.low),
                ci_high=float(ci.high),
            )
        )
    cols = ["setting", "task", "n_seeds", "mean", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=cols)


def in_value_order(df: pd.DataFrame, base: str | None) -> pd.DataFrame:
    """Rows sorted by value (the baseline first), stable within a value."""
    rank = {v: i for i, v in enumerate(order_values(df["setting"].tolist(), base))}
    return df.iloc[np.argsort(df["setting"].map(rank).to_numpy(), kind="stable")]


def trial_accuracy(res: Results) -> pd.DataFrame:
    """Accuracy (percent) per finished trial (rows, by key) and task, in the file's task order,
    with the task average when there are several tasks (NaN unless the trial has every task)."""
    acc = res.scores[res.scores["metric"] == "accuracy"]
    wide = acc.pivot_table(index="key", columns="task", values="value")
    tasks = [t for t in res.tasks if t in wide.columns]
    wide = wide[tasks]
    if len(tasks) > 1:
        wide[AVERAGE_TASK] = wide[tasks].mean(axis=1, skipna=False)
    return wide


def interactions(res: Results) -> list[tuple[str, str, pd.DataFrame, float]]:
    """For each pair of crossed axes of a factorial: the task-averaged accuracy per cell of the
    pair (mean over seeds and the other crossed axes) as the difference to the baseline's cell,
    and the largest departure from additivity (points): how far a cell is from row effect plus
    column effect."""
    if res.design != "factorial" or len(res.crossed) < 2:
        return []
    fac = res.trials[res.trials["axis"] == FACTORIAL_AXIS]
    wide = trial_accuracy(res)
    if wide.empty or wide.columns.empty:
        return []
    avg = wide[wide.columns[-1]].dropna().rename("value")  # the average, or the one task
    cells = fac.set_index("key").join(avg, how="inner")
    out = []
    for a, b in combinations(res.crossed, 2):
        if cells.empty:
            continue
        va = [str(s.get(a)) for s in cells["settings"]]
        vb = [str(s.get(b)) for s in cells["settings"]]
        per_seed = (
            pd.DataFrame({a: va, b: vb, "seed": cells["seed"], "value": cells["value"]})
            .groupby([a, b, "seed"], as_index=False)["value"]
            .mean()
        )
        grid = per_seed.groupby([a, b])["value"].mean().unstack(b)
        grid = grid.reindex(
            index=order_values(list(grid.index), res.base.get(a)),
            columns=order_values(list(grid.columns), res.base.get(b)),
        )
        ref = grid.iloc[0, 0]
        diff = grid - ref
        full = grid.dropna(how="any")
        full = full.loc[:, grid.notna().all()] if not full.empty else full
        departure = math.nan
        if full.shape[0] >= 2 and full.shape[1] >= 2:
            g = full.to_numpy()
            resid = g - g.mean(1, keepdims=True) - g.mean(0, keepdims=True) + g.mean()
            departure = float(np.abs(resid).max())
        out.append((a, b, diff, departure))
    return out


# What a trial records of its costs (task "train"); other_s is derived from them.
COST_FIGURES = (
    *("data_s", "train_s", "probe_s", "flops_per_step", "gflops_per_s"),
    *("padding_share", "silence_share"),
)
COST_COLUMNS = [
    *("label", "seed", "wall_s", "data_s", "train_s", "probe_s", "other_s"),
    *("flops_per_step", "gflops_per_s", "padding_share", "silence_share"),
    *("precision", "attention"),
]


def trial_label(axis: str, setting: str) -> str:
    """How a trial's configuration is named on the overview: baseline, axis=value (ofat), or
    the cell or entry name (factorial, list)."""
    if axis == BASELINE_AXIS:
        return "baseline"
    return setting if axis in (FACTORIAL_AXIS, LIST_AXIS) else f"{axis}={setting}"


def cost(res: Results) -> pd.DataFrame:
    """Per finished trial: wall time split into data, training, probes and the rest (s), FLOPs
    per step and the achieved GFLOP/s, with a label naming its configuration."""
    cols = ["key", "seed", "axis", "setting", "wall_s"]
    cols += [c for c in ("precision", "attention") if c in res.trials.columns]
    t = res.trials[res.trials["status"] == "done"][cols]
    if t.empty:
        return pd.DataFrame(columns=COST_COLUMNS)
    figures = res.train.pivot_table(index="key", columns="metric", values="value")
    t = t.join(figures, on="key")
    # A figure a trial did not record reads as missing (silence_share: older trials).
    for c in COST_FIGURES:
        if c not in t.columns:
            t[c] = math.nan
    for c in ("precision", "attention"):  # what auto resolved to, per trial (None: not known)
        t[c] = t[c].fillna("-") if c in t.columns else "-"
    t["label"] = [trial_label(a, s) for a, s in zip(t["axis"], t["setting"], strict=True)]
    t["other_s"] = (t["wall_s"] - t[["data_s", "train_s", "probe_s"]].fillna(0).sum(axis=1)).clip(0)
    return t[COST_COLUMNS].reset_index(drop=True)


def progress(res: Results) -> dict[str, int]:
    counts = res.trials["status"].value_counts()
    keys = ("done", "running", NOT_STARTED, "failed", "pruned")
    return {k: int(counts.get(k, 0)) for k in keys}
