"""Does pretraining pay? The pretrained encoder against the same encoder at random init.

Trains the baseline recipe of an experiments file at several step budgets and seeds, probes the
context (online) and target (EMA) encoders on every probe task, and prints each margin over the
random-init encoder of the same seed. Settings are overridden with `--set section.key=value`.

    .venv/bin/python -m bench.learning --steps 300 1000 --seeds 0 1 --set train.lr=0.002
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from model.datasets import prepare_task, resolve_data_root
from model.train import train
from model.vit import ViT
from orchestrator.runner import DataBank, encoder_features, score
from orchestrator.spec import _coerce, load_spec, recipe_field, with_value

ROOT = Path(__file__).resolve().parents[1]


def override(recipe, assignment: str):
    path, _, raw = assignment.partition("=")
    section, key = recipe_field(path, "--set")
    import typing

    value = _coerce(yaml.safe_load(raw), typing.get_type_hints(section)[key], path, "--set")
    return with_value(recipe, path, value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--steps", type=int, nargs="+", default=[300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--out", help="append a JSON record of the run to this file")
    ap.add_argument(
        "--no-target", action="store_true", help="probe only the context (online) encoder"
    )
    args = ap.parse_args()

    recipe = load_spec(args.experiments).baseline
    for s in args.sets:
        recipe = override(recipe, s)
    root = resolve_data_root(recipe.data.cache)
    for task in {*recipe.data.corpus, *recipe.probe.tasks}:
        prepare_task(task, root, log=lambda _m: None)
    bank = DataBank(root)
    norm = bank.normalizer(recipe)
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        rand = ViT(recipe.encoder, recipe.frontend.n_mels, recipe.frontend.frames).eval()
        ref = score(encoder_features(rand, recipe, norm), recipe, bank)
        for steps in args.steps:
            r = with_value(recipe, "train.steps", steps)
            sampler_seed = seed
            from model.features import CropSampler

            sampler = CropSampler(bank.corpus(r), r.frontend.frames, norm, sampler_seed)
            t0 = time.perf_counter()
            model, res = train(r, sampler, seed)
            train_s = time.perf_counter() - t0
            ctx = score(encoder_features(model.encoder, r, norm), r, bank)
            tgt = (
                None
                if args.no_target
                else score(encoder_features(model.target_encoder, r, norm), r, bank)
            )
            for task in recipe.probe.tasks:
                k = (task, "accuracy")
                rows.append(
                    {
                        "seed": seed,
                        "steps": steps,
                        "task": task,
                        "random": ref.metrics[k],
                        "context": ctx.metrics[k],
                        "target": tgt.metrics[k] if tgt else float("nan"),
                        "train_s": round(train_s, 1),
                        "samples_per_s": round(res.samples_per_s, 1),
                        "final_loss": res.history[-1]["loss"] if res.history else float("nan"),
                        "target_rank": res.history[-1].get("target_rank") if res.history else None,
                        "failed": res.failed,
                    }
                )
                x = rows[-1]
                print(
                    f"seed {seed} steps {steps:5d} {task:15s} random {x['random']:.3f} "
                    f"context {x['context']:.3f} ({x['context'] - x['random']:+.3f}) "
                    f"target {x['target']:.3f} ({x['target'] - x['random']:+.3f}) "
                    f"loss {x['final_loss']:.3f} rank {x['target_rank']:.1f} "
                    f"{x['samples_per_s']:.0f} samples/s",
                    flush=True,
                )
    print("mean margin over random-init (context, target) by steps:")
    for steps in args.steps:
        sel = [r for r in rows if r["steps"] == steps]
        c = np.array([r["context"] - r["random"] for r in sel])
        t = np.array([r["target"] - r["random"] for r in sel])
        print(
            f"  {steps:5d} steps: context {c.mean():+.3f} +- {c.std():.3f}, "
            f"target {t.mean():+.3f} +- {t.std():.3f} (n={len(sel)})"
        )
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"sets": args.sets, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
