"""Expand a study spec into trial cells keyed by a content hash of config plus seed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from model.config import RecipeConfig
from orchestrator.spec import StudySpec, with_value

# Settings that change where or how verbosely a trial runs, not what it computes.
NON_SEMANTIC = {
    ("data", "cache"),
    ("train", "log_every"),
    ("train", "eval_every"),
    ("train", "checkpoint_every"),
    ("probe", "batch_size"),
    ("probe", "knn_clips"),
}


def setting_text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "x".join(str(v) for v in value)
    return str(value)


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
    axis: str  # the axis varied, or "baseline"
    setting: str  # that axis' value as text, or "baseline"
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
    """Every value an axis can take in the study (its baseline value first)."""
    base = baseline_settings(spec)
    return {
        a.name: list(dict.fromkeys([base[a.name], *(setting_text(v) for v in a.values)]))
        for a in spec.axes
    }


def expand(spec: StudySpec) -> list[TrialSpec]:
    """One-factor-at-a-time: the baseline, then each axis value that differs from it."""
    base_settings = baseline_settings(spec)
    cells: list[tuple[str, str, dict[str, str], RecipeConfig]] = [
        ("baseline", "baseline", base_settings, spec.baseline)
    ]
    for a in spec.axes:
        for v in a.values:
            recipe = with_value(spec.baseline, a.path, v)
            if recipe == spec.baseline:
                continue
            cells.append(
                (a.name, setting_text(v), {**base_settings, a.name: setting_text(v)}, recipe)
            )
    out: list[TrialSpec] = []
    seen: set[str] = set()
    for seed in spec.seeds:
        for axis, setting, settings, recipe in cells:
            key = trial_key(recipe, seed)
            if key not in seen:
                seen.add(key)
                out.append(TrialSpec(key, seed, axis, setting, settings, recipe))
    return out
