"""Expand a study spec into trial cells keyed by a content hash of config plus seed.

Every design (ofat, factorial, list) yields the same kind of cell, and the key depends on the
resolved recipe and the seed only, so a cell reached by two designs is one result. Two keys:
the pretraining (the recipe without its probe section) and the trial (the pretraining and the
probe settings, not the probe tasks); see `trial_key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
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
    """The recipe as recorded with a trial (results table, MLflow params): every setting that
    changes what it computes."""
    d = dataclasses.asdict(recipe)
    for section, key in NON_SEMANTIC:
        d[section].pop(key, None)
    return d


# How keys stay stable across versions (docs/keys.md). A key hashes what was computed, as
# JSON with sorted keys; it never hashes where data lives nor bookkeeping (NON_SEMANTIC). Key
# version 3 hashes every recipe field that exists in it (KEYED_V3 in tests/test_keys.py pins
# the list), with each pretraining data set by the content of its prepared audio
# (model.data.datasets.task_content), not by its name, declaration or folder. A field added
# later must come with its neutral value: the value that computes what trials computed before
# the field existed. A recipe holding the neutral value hashes as if the field were absent, so
# trials that ran before it keep their keys.
KEY_VERSION = 3
KEY_NEUTRAL: dict[str, Any] = {
    "target.source": "latent",
    "loss.global_weight": 0.0,
    "loss.global_view": "same",
    "loss.global_pool": "clip",
    "data.mix": 0.0,
    "loss.global_loss": "l2",
    "loss.global_temperature": 0.1,
    "train.crop_frames": 0,
    "encoder.stem": "linear",
    "probe.repeats": 1,
    "probe.tolerance": 1e-4,
    "loss.sigreg_weight": 0.0,
    "loss.sigreg_slices": 256,
    "train.grad_clip": 0.0,
    "data.max_silence": 1.0,
    "data.gain_db": 0.0,
    "loss.token_weight": 1.0,
}

# Data set name -> the content hash of its prepared audio.
Contents = Mapping[str, str]


def content_of(name: str, contents: Contents | None) -> str:
    """How a data set enters a key: its content hash; by name where no contents are given
    (telling two cells of one file apart, which share their data), and as "unprepared:NAME"
    where it is not prepared yet (a provisional key: `abl run` prepares it before any key is
    stored)."""
    if contents is None:
        return f"name:{name}"
    return contents.get(name) or f"unprepared:{name}"


def drop_neutral(d: dict[str, Any], sections: tuple[str, ...] | None = None) -> None:
    """Remove from a recipe dict (sections of settings) every setting of KEY_NEUTRAL that holds
    its neutral value, in `sections` only when given: what a recipe hashes as."""
    for path, neutral in KEY_NEUTRAL.items():
        section, name = path.split(".")
        if sections is not None and section not in sections:
            continue
        if name in d[section] and d[section][name] == json.loads(json.dumps(neutral)):
            del d[section][name]


def _keyed(recipe: RecipeConfig, contents: Contents | None) -> dict[str, Any]:
    d = json.loads(json.dumps(semantic_config(recipe), default=str))  # tuples as lists
    del d["data"]["tasks"]  # a declaration is keyed by what it prepared, through the corpus
    d["data"]["corpus"] = [content_of(n, contents) for n in recipe.data.corpus]
    drop_neutral(d)
    return d


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def pretrain_key(recipe: RecipeConfig, seed: int, contents: Contents | None) -> str:
    """What is pretrained: the recipe without its probe section, its corpus by content, and the
    seed. Checkpoints are kept under it, so trials that differ only in how they are probed
    share one pretraining."""
    d = _keyed(recipe, contents)
    del d["probe"]
    return _hash({"pretrain": d, "seed": seed, "version": KEY_VERSION})


def trial_key(recipe: RecipeConfig, seed: int, contents: Contents | None) -> str:
    """A trial: its pretraining and how its encoder is probed (encoder, protocol, folds,
    layers, C grid), not which tasks: results are kept per task (with the content of the
    task's data), so adding a task to probe.tasks probes finished trials for it and retrains
    nothing."""
    probe = _keyed(recipe, contents)["probe"]
    del probe["tasks"]
    return _hash({"pretrain": pretrain_key(recipe, seed, contents), "probe": probe})


def study_contents(spec: StudySpec) -> dict[str, str]:
    """The content hash of every prepared data set the study's trials read (corpus and probe
    tasks); data sets not prepared yet are left out (their keys are provisional)."""
    from model.data.datasets import resolve_data_root, task_content

    root = resolve_data_root(spec.baseline.data.cache)
    out = {}
    for name in study_tasks(spec):
        content = task_content(name, root)
        if content is not None:
            out[name] = content
    return out


@dataclass(frozen=True)
class TrialSpec:
    key: str
    seed: int
    axis: str  # the axis varied (ofat), "factorial", "config" (list), or "baseline"
    setting: str  # that axis' value, the cell's "axis=value,..." text, the entry's name
    settings: dict[str, str]  # every axis' value in this trial, by axis name
    recipe: RecipeConfig
    # The content hash of each data set it reads (corpus and probe tasks) that is prepared.
    contents: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def pretrain(self) -> str:
        """The key of its pretraining (shared by trials that differ only in the probe)."""
        return pretrain_key(self.recipe, self.seed, self.contents)

    @property
    def provisional(self) -> bool:
        """Its key names data that is not prepared yet: preparing it gives the final key."""
        return any(n not in self.contents for n in self.recipe.data.corpus)

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


def expand(spec: StudySpec, contents: Contents | None = None) -> list[TrialSpec]:
    """The design's cells once per seed; a cell whose key already came up is not repeated.
    Data sets enter the keys by the content of their prepared audio: `contents`, else what the
    data cache holds (`study_contents`)."""
    if contents is None:
        contents = study_contents(spec)
    out: list[TrialSpec] = []
    seen: set[str] = set()
    for seed in spec.seeds:
        for axis, setting, settings, recipe in DESIGN_CELLS[spec.design](spec):
            key = trial_key(recipe, seed, contents)
            if key not in seen:
                seen.add(key)
                reads = (*recipe.data.corpus, *recipe.probe.tasks)
                mine = {n: contents[n] for n in reads if n in contents}
                out.append(TrialSpec(key, seed, axis, setting, settings, recipe, mine))
    return out


def study_tasks(spec: StudySpec) -> list[str]:
    """Every task a trial of the study reads (pretraining corpus and probes), sorted."""
    names: set[str] = set()
    for _, _, _, recipe in DESIGN_CELLS[spec.design](spec):
        names.update(recipe.data.corpus, recipe.probe.tasks)
    return sorted(names)
