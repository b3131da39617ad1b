"""The probe stage: frozen encoders' clip embeddings scored on every probe task (cross-validated
or on the fixed splits), and finished trials probed on tasks added since they ran.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from db import queries
from model.config import RecipeConfig
from model.data.datasets import Clip
from model.data.features import FeatureSet, Normalizer
from model.embed import load_encoder
from model.errors import AblError
from model.probe import cv_folds, embed_clips, linear_probe, repeated_cv_probe
from model.vit import ViT
from orchestrator.bank import DataBank
from orchestrator.grid import TrialSpec
from orchestrator.spec import with_value
from orchestrator.study import Log, Study


@dataclass(frozen=True)
class TaskPredictions:
    """Per-clip test predictions of one task, for the results database: `clips` index the
    task's labelled clips sorted by file (Bank.clips(task, "all")), `groups` index its sorted
    groups, so two trials' predictions pair clip by clip."""

    clips: np.ndarray  # (n,) int
    groups: np.ndarray  # (n,) int
    folds: np.ndarray  # (n,) int
    truth: np.ndarray  # (n,) str
    pred: np.ndarray  # (n,) str
    repeats: np.ndarray | None = None  # (n,) int: the draw of the folds (repeated CV); None: one


@dataclass
class ProbeScores:
    metrics: dict[tuple[str, str], float] = field(default_factory=dict)
    seconds: float = 0.0
    embed_s: float = 0.0  # of which computing embeddings
    predictions: dict[str, TaskPredictions] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        accs = [v for (_, m), v in self.metrics.items() if m == "accuracy"]
        return float(np.mean(accs)) if accs else float("nan")


Features = Callable[[FeatureSet, str], np.ndarray]  # (feature set, "task-split") -> (n, dim)


def task_folds(
    bank: DataBank, task: str, limit: int | None, k: int, draws: int = 1
) -> list[np.ndarray]:
    """The cross-validation fold of each labelled clip of `task` (DataBank.clips order), in
    each of `draws` draws of the folds."""
    clips = bank.clips(task, "all", limit)
    labels = np.asarray([c.label for c in clips])
    groups = np.asarray([c.group for c in clips])
    try:
        return [cv_folds(labels, groups, k, d) for d in range(draws)]
    except ValueError as e:
        raise AblError(
            f"task {task!r}: {e}; lower probe.folds or use probe.protocol: split"
        ) from None


def _indices(clips: list[Clip], all_clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    """(clip index, group index) of `clips` within the task's labelled clips."""
    pos = {c.file: i for i, c in enumerate(all_clips)}
    group_ids = {g: i for i, g in enumerate(sorted({c.group for c in all_clips}))}
    return (
        np.asarray([pos[c.file] for c in clips], np.int64),
        np.asarray([group_ids[c.group] for c in clips], np.int64),
    )


def score(features_of: Features, recipe: RecipeConfig, bank: DataBank) -> ProbeScores:
    """Probe every task of the recipe with clip features from `features_of`, by the recipe's
    protocol: cross-validation over every labelled clip (`cv`) or the fixed splits (`split`)."""
    t0 = time.perf_counter()
    out = ProbeScores()
    limit = recipe.data.max_clips_per_class
    pc = recipe.probe
    for task in pc.tasks:
        t_embed = time.perf_counter()
        all_clips = bank.clips(task, "all", limit)
        if pc.protocol == "cv":
            fs = bank.features(task, "all", recipe.frontend, limit)
            x = features_of(fs, f"{task}-all")
            out.embed_s += time.perf_counter() - t_embed
            draws = task_folds(bank, task, limit, pc.folds, pc.repeats)
            r = repeated_cv_probe(x, list(fs.labels), draws, pc.c_grid, pc.tolerance)
            tested = all_clips * pc.repeats
        else:
            xs, ys = [], []
            for split in ("train", "val", "test"):
                fs = bank.features(task, split, recipe.frontend, limit)
                xs.append(features_of(fs, f"{task}-{split}"))
                ys.append(list(fs.labels))
            out.embed_s += time.perf_counter() - t_embed
            r = linear_probe(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], pc.c_grid, pc.tolerance)
            tested = bank.clips(task, "test", limit)
        assert r.predictions is not None
        clip_ids, group_ids = _indices(tested, all_clips)
        p = r.predictions
        out.predictions[task] = TaskPredictions(
            clip_ids, group_ids, p.folds, p.truth, p.pred, p.repeats
        )
        out.metrics[(task, "accuracy")] = r.accuracy
        out.metrics[(task, "macro_f1")] = r.macro_f1
        out.metrics[(task, "val_accuracy")] = r.val_accuracy
        out.metrics[(task, "c")] = r.c
    out.seconds = time.perf_counter() - t0
    return out


def encoder_features(
    encoder: ViT, recipe: RecipeConfig, norm: Normalizer, cache: Path | None = None
) -> Features:
    """Clip embeddings of a frozen encoder; with `cache`, each (task, split) is computed once
    per checkpoint and kept there as .npy (a retried or re-scored trial reads them back)."""

    def f(fs: FeatureSet, name: str) -> np.ndarray:
        path = cache / f"{name}-{fs.key}.npy" if cache is not None else None
        if path is not None and path.is_file():
            return np.load(path)
        pc = recipe.probe
        x = embed_clips(encoder, fs, norm, recipe.frontend.frames, pc.batch_size, pc.layers)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.partial-{os.getpid()}.npy")
            np.save(tmp, x)
            os.replace(tmp, path)
        return x

    return f


def probed_encoder(model, recipe: RecipeConfig) -> ViT:  # noqa: ANN001
    return model.encoder if recipe.probe.encoder == "context" else model.target_encoder


def missing_tasks(
    recipe: RecipeConfig, have: queries.Probed | None, contents: dict[str, str]
) -> tuple[str, ...]:
    """The probe tasks of `recipe` a finished row has no score for (all of them without a
    row), or whose data has changed since it was scored (its content hash differs)."""

    def stale(task: str) -> bool:
        then, now = have.tasks.get(task), contents.get(task)
        return then is not None and now is not None and then != now

    return tuple(t for t in recipe.probe.tasks if have is None or t not in have.tasks or stale(t))


def record_scores(
    st: Study, have: queries.Probed, scores: ProbeScores, label: str, contents: dict, log: Log
) -> None:
    tasks = {t for t, _ in scores.metrics}
    data = {t: c for t, c in contents.items() if t in tasks}
    queries.add_scores(st.engine, have.row, scores.metrics, scores.predictions, data)
    if have.run:
        metrics = [(f"{t}.{m}", v, 0) for (t, m), v in scores.metrics.items()]
        st.tracker.log_metrics(have.run, metrics)
    accs = ", ".join(f"{t} {v:.3f}" for (t, m), v in scores.metrics.items() if m == "accuracy")
    changed = [t for t in tasks if have.tasks.get(t) not in (None, data.get(t))]
    what = "new or changed" if changed else "new"
    log(f"  probed {label} on its {what} task(s): accuracy {accs}")


def probe_finished(st: Study, trials: list[TrialSpec], log: Log) -> int:
    """Probe the study's finished trials, from their checkpoints, on the tasks of their
    probe.tasks they have no score for (tasks added since they ran) or whose data changed
    since: nothing is retrained. Scores go to the trial's row and MLflow run. Returns how many
    trials were probed."""
    have = queries.probed_tasks(st.engine, st.spec.study)
    n = 0
    for trial in trials:
        if trial.key not in have:
            continue  # not finished: its run probes every task
        missing = missing_tasks(trial.recipe, have[trial.key], trial.contents)
        if not missing:
            continue
        ckpt = st.checkpoints / f"{trial.pretrain}.pt"
        if not ckpt.is_file():
            log(
                f"  cannot probe {trial.label} on {', '.join(missing)}: its checkpoint "
                f"{ckpt} is gone (restore it, or delete the trial's row to retrain it)"
            )
            continue
        recipe = with_value(trial.recipe, "probe.tasks", missing)
        encoder = load_encoder(ckpt, recipe.probe.encoder).vit
        emb_dir = st.spec.output / "embeddings" / trial.key
        features = encoder_features(encoder, recipe, st.bank.normalizer(recipe), emb_dir)
        scores = score(features, recipe, st.bank)
        record_scores(st, have[trial.key], scores, trial.label, trial.contents, log)
        n += 1
    return n
