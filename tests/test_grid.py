"""Grid expansion and content keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.grid import expand, trial_key
from orchestrator.spec import Axis, load_spec

ROOT = Path(__file__).resolve().parents[1]


def spec_with(**changes):
    return dataclasses.replace(load_spec(ROOT / "experiments.yaml"), **changes)


def test_ofat_has_baseline_plus_each_differing_value():
    spec = spec_with(
        axes=(
            Axis("masking", "mask.strategy", ("unstructured", "time", "frequency")),
            Axis("mask.ratio", "mask.ratio", (0.4, 0.6)),
        ),
        seeds=(0, 1),
    )
    trials = expand(spec)
    cells = [(t.axis, t.setting) for t in trials if t.seed == 0]
    # The baseline values (unstructured, 0.6) are the baseline cell itself, not new trials.
    assert cells == [
        ("baseline", "baseline"),
        ("masking", "time"),
        ("masking", "frequency"),
        ("mask.ratio", "0.4"),
    ]
    assert len(trials) == 8
    assert len({t.key for t in trials}) == 8
    time_trial = next(t for t in trials if t.setting == "time")
    assert time_trial.recipe.mask.strategy == "time"
    assert time_trial.settings == {"masking": "time", "mask.ratio": "0.6"}


def test_keys_depend_on_semantics_and_seed_only():
    spec = load_spec(ROOT / "experiments.yaml")
    base = spec.baseline
    assert trial_key(base, 0) == trial_key(base, 0)
    assert trial_key(base, 0) != trial_key(base, 1)
    quieter = dataclasses.replace(base, train=dataclasses.replace(base.train, log_every=99))
    moved = dataclasses.replace(base, data=dataclasses.replace(base.data, cache="/elsewhere"))
    assert trial_key(quieter, 0) == trial_key(moved, 0) == trial_key(base, 0)
    longer = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=301))
    assert trial_key(longer, 0) != trial_key(base, 0)


def test_adding_a_value_keeps_existing_keys():
    small = spec_with(axes=(Axis("masking", "mask.strategy", ("time",)),))
    big = spec_with(axes=(Axis("masking", "mask.strategy", ("time", "frequency")),))
    assert {t.key for t in expand(small)} < {t.key for t in expand(big)}
