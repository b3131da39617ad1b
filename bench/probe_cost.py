"""What the probes cost against pretraining, at the default recipe of an experiments file.

Times `--steps` training steps of the baseline recipe (extrapolated to its full budget), then
one full scoring of its probe tasks with the same encoder (embedding every train / val / test
clip and fitting the classifiers), and prints probe time as a share of pretraining time. The
issue's target is at most 0.15. Both are measured in this one run, on this machine.

    .venv/bin/python -m bench.probe_cost --steps 100
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from bench.common import Figure, default_out, keep
from model.config import train_frames
from model.data.datasets import prepare_task, resolve_data_root
from model.data.features import CropSampler
from model.train import train
from orchestrator.bank import DataBank
from orchestrator.probing import encoder_features, score
from orchestrator.spec import load_spec, with_value

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--steps", type=int, default=100, help="training steps to time")
    ap.add_argument("--out", default=str(default_out("probe_cost")), help="'' to keep nothing")
    args = ap.parse_args()
    recipe = load_spec(args.experiments).baseline
    root = resolve_data_root(recipe.data.cache)
    for task in {*recipe.data.corpus, *recipe.probe.tasks}:
        prepare_task(task, root, log=lambda _m: None)
    bank = DataBank(root)
    norm = bank.normalizer(recipe)
    short = with_value(recipe, "train.steps", args.steps)
    sampler = CropSampler(bank.corpus(recipe), train_frames(recipe), norm, seed=0)
    model, res = train(short, sampler, seed=0)
    per_step = res.wall_s / res.steps
    budget_s = per_step * recipe.train.steps
    scores = score(encoder_features(model.encoder, recipe, norm), recipe, bank)
    rec = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "precision": res.precision,
        "attention": res.attention,
        "train_samples_per_s": round(res.samples_per_s, 1),
        "train_s_at_budget": round(budget_s, 1),
        "budget_steps": recipe.train.steps,
        "probe_s": round(scores.seconds, 1),
        "embed_s": round(scores.embed_s, 1),
        "fit_s": round(scores.seconds - scores.embed_s, 1),
        "probe_share": round(scores.seconds / budget_s, 3),
        "tasks": list(recipe.probe.tasks),
    }
    print(
        f"training {rec['train_samples_per_s']} samples/s ({res.precision}, {res.attention} "
        "attention): "
        f"{budget_s:.0f} s for {recipe.train.steps} steps; probes {scores.seconds:.1f} s "
        f"(embedding {scores.embed_s:.1f} s, fitting {rec['fit_s']} s) = "
        f"{rec['probe_share']:.3f} of pretraining (target <= 0.15)"
    )
    figures = [Figure("probe time over pretraining time", rec["probe_share"], 0.15, "", True)]
    keep("probe_cost", figures, rec, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
