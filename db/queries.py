"""Reads and writes of the results table; reads return pandas DataFrames."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from db.engine import session_scope
from db.schema import CurvePoint, Metric, Prediction, Study, Trial

# Scripts and notebooks build on these names: keep them stable.
RESULT_COLUMNS = ["study", "key", "seed", "axis", "setting", "status", "task", "metric", "value"]


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_study(engine: Engine, name: str, spec_json: str) -> int:
    with session_scope(engine) as s:
        study = s.scalar(select(Study).where(Study.name == name))
        if study is None:
            study = Study(name=name, created=now(), spec_json=spec_json)
            s.add(study)
            s.flush()
        else:
            study.spec_json = spec_json
        return study.id


def start_trial(
    engine: Engine,
    study_id: int,
    key: str,
    seed: int,
    axis: str,
    setting: str,
    settings: dict,
    config: dict,
    worker: str,
    optuna_trial: int | None = None,
    mlflow_run_id: str | None = None,
    pretrain: str | None = None,
    data: dict[str, str] | None = None,
) -> int:
    """Insert or reset the trial row for a new attempt; returns its id. `data`: the content
    hash of each data set it reads, by name."""
    with session_scope(engine) as s:
        t = s.scalar(select(Trial).where(Trial.study_id == study_id, Trial.key == key))
        if t is None:
            t = Trial(study_id=study_id, key=key)
            s.add(t)
        t.seed, t.axis, t.setting = seed, axis, setting
        t.settings_json = json.dumps(settings, sort_keys=True)
        t.config_json = json.dumps(config, sort_keys=True)
        t.status, t.error, t.worker = "running", None, worker
        t.optuna_trial, t.started, t.finished, t.wall_s = optuna_trial, now(), None, None
        t.mlflow_run_id = mlflow_run_id
        t.pretrain = pretrain
        t.data_json = json.dumps(data, sort_keys=True) if data is not None else None
        t.metrics.clear()
        t.curves.clear()
        t.predictions.clear()
        s.flush()
        return t.id


def fail_lost(engine: Engine, study_id: int, optuna_trials: list[int], reason: str) -> list[str]:
    """Fail the running rows of attempts whose worker was lost (by their Optuna trial number,
    so a new attempt of the same key is never touched); returns their MLflow run ids."""
    if not optuna_trials:
        return []
    with session_scope(engine) as s:
        rows = s.scalars(
            select(Trial).where(
                Trial.study_id == study_id,
                Trial.optuna_trial.in_(optuna_trials),
                Trial.status == "running",
            )
        ).all()
        for t in rows:
            t.status, t.error, t.finished = "failed", reason, now()
        return [t.mlflow_run_id for t in rows if t.mlflow_run_id]


def finish_trial(
    engine: Engine,
    trial_id: int,
    metrics: dict[tuple[str, str], float],
    wall_s: float,
    mlflow_run_id: str | None,
    error: str | None = None,
    status: str | None = None,
    curves: list[tuple[str, int, float]] = (),
    predictions: dict[str, ClipPredictions] | None = None,
    precision: str | None = None,
    attention: str | None = None,
) -> None:
    """Record the outcome, every metric, the training curves (name, step, value) and the
    per-clip predictions by task in one transaction: all or nothing. The status is done,
    failed (when `error` is given) or what `status` says (pruned). Non-finite curve points (a
    diverged loss) are left out."""
    with session_scope(engine) as s:
        t = s.get_one(Trial, trial_id)
        t.status = status or ("failed" if error else "done")
        t.error, t.wall_s, t.finished, t.mlflow_run_id = error, wall_s, now(), mlflow_run_id
        t.precision, t.attention = precision or None, attention or None
        t.metrics.clear()
        t.curves.clear()
        t.predictions.clear()
        s.flush()
        for task, p in (predictions or {}).items():
            t.predictions.append(_pack(task, p))
        for (task, metric), value in metrics.items():
            t.metrics.append(Metric(task=task, metric=metric, value=float(value)))
        points = {(name, int(step)): float(v) for name, step, v in curves if math.isfinite(v)}
        t.curves.extend(CurvePoint(name=n, step=st, value=v) for (n, st), v in points.items())


def add_scores(
    engine: Engine,
    trial_id: int,
    metrics: dict[tuple[str, str], float],
    predictions: dict[str, ClipPredictions] | None = None,
    data: dict[str, str] | None = None,
) -> None:
    """Add (or replace) probe scores of a finished trial, task by task, in one transaction:
    what probing a finished trial on a task it was not probed on yet (or whose data changed)
    records. `data`: the content hash of each task scored, kept with the row's others."""
    tasks = {task for task, _ in metrics} | set(predictions or {})
    with session_scope(engine) as s:
        t = s.get_one(Trial, trial_id)
        if data:
            t.data_json = json.dumps({**json.loads(t.data_json or "{}"), **data}, sort_keys=True)
        t.metrics[:] = [m for m in t.metrics if m.task not in tasks]
        t.predictions[:] = [p for p in t.predictions if p.task not in tasks]
        s.flush()
        for task, p in (predictions or {}).items():
            t.predictions.append(_pack(task, p))
        for (task, metric), value in metrics.items():
            t.metrics.append(Metric(task=task, metric=metric, value=float(value)))


class Probed(NamedTuple):
    """A finished trial or reference, as `probed_tasks` finds it."""

    row: int
    run: str | None  # its MLflow run
    tasks: dict[str, str | None]  # task with an accuracy -> content hash of its data then


def probed_tasks(engine: Engine, study: str) -> dict[str, Probed]:
    """The study's finished trials and references by key: what each was scored on."""
    stmt = (
        select(Trial.id, Trial.key, Trial.mlflow_run_id, Trial.data_json, Metric.task)
        .join(Study, Trial.study_id == Study.id)
        .outerjoin(Metric, (Metric.trial_id == Trial.id) & (Metric.metric == "accuracy"))
        .where(Study.name == study, Trial.status == "done")
    )
    out: dict[str, Probed] = {}
    with engine.connect() as conn:
        for row_id, key, run, data_json, task in conn.execute(stmt):
            p = out.setdefault(key, Probed(row_id, run, {}))
            if task:
                p.tasks[task] = json.loads(data_json or "{}").get(task)
    return out


class ClipPredictions(Protocol):
    """Per-clip predictions of one task (orchestrator.probing.TaskPredictions has this shape)."""

    clips: np.ndarray
    groups: np.ndarray
    folds: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    repeats: np.ndarray | None  # the draw of the folds of each entry; None: one draw


def _ints(a: np.ndarray) -> bytes:
    return np.asarray(a, "<i4").tobytes()


def _pack(task: str, p: ClipPredictions) -> Prediction:
    classes = sorted({*map(str, p.truth), *map(str, p.pred)})
    index = {c: i for i, c in enumerate(classes)}
    return Prediction(
        task=task,
        classes=json.dumps(classes),
        clips=_ints(p.clips),
        groups=_ints(p.groups),
        folds=_ints(p.folds),
        truth=_ints([index[str(c)] for c in p.truth]),
        pred=_ints([index[str(c)] for c in p.pred]),
        repeats=None if p.repeats is None else _ints(p.repeats),
    )


PREDICTION_COLUMNS = [
    "key",
    "seed",
    "axis",
    "setting",
    "status",
    "task",
    "clip",
    "repeat",
    "fold",
    "group",
    "truth",
    "pred",
]


def predictions_frame(engine: Engine, study: str) -> pd.DataFrame:
    """Per-clip test predictions of a study's trials: one row per trial, task, draw of the
    folds and clip tested, columns PREDICTION_COLUMNS (`clip` and `group` are int indices
    within the task, stable across trials; `repeat` the draw, 0 under one draw; `truth` and
    `pred` class names). Empty for studies run before they were stored."""
    stmt = (
        select(Trial.key, Trial.seed, Trial.axis, Trial.setting, Trial.status, Prediction)
        .join(Prediction, Prediction.trial_id == Trial.id)
        .join(Study, Trial.study_id == Study.id)
        .where(Study.name == study)
        .order_by(Trial.id, Prediction.task)
    )
    parts = []
    with session_scope(engine) as s:
        for key, seed, axis, setting, status, p in s.execute(stmt):
            classes = np.asarray(json.loads(p.classes))
            clips = np.frombuffer(p.clips, "<i4")
            n = len(clips)
            parts.append(
                pd.DataFrame(
                    {
                        "key": [key] * n,
                        "seed": seed,
                        "axis": axis,
                        "setting": setting,
                        "status": status,
                        "task": p.task,
                        "clip": clips.astype(np.int64),
                        "repeat": (
                            np.zeros(n, np.int64)
                            if p.repeats is None
                            else np.frombuffer(p.repeats, "<i4").astype(np.int64)
                        ),
                        "fold": np.frombuffer(p.folds, "<i4").astype(np.int64),
                        "group": np.frombuffer(p.groups, "<i4").astype(np.int64),
                        "truth": classes[np.frombuffer(p.truth, "<i4")],
                        "pred": classes[np.frombuffer(p.pred, "<i4")],
                    }
                )
            )
    if not parts:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(parts, ignore_index=True)[PREDICTION_COLUMNS]


def results_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per trial and metric (trials without metrics keep one row with task None)."""
    stmt = (
        select(
            Study.name.label("study"),
            Trial.key,
            Trial.seed,
            Trial.axis,
            Trial.setting,
            Trial.status,
            Metric.task,
            Metric.metric,
            Metric.value,
            Trial.settings_json,
            Trial.error,
            Trial.wall_s,
            Trial.precision,
            Trial.attention,
            Trial.mlflow_run_id,
            Trial.pretrain,
        )
        .join(Trial, Trial.study_id == Study.id)
        .outerjoin(Metric, Metric.trial_id == Trial.id)
        .order_by(Trial.id, Metric.id)
    )
    if study is not None:
        stmt = stmt.where(Study.name == study)
    with engine.connect() as conn:
        result = conn.execute(stmt)
        df = pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()))
    if df.empty:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "settings_json", "error", "wall_s"])
    return df


def curves_frame(engine: Engine, study: str) -> pd.DataFrame:
    """The training curves of a study's trials: columns key, name, step, value (unordered)."""
    stmt = (
        select(Trial.key, CurvePoint.name, CurvePoint.step, CurvePoint.value)
        .join(Trial, CurvePoint.trial_id == Trial.id)
        .join(Study, Trial.study_id == Study.id)
        .where(Study.name == study)
    )
    with engine.connect() as conn:
        # Plain tuples: pandas builds a frame from 100k Row objects four times slower.
        rows = [tuple(r) for r in conn.execute(stmt)]
    return pd.DataFrame(rows, columns=["key", "name", "step", "value"])


def study_spec(engine: Engine, study: str) -> dict | None:
    """The resolved experiments file a study was last run with (None for an unknown study)."""
    with engine.connect() as conn:
        raw = conn.execute(select(Study.spec_json).where(Study.name == study)).scalar()
    return json.loads(raw) if raw else None


def export_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """The stable export: one row per trial and metric, columns RESULT_COLUMNS first."""
    df = results_frame(engine, study)
    extra = [c for c in ("error", "wall_s") if c in df.columns]
    return df[[*RESULT_COLUMNS, *extra]]


def status_counts(engine: Engine, study: str) -> dict[str, int]:
    """Trials by status (done / running / failed) of a study, references excluded."""
    stmt = (
        select(Trial.status, Trial.wall_s)
        .join(Study, Trial.study_id == Study.id)
        .where(Study.name == study, Trial.axis != "reference")
    )
    counts: dict[str, int] = {"done": 0, "running": 0, "failed": 0}
    with engine.connect() as conn:
        for status, _ in conn.execute(stmt):
            counts[status] = counts.get(status, 0) + 1
    return counts


def mean_trial_seconds(engine: Engine, study: str) -> float | None:
    stmt = (
        select(Trial.wall_s)
        .join(Study, Trial.study_id == Study.id)
        .where(Study.name == study, Trial.status == "done", Trial.axis != "reference")
    )
    with engine.connect() as conn:
        walls = [w for (w,) in conn.execute(stmt) if w is not None]
    return sum(walls) / len(walls) if walls else None
