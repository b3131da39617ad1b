"""Keys stay stable across versions (docs/keys.md): a results database written by the release
that introduced key version 3 keeps its keys under this one, a recipe field added later needs a
neutral value, and data enters keys by its content, never by where it lives."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import typing
from pathlib import Path

from db.engine import init_db, make_engine
from model.config import RecipeConfig, recipe_from_dict
from orchestrator.grid import KEY_NEUTRAL, NON_SEMANTIC, pretrain_key, trial_key

DATA = Path(__file__).resolve().parent / "data"
DB = DATA / "results-v3.db"

# Every recipe field of key version 3 (the same as version 2's). Add a field to the recipe and
# this list stays as it is: the new field goes into KEY_NEUTRAL with the value that computes
# what trials computed before it existed (or, if no value does, the key version changes, on
# purpose, in docs/keys.md).
KEYED_V3 = """
frontend.sample_rate frontend.n_fft frontend.hop frontend.n_mels frontend.f_min frontend.f_max
frontend.eps frontend.frames data.cache data.corpus data.sampling data.max_clips_per_class
data.tasks encoder.patch encoder.depth encoder.width encoder.heads encoder.mlp_ratio
predictor.depth predictor.width predictor.heads predictor.mlp_ratio mask.strategy mask.ratio
mask.target_blocks mask.block_scale mask.block_aspect mask.context_scale mask.overlap
mask.curriculum mask.curriculum_end mask.per_crop target.branch target.norm target.top_k
loss.kind loss.var_weight loss.cov_weight train.steps train.batch_size train.lr
train.weight_decay train.warmup_steps train.ema_start train.ema_end train.precision
train.log_every train.eval_every train.checkpoint_every probe.tasks probe.encoder
probe.protocol probe.folds probe.layers probe.c_grid probe.batch_size probe.knn_clips
""".split()


def _fields() -> list[str]:
    return [
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(RecipeConfig)
        for f in dataclasses.fields(typing.get_type_hints(RecipeConfig)[s.name])
    ]


def test_every_recipe_field_is_keyed_since_v3_or_has_a_neutral_value():
    fields = _fields()
    later = [f for f in fields if f not in KEYED_V3]
    assert not [f for f in later if f not in KEY_NEUTRAL], (
        "a recipe field added after key version 3 needs its neutral value in "
        "orchestrator.grid.KEY_NEUTRAL (see docs/keys.md)"
    )
    assert set(KEY_NEUTRAL) <= set(fields)
    assert not set(KEY_NEUTRAL) & {f"{s}.{n}" for s, n in NON_SEMANTIC}


def test_a_neutral_value_hashes_as_if_the_field_were_absent(monkeypatch):
    """The mechanism, on a field that exists today: declared neutral at its default, it drops
    out of the hash, and any other value is keyed."""
    base = RecipeConfig()
    key = trial_key(base, 0, {})
    monkeypatch.setitem(KEY_NEUTRAL, "mask.per_crop", 1)
    assert trial_key(base, 0, {}) != key  # the field left the hash
    more = dataclasses.replace(base, mask=dataclasses.replace(base.mask, per_crop=2))
    assert trial_key(more, 0, {}) not in (key, trial_key(base, 0, {}))


def _counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    tables = ("trials", "metrics", "curve_points", "predictions")
    counts = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
    con.close()
    return counts


def _upgrade_keeps_every_row(db: Path) -> None:
    counts = _counts(db)
    engine = make_engine(f"sqlite:///{db}")
    init_db(engine)
    engine.dispose()
    assert _counts(db) == counts


def test_a_results_database_of_key_version_3_keeps_its_keys(tmp_path):
    db = tmp_path / "results.db"
    shutil.copy(DB, db)
    con = sqlite3.connect(db)
    rows = con.execute(
        "select key, pretrain, seed, config_json, data_json from trials where axis != 'reference'"
    ).fetchall()
    con.close()
    assert len(rows) == 6 and len({r[1] for r in rows}) == 4  # two share a pretraining
    for key, pretrain, seed, config_json, data_json in rows:
        recipe = recipe_from_dict(json.loads(config_json))
        data = json.loads(data_json)
        assert set(recipe.data.corpus) <= set(data)  # what it pretrained on, by content
        assert trial_key(recipe, seed, data) == key
        assert pretrain_key(recipe, seed, data) == pretrain
        # Moving its data elsewhere changes nothing; other audio under its name does.
        moved = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, cache="/x"))
        assert trial_key(moved, seed, data) == key
        changed = {n: c[::-1] for n, c in data.items()}
        assert trial_key(recipe, seed, changed) != key
    _upgrade_keeps_every_row(db)


def test_a_results_database_of_key_version_2_upgrades_with_every_row_kept(tmp_path):
    """Version 2 keyed a data set by its name and declaration. Its rows are kept and its
    reports read; running its study again trains anew under version 3 (docs/keys.md)."""
    db = tmp_path / "results.db"
    shutil.copy(DATA / "results-v2.db", db)
    _upgrade_keeps_every_row(db)
