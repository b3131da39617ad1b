"""Axis importance from Optuna's fANOVA, on seed-averaged scores.

Every configuration of the study (its value of each axis) becomes one completed trial of an
in-memory Optuna study whose value is the configuration's score averaged over its seeds, so the
seeds are replicates, not extra points. The evaluator is pinned (fixed trees, depth and seed),
so the same results give the same importances.

A one-factor-at-a-time design varies one axis per configuration: the forest then sees each
axis only around the baseline, and an importance is the share of the variance of those
configurations that the axis explains; a factorial design gives the textbook fANOVA.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.importance import FanovaImportanceEvaluator

from reports.data import AVERAGE_TASK, LIST_AXIS, Results, trial_accuracy

# Depth 8: the forests over a study's few hundred configurations give the same importances
# as at Optuna's default depth of 64, an order of magnitude faster (bench/report_render.py).
N_TREES, MAX_DEPTH, SEED = 64, 8, 0
EVALUATOR = (
    f"Optuna {optuna.__version__} fANOVA (FanovaImportanceEvaluator: {N_TREES} trees, "
    f"max depth {MAX_DEPTH}, seed {SEED})"
)


def config_scores(res: Results) -> tuple[pd.DataFrame, list[str]]:
    """One row per configuration: its value of every axis that varies, then its seed-mean
    accuracy per task and over tasks (seeds with every task only)."""
    t = res.trials[res.trials["status"] == "done"]
    axes = [a for a in res.axes if a != LIST_AXIS]
    wide = trial_accuracy(res)
    if t.empty or wide.columns.empty:
        return pd.DataFrame(), []
    settings = pd.DataFrame([{a: str(s.get(a)) for a in axes} for s in t["settings"]])
    settings.index = t["key"].to_numpy()
    varying = [a for a in axes if settings[a].nunique() > 1]
    if res.design == "factorial":
        varying = [a for a in varying if a in res.crossed]
    rows = settings[varying].join(wide, how="inner")
    if rows.empty or not varying:
        return pd.DataFrame(), varying
    return rows.groupby(varying, as_index=False).mean(), varying


def axis_importance(res: Results) -> tuple[pd.DataFrame, str]:
    """Importance (shares summing to 1 per column) of each axis, per task and on the average;
    returns the table (index axis, columns tasks) and a note on what it rests on."""
    configs, axes = config_scores(res)
    if len(axes) == 0:
        return pd.DataFrame(), "no axis varies among the finished trials yet"
    if len(configs) < 3:
        return pd.DataFrame(), (
            f"{len(configs)} finished configuration(s): importance needs at least 3"
        )
    if len(axes) == 1:
        return pd.DataFrame(), (
            f"one axis ({axes[0]}) varies: it explains all the variance there is; importance "
            "compares two or more axes"
        )
    choices = {a: sorted(configs[a].unique()) for a in axes}
    dists = {a: CategoricalDistribution(choices[a]) for a in axes}
    # The task average when there is one (a forest per task would multiply the cost by the
    # number of tasks); else the one task.
    score_cols = (
        [AVERAGE_TASK]
        if AVERAGE_TASK in configs.columns
        else [c for c in configs.columns if c not in axes]
    )
    table = {}
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        for col in score_cols:
            ok = configs[np.isfinite(configs[col].to_numpy(dtype=float))]
            if len(ok) < 3 or ok[col].nunique() < 2:
                continue
            study = optuna.create_study(direction="maximize")
            study.add_trials(
                optuna.trial.create_trial(
                    params={a: row[a] for a in axes}, distributions=dists, value=float(row[col])
                )
                for _, row in ok.iterrows()
            )
            evaluator = FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=SEED)
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
            table[col] = {a: imp.get(a, math.nan) for a in axes}
    finally:
        optuna.logging.set_verbosity(previous)
    note = f"{EVALUATOR}, over {len(configs)} configurations (seed-averaged accuracy)"
    return pd.DataFrame(table).reindex(axes), note
