"""Grid expansion and content keys."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from model.config import RecipeConfig, TaskDef
from orchestrator.grid import NON_SEMANTIC, axis_choices, expand, pretrain_key, trial_key
from orchestrator.spec import Axis, load_spec

ROOT = Path(__file__).resolve().parents[1]


def spec_with(**changes):
    """The repo's study made one-factor-at-a-time over seed 0, with `changes`."""
    changes = {"design": "ofat", "crossed": (), "seeds": (0,), **changes}
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


def _other(value):
    """A different value of the same type (the key does not validate it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        return 3
    if isinstance(value, tuple):
        return (_other(value[0]), *value[1:]) if value else ("x",)
    raise TypeError(value)


SETTINGS = [
    (section.name, f.name)
    for section in dataclasses.fields(RecipeConfig)
    for f in dataclasses.fields(typing.get_type_hints(RecipeConfig)[section.name])
    if (section.name, f.name) != ("data", "tasks")  # declared data sets: a test of its own
]


def _moved(recipe: RecipeConfig, section: str, name: str) -> RecipeConfig:
    part = getattr(recipe, section)
    changed = dataclasses.replace(part, **{name: _other(getattr(part, name))})
    return dataclasses.replace(recipe, **{section: changed})


@pytest.mark.parametrize(("section", "name"), SETTINGS, ids=[f"{s}.{n}" for s, n in SETTINGS])
def test_each_setting_in_the_key_changes_it_and_each_left_out_does_not(section, name):
    """Bookkeeping changes neither key; a probe setting changes the trial's key but not its
    pretraining's, except the tasks, which change neither (results are kept per task);
    everything else changes both."""
    base = load_spec(ROOT / "experiments.yaml").baseline
    moved = _moved(base, section, name)
    assert moved != base
    data = {n: f"content-of-{n}" for n in (*base.data.corpus, *base.probe.tasks)}
    same_trial = trial_key(moved, 0, data) == trial_key(base, 0, data)
    same_pretraining = pretrain_key(moved, 0, data) == pretrain_key(base, 0, data)
    if (section, name) in NON_SEMANTIC or (section, name) == ("probe", "tasks"):
        assert same_trial and same_pretraining
    elif section == "probe":
        assert not same_trial and same_pretraining
    else:
        assert not same_trial and not same_pretraining


def test_settings_left_out_of_the_key_are_the_bookkeeping_ones():
    assert NON_SEMANTIC >= {
        ("data", "cache"),
        ("train", "log_every"),
        ("train", "eval_every"),
        ("train", "checkpoint_every"),
        ("probe", "batch_size"),
        ("probe", "knn_clips"),
    }


def test_a_data_set_is_keyed_by_its_content_not_its_name_declaration_or_folder():
    base = load_spec(ROOT / "experiments.yaml").baseline
    mine = TaskDef("mine", "folder", "/data/mine")

    def declared(*tasks, corpus=base.data.corpus):
        return dataclasses.replace(
            base, data=dataclasses.replace(base.data, tasks=tasks, corpus=corpus)
        )

    data = {n: f"content-of-{n}" for n in base.data.corpus} | {"mine": "abc", "ours": "abc"}
    moved = dataclasses.replace(mine, root="/elsewhere/mine")
    other = dataclasses.replace(mine, options='{"exclude": ["x"]}')
    corpus = (*base.data.corpus, "mine")
    key = pretrain_key(declared(mine, corpus=corpus), 0, data)
    # Moving a data set, or declaring it otherwise with the same prepared audio, is not a
    # different computation; nor is its name.
    assert pretrain_key(declared(moved, corpus=corpus), 0, data) == key
    assert pretrain_key(declared(other, corpus=corpus), 0, data) == key
    ours = dataclasses.replace(mine, name="ours")
    assert pretrain_key(declared(ours, corpus=(*base.data.corpus, "ours")), 0, data) == key
    # Other audio under the same name and declaration is.
    assert pretrain_key(declared(mine, corpus=corpus), 0, data | {"mine": "abd"}) != key
    # A data set only probed is not part of what is pretrained, nor of the trial key (its
    # scores are kept per task, with its content).
    assert trial_key(declared(mine), 0, data) == trial_key(base, 0, data)
    # Not prepared yet: a provisional key, never equal to a prepared one.
    assert pretrain_key(declared(mine, corpus=corpus), 0, {}) != key


def _keys(tmp_path: Path, name: str, **top) -> dict[str, str]:
    """The experiments file with `top` written and loaded: each trial's label -> key."""
    folder = tmp_path / name
    folder.mkdir()
    return {t.label: t.key for t in expand(load_spec(write_spec(folder, **top)))}


def test_editing_one_axis_value_changes_only_its_cells_keys(tmp_path):
    axes = {"mask.ratio": [0.4, 0.8], "train.lr": [0.002]}
    before = _keys(tmp_path, "a", axes=axes, seeds=[0, 1])
    after = _keys(tmp_path, "b", axes={**axes, "mask.ratio": [0.4, 0.7]}, seeds=[0, 1])
    assert len(before) == len(after) == 8
    same = {k for k in before if k in after and before[k] == after[k]}
    assert set(before) - same == {"mask.ratio=0.8 seed=0", "mask.ratio=0.8 seed=1"}
    assert set(after) - same == {"mask.ratio=0.7 seed=0", "mask.ratio=0.7 seed=1"}
    # A setting left out of the key, edited in the baseline, changes no key at all.
    raw = yaml.safe_load((ROOT / "experiments.yaml").read_text())["baseline"]
    raw["train"]["log_every"] = 5
    raw["probe"]["batch_size"] = 7
    quiet = _keys(tmp_path, "c", axes=axes, seeds=[0, 1], baseline=raw)
    assert quiet == before
    # One that is in it changes every key.
    raw["train"]["weight_decay"] = 0.01
    heavier = _keys(tmp_path, "d", axes=axes, seeds=[0, 1], baseline=raw)
    assert not set(heavier.values()) & set(before.values())


def test_adding_a_value_keeps_existing_keys():
    small = spec_with(axes=(Axis("masking", "mask.strategy", ("time",)),))
    big = spec_with(axes=(Axis("masking", "mask.strategy", ("time", "frequency")),))
    assert {t.key for t in expand(small)} < {t.key for t in expand(big)}


def write_spec(tmp_path: Path, **top) -> Path:
    """The repo's experiments file made one-factor-at-a-time over seed 0, with top-level keys
    replaced (None deletes a key)."""
    raw = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    for key, value in {"design": "ofat", "crossed": None, "seeds": [0], **top}.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_repo_file_expands_to_two_masking_cells_over_five_seeds():
    spec = load_spec(ROOT / "experiments.yaml")
    assert spec.design == "ofat" and spec.configs == () and spec.crossed == ()
    trials = expand(spec)
    assert [(t.seed, t.axis, t.setting) for t in trials] == [
        (s, a, v) for s in range(5) for a, v in (("baseline", "baseline"), ("masking", "time"))
    ]
    assert {t.recipe.mask.strategy for t in trials} == {"unstructured", "time"}
    # The first cell is the baseline recipe itself.
    assert trials[0].key == trial_key(spec.baseline, 0, trials[0].contents)


def test_factorial_crosses_every_value_of_every_axis(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path,
            design="factorial",
            seeds=[0, 1],
            axes={
                "masking": {"path": "mask.strategy", "values": ["time", "frequency"]},
                "mask.ratio": [0.4, 0.8],
                "target.branch": ["targets-only", "full-input"],
            },
        )
    )
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 2 * 2  # the cross, once per seed
    assert len({t.key for t in trials}) == len(trials)
    assert {t.axis for t in trials} == {"factorial"}
    first = trials[0]
    assert first.setting == "masking=time,mask.ratio=0.4,target.branch=targets-only"
    assert first.settings == {
        "masking": "time",
        "mask.ratio": "0.4",
        "target.branch": "targets-only",
    }
    # The baseline's own values (unstructured, 0.6) are not listed, so it is no cell.
    assert all(t.recipe != spec.baseline for t in trials)
    combos = {(t.recipe.mask.strategy, t.recipe.mask.ratio, t.recipe.target.branch) for t in trials}
    assert len(combos) == 8
    assert {t.seed for t in trials} == {0, 1}
    choices = axis_choices(spec)
    for t in trials:
        assert t.settings.keys() == choices.keys()
        assert all(v in choices[k] for k, v in t.settings.items())


def test_factorial_crossed_keeps_other_axes_at_the_baseline(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path,
            design="factorial",
            axes={
                "masking": {"path": "mask.strategy", "values": ["unstructured", "time"]},
                "mask.ratio": [0.4, 0.6],
                "target.norm": ["none", "batch"],
            },
            crossed=["masking", "mask.ratio"],
        )
    )
    assert [a.name for a in spec.crossed_axes] == ["masking", "mask.ratio"]
    trials = expand(spec)
    assert len(trials) == 4
    assert {t.recipe.target.norm for t in trials} == {spec.baseline.target.norm}
    assert {t.settings["target.norm"] for t in trials} == {"layer"}
    # Both baseline values are listed, so the baseline is one of the cells.
    assert trial_key(spec.baseline, 0, trials[0].contents) in {t.key for t in trials}


def test_factorial_validates_cells_not_values_beside_the_baseline(tmp_path):
    # 128 wide with the baseline's 3 heads is impossible, but that pair is never run.
    spec = load_spec(
        write_spec(
            tmp_path,
            design="factorial",
            axes={"encoder.width": [128, 256], "encoder.heads": [4, 8]},
        )
    )
    assert len(expand(spec)) == 4


LIST_CONFIGS = [
    {"name": "ijepa-like", "mask.strategy": "multiblock", "target.branch": "full-input"},
    {"name": "m2d-like", "mask.strategy": "unstructured", "mask.ratio": 0.7},
    {"encoder.patch": [16, 8]},
]


def test_list_runs_the_baseline_and_each_entry(tmp_path):
    spec = load_spec(write_spec(tmp_path, design="list", axes=None, configs=LIST_CONFIGS))
    assert [a.name for a in spec.axes] == [
        "mask.strategy",
        "target.branch",
        "mask.ratio",
        "encoder.patch",
    ]
    trials = expand(spec)
    assert [(t.axis, t.setting) for t in trials] == [
        ("baseline", "baseline"),
        ("config", "ijepa-like"),
        ("config", "m2d-like"),
        ("config", "encoder.patch=16x8"),
    ]
    ijepa = trials[1]
    assert ijepa.recipe.mask.strategy == "multiblock"
    assert ijepa.recipe.target.branch == "full-input"
    assert ijepa.recipe.mask.ratio == spec.baseline.mask.ratio
    assert ijepa.settings == {
        "mask.strategy": "multiblock",
        "target.branch": "full-input",
        "mask.ratio": "0.6",
        "encoder.patch": "16x16",
    }
    assert trials[3].recipe.encoder.patch == (16, 8)  # coerced to a tuple like axis values
    assert isinstance(trials[2].recipe.mask.ratio, float)
    choices = axis_choices(spec)
    assert choices["mask.strategy"] == ["unstructured", "multiblock"]
    for t in trials:
        assert t.settings.keys() == choices.keys()
        assert all(v in choices[k] for k, v in t.settings.items())


def test_the_same_cell_has_the_same_key_in_every_design(tmp_path):
    ofat = expand(load_spec(write_spec(tmp_path, seeds=[0, 1], axes={"mask.ratio": [0.7]})))
    fact = expand(
        load_spec(
            write_spec(
                tmp_path,
                seeds=[0, 1],
                design="factorial",
                axes={
                    "mask.ratio": [0.7],
                    "masking": {"path": "mask.strategy", "values": ["unstructured"]},
                },
            )
        )
    )
    lst = expand(
        load_spec(
            write_spec(
                tmp_path,
                seeds=[0, 1],
                design="list",
                axes=None,
                configs=[{"name": "m2d-like", "mask.ratio": 0.7, "mask.strategy": "unstructured"}],
            )
        )
    )
    cell = {t.key for t in ofat if t.axis == "mask.ratio"}
    assert len(cell) == 2  # one per seed
    assert cell == {t.key for t in fact} == {t.key for t in lst if t.axis == "config"}
    base = {t.key for t in ofat if t.axis == "baseline"}
    assert base == {t.key for t in lst if t.axis == "baseline"}


def test_seeds_multiply_every_design(tmp_path):
    for top in (
        {"design": "ofat"},
        {
            "design": "factorial",
            "axes": {"mask.ratio": [0.4, 0.8], "target.norm": ["none", "batch"]},
        },
        {"design": "list", "axes": None, "configs": LIST_CONFIGS},
    ):
        one = expand(load_spec(write_spec(tmp_path, seeds=[0], **top)))
        three = expand(load_spec(write_spec(tmp_path, seeds=[0, 1, 2], **top)))
        assert len(three) == 3 * len(one)
        assert len({t.key for t in three}) == len(three)
        assert [t.seed for t in three] == [s for s in (0, 1, 2) for _ in one]


def test_cells_with_the_same_key_run_once():
    # log_every changes how a trial reports, not what it computes: both values are one cell.
    spec = spec_with(
        design="factorial",
        axes=(
            Axis("train.log_every", "train.log_every", (10, 20)),
            Axis("mask.ratio", "mask.ratio", (0.4,)),
        ),
        seeds=(0, 1),
    )
    trials = expand(spec)
    assert len(trials) == 2
    assert [t.setting for t in trials] == ["train.log_every=10,mask.ratio=0.4"] * 2


def test_optuna_params_take_every_design_settings(tmp_path):
    """The ledger fixes each trial's settings at enqueue time and records them against
    `axis_choices`: every value must be among its axis' choices or Optuna drops it."""
    import warnings

    from orchestrator.ledger import Ledger

    for design, top in (
        ("factorial", {"axes": {"mask.ratio": [0.4, 0.8], "target.norm": ["none"]}}),
        ("list", {"axes": None, "configs": LIST_CONFIGS}),
    ):
        spec = load_spec(write_spec(tmp_path, design=design, **top))
        trials = expand(spec)
        # One storage (its schema is the slow part), one Optuna study per design.
        ledger = Ledger(f"sqlite:///{tmp_path / 'optuna.db'}", f"{spec.study}-{design}")
        ledger.sync(trials, spec.max_attempts)
        by_key = {t.key: t for t in trials}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an out-of-range fixed param only warns
            while (claim := ledger.claim()) is not None:
                ledger.record_params(claim, by_key[claim.key].settings, axis_choices(spec))
                ledger.complete(claim, 0.5)
        recorded = {t.user_attrs["key"]: t.params for t in ledger.study.get_trials()}
        assert recorded == {k: t.settings for k, t in by_key.items()}
