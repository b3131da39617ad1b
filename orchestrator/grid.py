"""Expand a study spec into trial cells keyed by a content hash of config plus seed.

Every design (ofat, factorial, list) yields the same kind of cell, and the key depends on the
resolved recipe and the seed only, so a cell reached by two designs is one result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from model.config import RecipeConfig
from orchestrator.spec import (
    StudySpec,
    cell_text,
    factorial_cells,
    setting_text,
    with_value,
)

# Settings that change where or how verbosely a trial runs, not what it computes.
NON_SEMANTIC = {
    ("data", "cache"),
    ("train", "log_every"),
    ("train", "eval_every"),
    ("train", "checkpoint_every"),
    ("probe", "batch_size"),
    ("probe", "knn_clips"),
}


def semantic_config(recipe: RecipeConfig) -> dict[str, Any]:
    d = dataclasses.asdict(recipe)
    for section, key in NON_SEMANTIC:
        d[section].pop(key, None)
    return d


def trial_key(recipe: RecipeConfig, seed: int) -> str:
    blob = json.dumps({"config": semantic_config(recipe), "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TrialSpec:
    key: str
    seed: int
    axis: str  # the axis varied (ofat), "factorial", "config" (list), or "baseline"
    setting: str  # that axis' value, the cell's "axis=value,..." text, the entry's name
    settings: dict[str, str]  # every axis' value in this trial, by axis name
    recipe: RecipeConfig

    @property
    def label(self) -> str:
        return f"{self.axis}={self.setting} seed={self.seed}"


def baseline_settings(spec: StudySpec) -> dict[str, str]:
    """The baseline's value of every axis, as text, by axis name."""
    return {
        a.name: setting_text(
            getattr(getattr(spec.baseline, a.path.split(".")[0]), a.path.split(".")[1])
        )
        for a in spec.axes
    }


def axis_choices(spec: StudySpec) -> dict[str, list[str]]:
    """Every value an axis can take in the study (its baseline value first).

    The keys are those of every trial's `settings` in every design (a list design's axes are
    the paths its entries set), so each Optuna categorical holds the value the trial fixed.
    """
    base = baseline_settings(spec)
    return {
        a.name: list(dict.fromkeys([base[a.name], *(setting_text(v) for v in a.values)]))
        for a in spec.axes
    }


Cell = tuple[str, str, dict[str, str], RecipeConfig]  # axis, setting, settings, recipe


def _ofat_cells(spec: StudySpec) -> list[Cell]:
    """One-factor-at-a-time: the baseline, then each axis value that differs from it."""
    base_settings = baseline_settings(spec)
    cells: list[Cell] = [("baseline", "baseline", base_settings, spec.baseline)]
    for a in spec.axes:
        for v in a.values:
            recipe = with_value(spec.baseline, a.path, v)
            if recipe == spec.baseline:
                continue
            cells.append(
                (a.name, setting_text(v), {**base_settings, a.name: setting_text(v)}, recipe)
            )
    return cells


def _factorial_cells(spec: StudySpec) -> list[Cell]:
    """Every combination of the crossed axes' values; the other axes stay at the baseline.

    The baseline is a cell only when each crossed axis lists its baseline value.
    """
    base_settings = baseline_settings(spec)
    return [
        (
            "factorial",
            cell_text(cell),
            {**base_settings, **{a.name: setting_text(v) for a, v in cell}},
            recipe,
        )
        for cell, recipe in factorial_cells(spec.baseline, spec.crossed_axes)
    ]


def _list_cells(spec: StudySpec) -> list[Cell]:
    """The baseline, then each listed configuration, named by its entry."""
    base_settings = baseline_settings(spec)
    cells: list[Cell] = [("baseline", "baseline", base_settings, spec.baseline)]
    for c in spec.configs:
        settings = {**base_settings, **{p: setting_text(v) for p, v in c.values}}
        cells.append(("config", c.name, settings, c.apply(spec.baseline)))
    return cells


DESIGN_CELLS = {"ofat": _ofat_cells, "factorial": _factorial_cells, "list": _list_cells}


def expand(spec: StudySpec) -> list[TrialSpec]:
    """The design's cells once per seed; a cell whose key already came up is not repeated."""
    cells = DESIGN_CELLS[spec.design](spec)
    out: list[TrialSpec] = []
    seen: set[str] = set()
    for seed in spec.seeds:
        for axis, setting, settings, recipe in cells:
            key = trial_key(recipe, seed)
            if key not in seen:
                seen.add(key)
                out.append(TrialSpec(key, seed, axis, setting, settings, recipe))
    return out


def study_tasks(spec: StudySpec) -> list[str]:
    """Every task a trial of the study reads (pretraining corpus and probes), sorted."""
    names: set[str] = set()
    for t in expand(spec):
        names.update(t.recipe.data.corpus, t.recipe.probe.tasks)
    return sorted(names)
