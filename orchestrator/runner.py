"""Run a study: sync the grid into the Optuna ledger, then claim and run trials until none is
left. Each trial pretrains, probes and records its results in MLflow and the results table."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import Engine
from threadpoolctl import threadpool_limits

from db import queries
from db.engine import init_db, make_engine
from model.config import FrontendConfig, RecipeConfig, TaskDef
from model.datasets import Clip, PreparedTask, load_task, resolve_data_root
from model.embed import clip_embeddings, load_encoder
from model.errors import AblError, no_room
from model.features import CropSampler, FeatureSet, Normalizer, corpus_normalizer, load_features
from model.flops import train_step_flops
from model.probe import cv_folds, cv_probe, embed_clips, knn_accuracy, linear_probe, logmel_stats
from model.train import train
from model.vit import ViT
from orchestrator.grid import (
    TrialSpec,
    axis_choices,
    baseline_settings,
    expand,
    semantic_config,
    study_tasks,
    trial_key,
)
from orchestrator.ledger import LOST, Claim, Ledger
from orchestrator.prepare import check_storage
from orchestrator.signals import stop_handled, stop_on_sigterm
from orchestrator.spec import StudySpec, with_value
from orchestrator.tracking import Tracker, flatten

Log = Callable[[str], None]


class DataBank:
    """Prepared tasks, features and normalisers, loaded once per process."""

    def __init__(self, data_root: Path, custom: tuple[TaskDef, ...] = ()):
        self.root = data_root
        self.custom = custom
        self._tasks: dict[str, PreparedTask] = {}
        self._features: dict[tuple, FeatureSet] = {}
        self._norms: dict[tuple, Normalizer] = {}

    def task(self, name: str) -> PreparedTask:
        if name not in self._tasks:
            self._tasks[name] = load_task(name, self.root, self.custom)
        return self._tasks[name]

    def clips(self, name: str, split: str, limit: int | None) -> list[Clip]:
        """The clips of a split, or with split "all" every labelled clip (each split's slice
        under `limit`), sorted by file: the order cross-validation and stored predictions use."""
        task = self.task(name)
        if split != "all":
            return task.split(split, limit)
        return sorted(
            (c for sp in ("train", "val", "test") for c in task.split(sp, limit)),
            key=lambda c: c.file,
        )

    def features(self, name: str, split: str, fe: FrontendConfig, limit: int | None) -> FeatureSet:
        k = (name, split, fe, limit)
        if k not in self._features:
            clips = self.clips(name, split, limit)
            if not clips:
                raise AblError(f"task {name!r} has no {split} clips; re-run `abl data prepare`")
            self._features[k] = load_features(self.task(name), clips, fe, self.root)
        return self._features[k]

    def corpus(self, recipe: RecipeConfig) -> list[FeatureSet]:
        d = recipe.data
        return [self.features(t, "train", recipe.frontend, d.max_clips_per_class) for t in d.corpus]

    def sampler(self, recipe: RecipeConfig, seed: int) -> CropSampler:
        """Crops of the recipe's pretraining corpus, drawn as `data.sampling` says."""
        return CropSampler(
            self.corpus(recipe),
            recipe.frontend.frames,
            self.normalizer(recipe),
            seed=seed,
            sampling=recipe.data.sampling,
        )

    def normalizer(self, recipe: RecipeConfig) -> Normalizer:
        k = (recipe.data.corpus, recipe.frontend, recipe.data.max_clips_per_class)
        if k not in self._norms:
            self._norms[k] = corpus_normalizer(self.corpus(recipe))
        return self._norms[k]


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


def task_folds(bank: DataBank, task: str, limit: int | None, k: int) -> np.ndarray:
    """The cross-validation fold of each labelled clip of `task` (DataBank.clips order)."""
    clips = bank.clips(task, "all", limit)
    labels = np.asarray([c.label for c in clips])
    groups = np.asarray([c.group for c in clips])
    try:
        return cv_folds(labels, groups, k)
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
            folds = task_folds(bank, task, limit, pc.folds)
            r = cv_probe(x, list(fs.labels), folds, pc.c_grid)
            tested = all_clips
        else:
            xs, ys = [], []
            for split in ("train", "val", "test"):
                fs = bank.features(task, split, recipe.frontend, limit)
                xs.append(features_of(fs, f"{task}-{split}"))
                ys.append(list(fs.labels))
            out.embed_s += time.perf_counter() - t_embed
            r = linear_probe(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], pc.c_grid)
            tested = bank.clips(task, "test", limit)
        assert r.predictions is not None
        clip_ids, group_ids = _indices(tested, all_clips)
        p = r.predictions
        out.predictions[task] = TaskPredictions(clip_ids, group_ids, p.folds, p.truth, p.pred)
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


@contextlib.contextmanager
def pretraining_lock(ckpt: Path) -> Iterator[None]:
    """Trials that share a pretraining (they differ only in the probe) train it one at a
    time: the second waits, then finds the finished checkpoint and trains no step."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with open(ckpt.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def probed_encoder(model, recipe: RecipeConfig) -> ViT:  # noqa: ANN001
    return model.encoder if recipe.probe.encoder == "context" else model.target_encoder


@dataclass
class Study:
    """Everything a worker needs to run trials of one study."""

    spec: StudySpec
    engine: Engine
    ledger: Ledger
    tracker: Tracker
    study_id: int
    parent_run: str
    bank: DataBank
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def checkpoints(self) -> Path:
        return self.spec.output / "checkpoints"


MIN_FREE_MB = 200  # room a study needs to start (ABL_MIN_FREE_MB overrides)


def data_summary(spec: StudySpec, bank: DataBank) -> dict[str, dict]:
    """Per task of the study: its clips, and the clips preparation skipped, by reason
    (unreadable: corrupt, empty or truncated files; silent). A task not prepared yet is
    left out: its first trial stops with the fix."""
    out = {}
    for name in study_tasks(spec):
        try:
            task = bank.task(name)
        except AblError:
            continue
        skipped = {k: int(v) for k, v in (task.meta.get("skipped") or {}).items() if v}
        out[name] = {"clips": len(task.clips), "skipped": skipped}
    return out


def skipped_line(summary: dict[str, dict]) -> str | None:
    """'3 clips skipped in 1 task: mine 2 unreadable, 1 silent', or None when none was."""
    parts = []
    total = 0
    for name, d in sorted(summary.items()):
        if d["skipped"]:
            total += sum(d["skipped"].values())
            parts.append(
                name + " " + ", ".join(f"{n} {why}" for why, n in sorted(d["skipped"].items()))
            )
    if not total:
        return None
    return (
        f"{total} clip{'s' * (total != 1)} skipped in {len(parts)} "
        f"task{'s' * (len(parts) != 1)} when prepared: " + "; ".join(parts)
    )


def open_study(spec: StudySpec) -> Study:
    """Create (once) or reopen the study's output folder, databases and MLflow experiment.
    Database servers are reached first: one that cannot be leaves nothing behind."""
    check_storage(spec)
    created = not spec.output.exists()
    try:
        spec.output.mkdir(parents=True, exist_ok=True)
        probe = spec.output / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise AblError(
            f"{spec.source}: output folder {spec.output} is not writable ({e.strerror}); "
            "choose another with `output:` or --output"
        ) from None
    need_mb = float(os.environ.get("ABL_MIN_FREE_MB", MIN_FREE_MB))
    free_mb = shutil.disk_usage(spec.output).free / 2**20
    if free_mb < need_mb:
        if created:
            spec.output.rmdir()  # leave nothing behind
        raise AblError(
            f"{spec.source}: output folder {spec.output} has {free_mb:.0f} MB free, less than "
            f"the {need_mb:.0f} MB a study needs (databases, checkpoints, reports); free some "
            "space or choose another folder with `output:` or --output"
        )
    ledger = Ledger(spec.optuna_url, spec.study)
    engine = make_engine(spec.results_url)
    init_db(engine)
    bank = DataBank(resolve_data_root(spec.baseline.data.cache), spec.baseline.data.tasks)
    spec_json = json.dumps(
        {
            "study": spec.study,
            "design": spec.design,
            "seeds": list(spec.seeds),
            "axes": [dataclasses.asdict(a) for a in spec.axes],
            "configs": [dataclasses.asdict(c) for c in spec.configs],
            "crossed": list(spec.crossed),
            "baseline": dataclasses.asdict(spec.baseline),
            "baseline_settings": baseline_settings(spec),  # each axis' baseline value, as text
            "data": data_summary(spec, bank),  # clips per task, and those preparation skipped
        },
        sort_keys=True,
        default=str,
    )
    study_id = queries.ensure_study(engine, spec.study, spec_json)
    tracker = Tracker(spec.mlflow_uri, spec.study, spec.output / "mlartifacts")
    parent = tracker.study_run(spec.study)
    resolved = spec.output / f"{spec.study}.resolved.json"
    changed = not resolved.is_file() or resolved.read_text() != spec_json
    if changed or not tracker.has_artifact(parent, resolved.name):
        # Once per version of the study, not once per worker that opens it.
        resolved.write_text(spec_json)
        tracker.log_artifact(parent, resolved)  # the validated study, storage URLs left out
    return Study(spec, engine, ledger, tracker, study_id, parent, bank)


def run_trial(st: Study, trial: TrialSpec, claim: Claim | None, log: Log) -> bool:
    """Pretrain, probe and record one trial; returns True when it finished."""
    recipe = trial.recipe
    config = semantic_config(recipe)
    tags = {
        "abl.role": "trial",
        "abl.study": st.spec.study,
        "abl.key": trial.key,
        "abl.seed": str(trial.seed),
        "abl.axis": trial.axis,
        "abl.setting": trial.setting,
    }
    tags.update({f"abl.axis.{k}": v for k, v in trial.settings.items()})
    run_id = st.tracker.start_run(trial.label, st.parent_run, tags, flatten(config))
    row = queries.start_trial(
        st.engine,
        st.study_id,
        trial.key,
        trial.seed,
        trial.axis,
        trial.setting,
        trial.settings,
        config,
        st.worker,
        claim.number if claim else None,
        run_id,
        trial.pretrain,
    )
    if claim is not None:
        st.ledger.record_params(claim, trial.settings, axis_choices(st.spec))
    t0 = time.perf_counter()
    knn: list[tuple[str, int, float]] = []  # the intermediate k-NN curve, for the reports
    try:
        sampler = st.bank.sampler(recipe, trial.seed)
        data_s = time.perf_counter() - t0
        # The training state is checkpointed under the pretraining's key: a retried attempt
        # (after a crash or Ctrl-C) resumes where the last checkpoint left it, and a trial that
        # differs from a finished one only in its probe settings trains no step.
        ckpt = st.checkpoints / f"{trial.pretrain}.pt"
        with pretraining_lock(ckpt):
            model, result = train(
                recipe,
                sampler,
                trial.seed,
                on_log=progress_bar(recipe.train.steps, recipe.train.batch_size),
                on_eval=(
                    intermediate_probe(st, trial, claim, run_id, knn)
                    if recipe.train.eval_every
                    else None
                ),
                checkpoint=ckpt,
            )
        if result.resumed_from >= recipe.train.steps:
            log(f"  {trial.label}: its pretraining ({trial.pretrain[:10]}) is done; probing it")
        elif result.resumed_from:
            log(f"  resumed {trial.label} from its checkpoint at step {result.resumed_from}")
        curves = [
            (k, v, int(rec["step"]))
            for rec in result.history
            for k, v in rec.items()
            if k != "step"
        ]
        st.tracker.log_metrics(run_id, curves)
        if result.failed:
            raise TrialFailed(result.failed)
        if result.stopped:
            return _pruned(st, trial, claim, run_id, row, result, time.perf_counter() - t0, log)
        # A stale cache from an attempt whose weights were not final is dropped first.
        emb_dir = st.spec.output / "embeddings" / trial.key
        if result.resumed_from < recipe.train.steps:  # 0 when trained from scratch
            shutil.rmtree(emb_dir, ignore_errors=True)
        scores = score(
            encoder_features(
                probed_encoder(model, recipe), recipe, st.bank.normalizer(recipe), emb_dir
            ),
            recipe,
            st.bank,
        )
    except TrialFailed as e:
        return _fail(st, trial, claim, run_id, row, str(e), time.perf_counter() - t0, log)
    except (KeyboardInterrupt, SystemExit) as e:
        stop_handled()
        # Ctrl-C or a stop signal: release the trial. The attempt does not count, the
        # checkpoint keeps the training done so far, and the next run resumes it.
        reason = f"released: worker stopped ({type(e).__name__})"
        _fail(st, trial, claim, run_id, row, reason, time.perf_counter() - t0, log, True)
        raise
    except BaseException as e:
        # A full disk is not the trial's fault: release it (the next run resumes it). Else an
        # internal error: close the attempt as failed (a later run retries it). Either way the
        # error goes on, with its traceback (the CLI makes a full disk one line).
        room = no_room(e)
        reason = f"released: {room}" if room else f"internal error {type(e).__name__}: {e}"
        try:
            _fail(
                st,
                trial,
                claim,
                run_id,
                row,
                reason[:500],
                time.perf_counter() - t0,
                log,
                bool(room),
            )
        except Exception:
            if not room:  # recording a full disk's release may itself find no room
                raise
        raise
    wall = time.perf_counter() - t0
    metrics = dict(scores.metrics)
    flops = train_step_flops(recipe).total
    metrics.update(
        {
            ("train", "flops_per_step"): flops,
            ("train", "gflops_per_s"): flops * result.samples_per_s / recipe.train.batch_size / 1e9,
            ("train", "final_loss"): result.history[-1]["loss"],
            ("train", "samples_per_s"): result.samples_per_s,
            # Training time net of waiting for batches; data: opening the feature cache plus
            # that wait (the pipeline's whole cost to the trial).
            ("train", "train_s"): result.wall_s - result.data_wait_s,
            ("train", "probe_s"): scores.seconds,
            ("train", "embed_s"): scores.embed_s,
            ("train", "probe_share"): scores.seconds / max(result.wall_s, 1e-9),
            ("train", "data_s"): data_s + result.data_wait_s,
            ("train", "padding_share"): result.padding_share,
            ("train", "data_wait_share"): result.data_wait_s / max(result.wall_s, 1e-9),
        }
    )
    st.tracker.log_metrics(
        run_id, [(f"{t}.{m}", v, 0) for (t, m), v in metrics.items()] + [("wall_s", wall, 0)]
    )
    # What train.precision: auto resolved to on this worker's machine, and the kernel.
    st.tracker.set_tags(
        run_id, {"abl.precision": result.precision, "abl.attention": result.attention}
    )
    st.tracker.end_run(run_id, ok=True)
    queries.finish_trial(
        st.engine,
        row,
        metrics,
        wall,
        run_id,
        curves=thin_curves(result.history) + knn,
        predictions=scores.predictions,
        precision=result.precision,
        attention=result.attention,
    )
    if claim is not None:
        st.ledger.complete(claim, scores.mean_accuracy)
    accs = ", ".join(f"{t} {v:.3f}" for (t, m), v in scores.metrics.items() if m == "accuracy")
    log(f"  done {trial.label} in {wall:.1f}s: accuracy {accs}")
    return True


def interactive() -> bool:
    """Progress bars only for a person at a terminal: never under CI or into a file."""
    return sys.stderr.isatty() and not os.environ.get("CI")


SHOW_PROGRESS = True  # off in local worker processes sharing one terminal


def progress_bar(steps: int, batch: int):
    """A one-line training progress bar on stderr (None when not interactive)."""
    if not SHOW_PROGRESS or not interactive():
        return None
    t0 = time.perf_counter()
    every = max(1, steps // 100)

    def show(rec: dict[str, float]) -> None:
        step = int(rec["step"]) + 1
        if step % every and step != steps:
            return
        done = step / steps
        rate = step * batch / max(time.perf_counter() - t0, 1e-9)
        bar = "#" * int(30 * done)
        sys.stderr.write(
            f"\r    [{bar:<30}] {step}/{steps} loss {rec['loss']:.4f} {rate:.0f} samples/s"
        )
        if step == steps:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def thin_curves(history: list[dict[str, float]], points: int = 200) -> list[tuple[str, int, float]]:
    """The training history as (name, step, value), at most about `points` per curve (evenly
    spaced, the last step always kept): what the results database keeps for the reports."""
    by_name: dict[str, list[tuple[int, float]]] = {}
    for rec in history:
        for k, v in rec.items():
            if k != "step":
                by_name.setdefault(k, []).append((int(rec["step"]), float(v)))
    out = []
    for name, pts in by_name.items():
        stride = max(1, -(-len(pts) // points))
        keep = pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])
        out += [(name, step, v) for step, v in keep]
    return out


def intermediate_probe(st: Study, trial: TrialSpec, claim: Claim | None, run_id: str, points: list):
    """The training hook: every `train.eval_every` steps, the k-NN accuracy of the probed
    encoder on the first probe task (a fixed subset of its train clips as the memory, its
    validation clips as queries), logged as an `eval.<task>.knn` curve (and appended to
    `points` for the results database) and reported to the Optuna trial as an intermediate
    value (what a pruner reads). Seconds, no fitting."""
    recipe = trial.recipe
    task = recipe.probe.tasks[0]
    norm = st.bank.normalizer(recipe)
    train_fs = st.bank.features(task, "train", recipe.frontend, recipe.data.max_clips_per_class)
    val_fs = st.bank.features(task, "val", recipe.frontend, recipe.data.max_clips_per_class)
    n = min(len(train_fs), recipe.probe.knn_clips)
    pick = np.random.default_rng(0).choice(len(train_fs), n, replace=False)
    train_lms = [norm(train_fs.clip(int(i))) for i in pick]
    train_y = [train_fs.labels[int(i)] for i in pick]
    val_lms = [norm(val_fs.clip(i)) for i in range(len(val_fs))]
    frames, bs, layers = recipe.frontend.frames, recipe.probe.batch_size, recipe.probe.layers

    def hook(step: int, model) -> bool:  # noqa: ANN001
        enc = probed_encoder(model, recipe)
        acc = knn_accuracy(
            clip_embeddings(enc, train_lms, frames, bs, layers),
            train_y,
            clip_embeddings(enc, val_lms, frames, bs, layers),
            list(val_fs.labels),
        )
        st.tracker.log_metrics(run_id, [(f"eval.{task}.knn", acc, step)])
        points.append((f"eval.{task}.knn", step, acc))
        if claim is None:
            return False
        st.ledger.report(claim, step, acc)
        # Off by default: an ablation wants every cell at its budget.
        return st.spec.pruning == "median" and st.ledger.should_prune(claim)

    return hook


def _pruned(st: Study, trial: TrialSpec, claim, run_id: str, row: int, result, wall, log) -> bool:  # noqa: ANN001
    """A trial the pruner stopped: recorded as pruned (finished, never run again), no probes."""
    reason = f"pruned at step {result.steps}: its k-NN accuracy trailed the median"
    st.tracker.set_tags(run_id, {"abl.pruned": reason})
    st.tracker.end_run(run_id, ok=True)
    queries.finish_trial(st.engine, row, {}, wall, run_id, error=reason, status="pruned")
    if claim is not None:
        st.ledger.pruned(claim, result.steps)
    log(f"  pruned {trial.label}: {reason}")
    return True


class TrialFailed(Exception):
    """A trial ended for a reason of its own (diverged); the study goes on."""


def _fail(
    st: Study,
    trial: TrialSpec,
    claim: Claim | None,
    run_id: str,
    row: int,
    reason: str,
    wall: float,
    log: Log,
    released: bool = False,
) -> bool:
    st.tracker.set_tags(run_id, {"abl.error": reason[:500]})
    st.tracker.end_run(run_id, ok=False)
    queries.finish_trial(st.engine, row, {}, wall, run_id, error=reason)
    if claim is not None:
        st.ledger.fail(claim, reason, released)
    log(f"  FAILED {trial.label}: {reason}")
    return False


def run_references(st: Study, log: Log, share: tuple[int, int] = (0, 1)) -> None:
    """The references of a study: a random-init encoder of the baseline's shape per seed, and
    log-mel statistics once (they have no seed: recorded with seed -1). `share` (i, n): the
    i-th of n workers runs every n-th seed's random-init encoder, and the first worker the
    log-mel statistics, so local workers split them and none runs twice."""
    recipe = st.spec.baseline
    norm = st.bank.normalizer(recipe)
    have = queries.probed_tasks(st.engine, st.spec.study)
    part, parts = share
    jobs = [(seed, "random-init") for seed in st.spec.seeds[part::parts]]
    if part == 0:
        jobs.append((-1, "logmel-stats"))
    for seed, name in jobs:
        key = "ref-" + trial_key(recipe, seed)[:12] + "-" + name
        missing = _missing(recipe, have.get(key))
        if not missing:
            continue
        t0 = time.perf_counter()
        part_recipe = with_value(recipe, "probe.tasks", missing)
        if name == "random-init":
            torch.manual_seed(seed)
            enc = ViT(recipe.encoder, recipe.frontend.n_mels, recipe.frontend.frames).eval()
            scores = score(encoder_features(enc, part_recipe, norm), part_recipe, st.bank)
        else:
            scores = score(lambda fs, _name: logmel_stats(fs, norm), part_recipe, st.bank)
        if key in have:  # scored before, on fewer tasks: add the new ones
            _add_scores(st, have[key], scores, f"reference {name} seed={seed}", log)
            continue
        tags = {
            "abl.role": "reference",
            "abl.study": st.spec.study,
            "abl.key": key,
            "abl.seed": str(seed),
            "abl.setting": name,
        }
        run_id = st.tracker.start_run(f"reference={name} seed={seed}", st.parent_run, tags, {})
        st.tracker.log_metrics(run_id, [(f"{t}.{m}", v, 0) for (t, m), v in scores.metrics.items()])
        st.tracker.end_run(run_id, ok=True)
        row = queries.start_trial(
            st.engine,
            st.study_id,
            key,
            seed,
            "reference",
            name,
            {},
            semantic_config(recipe),
            st.worker,
        )
        queries.finish_trial(
            st.engine,
            row,
            scores.metrics,
            time.perf_counter() - t0,
            run_id,
            predictions=scores.predictions,
        )
        accs = ", ".join(f"{t} {v:.3f}" for (t, m), v in scores.metrics.items() if m == "accuracy")
        log(f"  reference {name} seed={seed}: accuracy {accs}")


def _missing(recipe: RecipeConfig, have: tuple[int, str | None, set[str]] | None) -> tuple:
    """The probe tasks of `recipe` a finished row has no score for (all of them without one)."""
    return tuple(t for t in recipe.probe.tasks if have is None or t not in have[2])


def _add_scores(st: Study, have: tuple, scores: ProbeScores, label: str, log: Log) -> None:
    row, run_id, _ = have
    queries.add_scores(st.engine, row, scores.metrics, scores.predictions)
    if run_id:
        st.tracker.log_metrics(run_id, [(f"{t}.{m}", v, 0) for (t, m), v in scores.metrics.items()])
    accs = ", ".join(f"{t} {v:.3f}" for (t, m), v in scores.metrics.items() if m == "accuracy")
    log(f"  probed {label} on its new task(s): accuracy {accs}")


def probe_finished(st: Study, trials: list[TrialSpec], log: Log) -> int:
    """Probe the study's finished trials on the tasks of their probe.tasks they have no score
    for (tasks added since they ran), from their checkpoints: nothing is retrained. Scores go
    to the trial's row and MLflow run. Returns how many trials were probed."""
    have = queries.probed_tasks(st.engine, st.spec.study)
    n = 0
    for trial in trials:
        if trial.key not in have:
            continue  # not finished: its run probes every task
        missing = _missing(trial.recipe, have[trial.key])
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
        _add_scores(st, have[trial.key], score(features, recipe, st.bank), trial.label, log)
        n += 1
    return n


@dataclass(frozen=True)
class RunSummary:
    planned: int
    ran: int
    failed: int
    skipped: int  # finished before this run
    seconds: float


def reap_lost(st: Study) -> list[str]:
    """Fail the attempts of workers that stopped beating (killed, machine gone) everywhere
    they are recorded: the Optuna ledger, the results row and the MLflow run. Returns their
    keys (the ledger enqueues them again on the next sync)."""
    lost = st.ledger.reap()
    for run_id in queries.fail_lost(st.engine, st.study_id, [n for _, n in lost], LOST):
        st.tracker.fail_run(run_id, LOST)
    return [k for k, _ in lost]


def work(st: Study, trials: list[TrialSpec], log: Log, name: str = "") -> tuple[int, int]:
    """Claim and run trials of `trials` until none is waiting; returns (finished, failed).

    Each claimed trial beats a heartbeat while it runs; before each claim, trials of workers
    that stopped beating are failed, so the ledger hands them out again."""
    by_key = {t.key: t for t in trials}
    ran = failed = 0
    t_start = time.perf_counter()
    while True:
        lost = [by_key[k] for k in reap_lost(st) if k in by_key]
        for t in lost:
            log(f"{name}  worker lost on {t.label}: failed; enqueued again if attempts remain")
        st.ledger.sync(lost, st.spec.max_attempts)
        claim = st.ledger.claim(set(by_key))
        if claim is None:
            return ran, failed
        trial = by_key[claim.key]
        waiting = st.ledger.waiting()
        eta = ""
        if ran + failed:
            per = (time.perf_counter() - t_start) / (ran + failed)
            eta = f", about {per * (waiting + 1) / 60:.0f} min left for this worker's share"
        log(
            f"{name}[{ran + failed + 1}] {trial.label} (key {trial.key[:10]}; "
            f"{waiting} more waiting{eta})"
        )
        with st.ledger.heartbeat(claim):
            ok = run_trial(st, trial, claim, log)
        ran += ok
        failed += not ok


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (a coordinator
    killed with -9 must not leave workers training on). Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took hold
        raise SystemExit(128 + signal.SIGTERM)


def _worker_process(
    spec: StudySpec,
    threads: int,
    index: int,
    jobs: int,
    queue,  # noqa: ANN001
    parent: int,
) -> None:
    """Entry point of a local worker process (spawned: no state shared with the parent): its
    share of the references, then trials until none is waiting."""
    stop_on_sigterm()
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy's and scikit-learn's pools too: one core each
    global SHOW_PROGRESS
    SHOW_PROGRESS = False  # several bars on one terminal would overwrite each other
    name = f"w{index} "
    say = lambda m: print(m, flush=True)  # noqa: E731
    try:
        st = open_study(spec)
        run_references(st, lambda m: say(name + m.strip()), (index, jobs))
        ran, failed = work(st, expand(spec), say, name)
        queue.put((ran, failed))
    except (KeyboardInterrupt, SystemExit):
        stop_handled()
        queue.put((0, 0))


def default_jobs() -> int:
    """Local workers when `-j` is not given. On a GPU, one (one device). On CPUs, one
    single-thread worker per core: `bench.workers` measured it faster than one worker using
    every core, on the default study (docs/performance.md)."""
    if torch.cuda.is_available():
        return 1
    return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def check_no_leak(spec: StudySpec, trials: list[TrialSpec]) -> None:
    """Refuse, before anything is written, a cross-validated study whose pretraining corpus
    holds audio of one of its probe tasks: under `probe.protocol: cv` every labelled clip is a
    test clip once. The names are checked when the file is loaded; this compares the prepared
    audio itself (by content hash), so a user's corpus folder that holds a copy of a probe
    task's files is caught too. Tasks not prepared yet are checked once they are."""
    bank = DataBank(resolve_data_root(spec.baseline.data.cache), spec.baseline.data.tasks)
    pairs = {
        (tuple(t.recipe.data.corpus), tuple(t.recipe.probe.tasks))
        for t in trials
        if t.recipe.probe.protocol == "cv"
    }
    digests: dict[str, set[str]] = {}

    def sha1s(name: str) -> set[str]:
        if name not in digests:
            try:
                digests[name] = {c.sha1 for c in bank.task(name).clips}
            except AblError:
                digests[name] = set()
        return digests[name]

    for corpus, probes in sorted(pairs):
        for c in corpus:
            for p in probes:
                shared = sha1s(c) & sha1s(p)
                if shared:
                    raise AblError(
                        f"{spec.source}: data.corpus entry {c!r} holds {len(shared)} clip(s) "
                        f"of probe task {p!r}; under probe.protocol: cv every labelled clip is "
                        "a test clip once, so remove them from the corpus or use "
                        "probe.protocol: split"
                    )


def run_study(spec: StudySpec, log: Log = print, jobs: int = 1) -> RunSummary:
    """Sync the grid into the ledger, run the references, then work through the trials with
    `jobs` local workers (separate processes when more than one, threads split between them).
    Everything shared (databases, the MLflow experiment and parent run) is created here once,
    before any worker starts."""
    t0 = time.perf_counter()
    trials = expand(spec)
    check_no_leak(spec, trials)
    st = open_study(spec)
    reap_lost(st)  # trials of workers that died since the last run
    todo = st.ledger.sync(trials, spec.max_attempts)
    log(
        f"study {spec.study}: {len(trials)} trials, {len(trials) - len(todo)} already finished, "
        f"{len(todo)} to run" + (f" on {jobs} workers" if jobs > 1 else "")
    )
    if probe_finished(st, trials, log):
        log("finished trials probed on their new tasks; no training was needed for them")
    if jobs <= 1 or len(todo) <= 1:
        run_references(st, log)
        ran, failed = work(st, trials, log)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        threads = threads_per_worker(jobs)
        n = min(jobs, len(todo))
        procs = [
            ctx.Process(
                target=_worker_process, args=(spec, threads, i, n, queue, os.getpid()), daemon=False
            )
            for i in range(n)
        ]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except (KeyboardInterrupt, SystemExit) as e:
            # Ctrl-C reached the workers too; a SIGTERM (SystemExit) reached only this process,
            # so pass it on. Each worker releases its trial and exits.
            for p in procs:
                if isinstance(e, SystemExit) and p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=60)
            raise
        ran = failed = 0
        while not queue.empty():
            r, f = queue.get()
            ran, failed = ran + r, failed + f
        lost = [p.exitcode for p in procs if p.exitcode]
        if lost:
            log(f"{len(lost)} worker(s) exited abnormally (codes {lost}); their trials run again")
    return RunSummary(len(trials), ran, failed, len(trials) - len(todo), time.perf_counter() - t0)
