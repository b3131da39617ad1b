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

from model.data.datasets import prepare_task, resolve_data_root, task_content
from model.train import train
from model.vit import ViT
from orchestrator.bank import DataBank
from orchestrator.grid import drop_neutral
from orchestrator.probing import encoder_features, score
from orchestrator.spec import _coerce, load_spec, recipe_field, with_value

ROOT = Path(__file__).resolve().parents[1]


def override(recipe, assignment: str):
    path, _, raw = assignment.partition("=")
    section, key = recipe_field(path, "--set")
    import typing

    value = _coerce(yaml.safe_load(raw), typing.get_type_hints(section)[key], path, "--set")
    return with_value(recipe, path, value)


def _ref_key(recipe, seed: int, root: Path) -> str:  # noqa: ANN001
    """What a random-init reference depends on: the encoder, the probe, the normaliser, and
    what the tasks and the corpus hold (a task prepared again, with other groups and so other
    folds, scores the same encoder differently)."""
    import dataclasses
    import hashlib

    d = dataclasses.asdict(recipe)
    part = {k: d[k] for k in ("frontend", "encoder", "probe")}
    # Probe settings added since references were first cached hash as absent at their neutral
    # values, so those entries still hold (the other sections' neutral settings were keyed
    # before this, and their entries with them).
    drop_neutral(part, ("probe",))
    part["corpus"], part["limit"] = d["data"]["corpus"], d["data"]["max_clips_per_class"]
    names = sorted({*recipe.data.corpus, *recipe.probe.tasks})
    part["content"] = {n: task_content(n, root) for n in names}
    return hashlib.sha1(json.dumps([part, seed], sort_keys=True).encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--steps", type=int, nargs="+", default=[300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--out", help="append a JSON record of the run to this file")
    ap.add_argument("--name", default="", help="a label for the record")
    ap.add_argument(
        "--no-target", action="store_true", help="probe only the context (online) encoder"
    )
    ap.add_argument(
        "--ref-cache",
        default=str(ROOT / "bench" / "results" / "random_init_refs.json"),
        help="random-init scores kept between runs (keyed by encoder, probe and corpus)",
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
    cache_path = Path(args.ref_cache)
    refs = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    rows = []
    for seed in args.seeds:
        rk = _ref_key(recipe, seed, root)
        if rk not in refs:
            torch.manual_seed(seed)
            rand = ViT(recipe.encoder, recipe.frontend.n_mels, recipe.frontend.frames).eval()
            ref = score(encoder_features(rand, recipe, norm), recipe, bank)
            refs[rk] = {t: ref.metrics[(t, "accuracy")] for t in recipe.probe.tasks}
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(refs, indent=1, sort_keys=True))
        for steps in args.steps:
            r = with_value(recipe, "train.steps", steps)
            sampler = bank.sampler(r, seed)
            t0 = time.perf_counter()
            model, res = train(r, sampler, seed)
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            ctx = score(encoder_features(model.encoder, r, norm), r, bank)
            probe_s = time.perf_counter() - t1
            tgt = (
                None
                if args.no_target
                else score(encoder_features(model.target_encoder, r, norm), r, bank)
            )
            last = res.history[-1] if res.history else {}
            for task in recipe.probe.tasks:
                k = (task, "accuracy")
                rows.append(
                    {
                        "seed": seed,
                        "steps": steps,
                        "task": task,
                        "random": refs[rk][task],
                        "context": ctx.metrics[k],
                        "target": tgt.metrics[k] if tgt else float("nan"),
                        "train_s": round(train_s, 1),
                        "probe_s": round(probe_s, 1),
                        "samples_per_s": round(res.samples_per_s, 1),
                        "padding_share": round(res.padding_share, 4),
                        "silence_share": round(res.silence_share, 4),
                        "final_loss": last.get("loss", float("nan")),
                        "target_token_rank": last.get("target_token_rank"),
                        "rank_context": last.get("rank.context"),
                        "cos_context": last.get("cos.context.positions"),
                        "failed": res.failed,
                    }
                )
                x = rows[-1]
                print(
                    f"seed {seed} steps {steps:5d} {task:15s} random {x['random']:.3f} "
                    f"context {x['context']:.3f} ({x['context'] - x['random']:+.3f}) "
                    f"target {x['target']:.3f} ({x['target'] - x['random']:+.3f}) "
                    f"loss {x['final_loss']:.3f} rank {x['rank_context'] or 0:.1f} "
                    f"cos {x['cos_context'] or 0:.2f} pad {x['padding_share']:.3f} "
                    f"{x['samples_per_s']:.0f} samples/s probe {probe_s:.0f}s",
                    flush=True,
                )
    print(f"mean margin over random-init (context, target) by steps [{args.name}]:")
    for steps in args.steps:
        sel = [r for r in rows if r["steps"] == steps]
        c = np.array([r["context"] - r["random"] for r in sel])
        t = np.array([r["target"] - r["random"] for r in sel])
        per_seed = [
            np.mean([r["context"] - r["random"] for r in sel if r["seed"] == s]) for s in args.seeds
        ]
        print(
            f"  {steps:5d} steps: context {c.mean():+.3f} +- {c.std():.3f}, "
            f"target {t.mean():+.3f} +- {t.std():.3f} (n={len(sel)}); per seed "
            + " ".join(f"{m:+.3f}" for m in per_seed)
        )
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"name": args.name, "sets": args.sets, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
