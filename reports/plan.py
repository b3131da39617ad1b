"""What a planned study can detect, before it runs: the minimum detectable effect of each
axis of the experiments file's design, from the seed-to-seed noise of the study's earlier
results (`abl run --dry-run`)."""

from __future__ import annotations

import math

import pandas as pd
from sqlalchemy import Engine

from reports.data import LIST_AXIS, NOT_STARTED, Results, load_results
from reports.inference import (
    MDE_NOTE,
    detectable_effects,
    pooled_noise,
    study_design,
)


def planned_results(
    study: str,
    design: str,
    axes: list[str],
    crossed: list[str],
    base: dict[str, str],
    tasks: list[str],
    expected: list[dict],
) -> Results:
    """A study as planned: every trial of `expected` (key, seed, axis, setting, settings), no
    result yet."""
    trials = pd.DataFrame(
        [
            {k: e[k] for k in ("key", "seed", "axis", "setting", "settings")}
            | {"status": NOT_STARTED, "error": None, "wall_s": math.nan}
            for e in expected
        ],
        columns=["key", "seed", "axis", "setting", "status", "error", "wall_s", "settings"],
    )
    empty = pd.DataFrame(columns=["key", "task", "metric", "value"])
    base = {**base, LIST_AXIS: "baseline"} if design == "list" else dict(base)
    return Results(
        study,
        design,
        list(axes),
        list(crossed),
        base,
        list(tasks),
        trials,
        empty,
        pd.DataFrame(columns=["key", "metric", "value"]),
        pd.DataFrame(columns=["key", "name", "step", "value"]),
        pd.DataFrame(columns=["setting", "seed", "task", "metric", "value"]),
    )


def detectable_lines(engine: Engine, planned: Results) -> list[str]:
    """Lines for the terminal: per axis of the planned design, its minimum detectable effect
    on the task average, with the noise estimated from the study's results so far."""
    earlier = load_results(engine, planned.study)
    noise = pooled_noise(study_design(earlier))
    if noise is None:
        return [
            "minimum detectable effect: no noise estimate yet (it needs results of two or "
            f"more cells at two or more seeds in study {planned.study})"
        ]
    table = detectable_effects(planned, study_design(planned), noise)
    lines = [
        f"minimum detectable effect ({MDE_NOTE}; noise SD {math.sqrt(noise.sigma2):.2f} "
        f"points on the {noise.column}, from {noise.df:g} df of earlier results):"
    ]
    for r in table.itertuples():
        if math.isinf(r.mde):
            lines.append(
                f"  {r.axis}: nothing: {r.cells} cells x {r.seeds} seeds leave {r.df} degree(s) "
                "of freedom for the noise; add seeds"
            )
            continue
        lines.append(
            f"  {r.axis}: {r.mde:.2f} points by one test, {r.mde_family:.2f} within its Holm "
            f"family of {r.family} ({r.cells} cells x {r.seeds} seeds, test df {r.df})"
        )
    return lines
