"""`abl probe`: the probe stage on its own: frozen encoders scored on tasks, no training.

For a study, every finished trial and reference is probed on the tasks asked for, from its
checkpoint; scores a trial already has are read back, new ones are added to its row in the
results table and to its MLflow run (as when a task is added to `probe.tasks`). For one
checkpoint or export, its encoder is scored with the probe settings it was trained with.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from db import queries
from model.config import TaskDef
from model.data.datasets import prepare_task
from model.embed import ENCODERS, load_encoder
from model.errors import AblError
from orchestrator.bank import DataBank
from orchestrator.grid import expand
from orchestrator.prepare import prepare_study
from orchestrator.probing import encoder_features, probe_finished, score
from orchestrator.references import run_references
from orchestrator.spec import StudySpec, validate_recipe, with_value
from orchestrator.study import Log, open_study

COLUMNS = ["trial", "key", "seed", "task", "accuracy", "macro_f1", "val_accuracy"]


def probe_study(spec: StudySpec, tasks: list[str], log: Log) -> pd.DataFrame:
    """Every finished trial and reference of the study scored on `tasks`: one row per trial
    and task."""
    base = spec.baseline
    # Tasks checked as if listed in probe.tasks: known, labelled, not pretraining audio
    # under cross-validation.
    validate_recipe(_with_tasks(base, tasks), "--task, added to baseline.", spec.source)
    _check_finished(spec)
    # Storage, output folder and data roots checked, and the tasks prepared, as `abl run` does.
    prepare_study(_spec_with_tasks(spec, tasks), log)
    st = open_study(spec)
    trials = [dataclasses.replace(t, recipe=_with_tasks(t.recipe, tasks)) for t in expand(spec)]
    probe_finished(st, trials, log)
    # The references too (random-init, log-mel statistics): a finished one gains the tasks.
    run_references(dataclasses.replace(st, spec=_spec_with_tasks(spec, tasks)), log)
    df = queries.results_frame(st.engine, spec.study)
    df = df[(df["status"] == "done") & df["task"].isin(tasks)]
    keys = {t.key for t in trials}
    df = df[df["key"].isin(keys) | (df["axis"] == "reference")]
    if df.empty:
        raise AblError(
            f"{spec.source}: study {spec.study!r} has no finished trial to probe; run "
            "`abl run` first"
        )
    wide = df.pivot_table(
        index=["axis", "setting", "key", "seed", "task"], columns="metric", values="value"
    ).reset_index()
    wide["trial"] = wide["axis"] + "=" + wide["setting"]
    return wide.reindex(columns=COLUMNS).sort_values(["task", "trial", "seed"], ignore_index=True)


def _check_finished(spec: StudySpec) -> None:
    """A study with no finished trial is an AblError naming the file, before anything is
    created: probing it would score its references alone, in a new output folder."""
    from sqlalchemy import inspect

    from db.engine import init_db, make_engine, mask_url
    from orchestrator.prepare import check_storage, never_ran

    url = spec.results_url
    where = spec.output if spec.storage.results is None else mask_url(url)
    none = AblError(
        f"{spec.source}: study {spec.study!r} has no finished trials in {where}; run "
        f"`abl run {spec.source}` first"
    )
    if never_ran(spec):
        raise none
    check_storage(spec, ("results",))  # a server that does not answer: one line, at once
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("trials"):
            raise none
        init_db(engine)  # an older schema, upgraded as every command that reads it does
        if not queries.status_counts(engine, spec.study)["done"]:
            raise none
    finally:
        engine.dispose()


def _with_tasks(recipe, tasks: list[str]):  # noqa: ANN001, ANN202
    return with_value(recipe, "probe.tasks", tuple(dict.fromkeys([*recipe.probe.tasks, *tasks])))


def _spec_with_tasks(spec: StudySpec, tasks: list[str]) -> StudySpec:
    return dataclasses.replace(spec, baseline=_with_tasks(spec.baseline, tasks))


def probe_checkpoint(
    path: Path,
    tasks: list[str],
    encoder: str,
    root: Path,
    declared: tuple[TaskDef, ...],
    log: Log,
) -> pd.DataFrame:
    """One encoder (a trial checkpoint or an export) scored on `tasks` with the probe
    settings of the recipe it was trained with."""
    if encoder not in ENCODERS:
        raise AblError(f"--encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
    enc = load_encoder(path, encoder)
    recipe = with_value(enc.recipe, "probe.tasks", tuple(tasks))
    names = {t.name for t in declared}
    own = (*declared, *(t for t in recipe.data.tasks if t.name not in names))
    recipe = with_value(recipe, "data.tasks", own)
    leaked = sorted(set(tasks) & set(recipe.data.corpus))
    if leaked and recipe.probe.protocol == "cv":
        recipe = with_value(recipe, "probe.protocol", "split")
        log(
            f"{path}: {leaked[0]} was pretraining audio of this encoder; scored on its fixed "
            "test split (probe.protocol: split), not by cross-validation"
        )
    validate_recipe(recipe, "--task, as the checkpoint's ", str(path))
    for name in tasks:
        prepare_task(name, root, log=log, custom=declared)  # at once when prepared already
    bank = DataBank(root, declared)
    scores = score(encoder_features(enc.vit, recipe, enc.norm), recipe, bank)
    rows = []
    for task in tasks:
        rows.append(
            {
                "trial": Path(path).name,
                "key": "",
                "seed": math.nan,
                "task": task,
                **{m: scores.metrics[(task, m)] for m in ("accuracy", "macro_f1", "val_accuracy")},
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
