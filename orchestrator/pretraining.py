"""The pretraining stage of one trial: train (or resume) the JEPA under its pretraining key,
probe it, and record everything in MLflow and the results table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from db import queries
from model.embed import clip_embeddings
from model.errors import AblError, no_room
from model.filelock import exclusive
from model.flops import train_step_flops
from model.memory import check_fits
from model.probe import knn_accuracy
from model.train import pick_device, train
from orchestrator.grid import TrialSpec, axis_choices, semantic_config
from orchestrator.ledger import Claim
from orchestrator.probing import encoder_features, probed_encoder, score
from orchestrator.signals import stop_handled
from orchestrator.study import Log, Study
from orchestrator.tracking import flatten


def pretraining_lock(ckpt: Path) -> contextlib.AbstractContextManager[None]:
    """Trials that share a pretraining (they differ only in the probe) train it one at a
    time: the second waits, then finds the finished checkpoint and trains no step."""
    return exclusive(ckpt.with_suffix(".lock"))


def run_trial(st: Study, trial: TrialSpec, claim: Claim | None, log: Log) -> bool:
    """Pretrain, probe and record one trial; returns True when it finished."""
    recipe = trial.recipe
    try:
        if trial.provisional:  # its key would name data by a placeholder: never stored
            unprepared = [n for n in recipe.data.corpus if n not in trial.contents]
            raise AblError(
                f"{trial.label}: pretraining data {', '.join(unprepared)} is not prepared; run "
                f"`abl data prepare --task {unprepared[0]}` (abl run and abl worker prepare it)"
            )
        # A recipe this machine cannot hold fails here in one line, not out of memory
        # mid-trial.
        check_fits(recipe, trial.label, pick_device())
    except AblError as e:
        # Refused before it started: handed back, not counted as an attempt, for a worker
        # (or a later run) that can run it.
        if claim is not None:
            st.ledger.fail(claim, f"released: {e}", released=True)
        raise
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
    tags.update({f"abl.data.{k}": v for k, v in trial.contents.items()})
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
        trial.contents,
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
            ("train", "silence_share"): result.silence_share,
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
