"""Per-trial cost of the orchestration (Optuna ledger, MLflow, results SQL), not the training.

Runs a study of `--trials` cells of a 1-step tiny model on a small real slice, then compares
each trial's wall time with the time it spent training, probing and loading data (all measured
inside the trial): the rest is claiming, recording and bookkeeping. Also reports the study's
fixed cost (opening the stores, syncing the grid, references). Everything in one run, on this
machine, with SQLite storage under a temporary folder.

The targets: at most 1.5 s a trial, and at most 2% of a default trial, whose length is
estimated in the same run as the default recipe's training step times its budget (the probes
left out, so the share is if anything too high).

    .venv/bin/python -m bench.overhead --trials 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.common import Figure, default_out, keep
from bench.throughput import jepa_step_time
from db import queries
from db.engine import make_engine
from orchestrator.spec import load_spec
from orchestrator.workers import run_study

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--out", default=str(default_out("overhead")), help="'' to keep nothing")
    args = ap.parse_args()
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    default = load_spec(ROOT / "experiments.yaml").baseline
    b = spec["baseline"]
    b["data"].update(corpus=["env-sfx"], max_clips_per_class=4)
    b["probe"].update(tasks=["env-sfx"], c_grid=[1.0])
    b["encoder"].update(depth=1, width=32, heads=2)
    b["predictor"].update(depth=1, width=16, heads=2)
    b["train"].update(steps=1, batch_size=4, warmup_steps=0, checkpoint_every=0)
    spec["study"] = "overhead"
    spec["seeds"] = list(range(args.trials))
    spec["axes"] = {"masking": {"path": "mask.strategy", "values": ["unstructured"]}}
    with tempfile.TemporaryDirectory() as tmp:
        spec["output"] = str(Path(tmp) / "out")
        exp = Path(tmp) / "experiments.yaml"
        exp.write_text(yaml.safe_dump(spec))
        t0 = time.perf_counter()
        summary = run_study(load_spec(exp), log=lambda _m: None)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_study(load_spec(exp), log=lambda _m: None)  # all finished: the fixed cost only
        fixed = time.perf_counter() - t0
        df = queries.results_frame(make_engine(f"sqlite:///{Path(tmp) / 'out' / 'results.db'}"))
    trials = df[df["axis"] != "reference"]
    inner = trials[trials["task"] == "train"].pivot_table(
        index="key", columns="metric", values="value"
    )
    wall = trials.groupby("key")["wall_s"].first()
    compute = inner["train_s"] + inner["probe_s"] + inner["data_s"]
    refs = df[df["axis"] == "reference"].groupby("key")["wall_s"].first().sum()
    # Everything a trial costs beyond its own compute: claim, MLflow run, params, curves,
    # SQL rows, Optuna tell (measured around the whole loop, not inside the trial).
    overhead = (total - fixed - refs - compute.sum()) / len(wall)
    rec = {
        "trials": summary.ran,
        "per_trial_wall_s": round(float((total - fixed - refs) / len(wall)), 3),
        "per_trial_compute_s": round(float(compute.mean()), 3),
        "per_trial_overhead_s": round(float(overhead), 3),
        "study_fixed_s": round(float(fixed), 2),
        "references_s": round(float(refs), 2),
    }
    default_trial_s = jepa_step_time(default, torch.device("cpu"), False, 5) * default.train.steps
    rec["default_trial_training_s"] = round(default_trial_s, 1)
    print(
        f"{rec['trials']} trials: a trial {rec['per_trial_wall_s']:.2f} s in all, of which "
        f"compute {rec['per_trial_compute_s']:.2f} s; fixed cost of a run "
        f"{rec['study_fixed_s']:.1f} s (plus the references once: {rec['references_s']:.1f} s); "
        f"a default trial trains for about {default_trial_s:.0f} s"
    )
    figures = [
        Figure("orchestration a trial", overhead, 1.5, "s", True),
        Figure(
            "orchestration share of a default trial", overhead / default_trial_s, 0.02, "", True
        ),
    ]
    keep("overhead", figures, rec, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
