"""Training throughput against this machine's matmul peak, and the input pipeline, in one run.

1. The matmul peak of this machine (fp32 and bf16, large square products).
2. A JEPA training step (mask sampling, both encoders, predictor, backward, AdamW, EMA) of the
   default recipe at encoder width 192 and 384: samples per second and achieved GFLOP/s, the
   FLOPs counted from the recipe (model/flops.py), as a share of the peak of the precision
   training runs in (bf16 autocast where the hardware has it, else fp32).
3. The JEPA's own overhead: its step time against a plain ViT forward and backward (and AdamW)
   over every token of the same crops.
4. The input pipeline: `train()` on the real corpus with a warm feature cache; the share of
   step time spent waiting for a batch, and the data cost (opening the cache plus waiting) as a
   share of the trial's training.

    .venv/bin/python bench/throughput.py            # appends to bench/results/throughput.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import Figure, default_out, keep
from model.datasets import prepare_task, resolve_data_root
from model.features import CropSampler
from model.flops import train_step_flops, transformer_flops
from model.jepa import JEPA
from model.masks import sample_masks
from model.train import param_groups, pick_device, train, train_step, use_bf16
from model.vit import ViT
from orchestrator.runner import DataBank
from orchestrator.spec import load_spec, with_value

ROOT = Path(__file__).resolve().parents[1]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, dev: torch.device, reps: int, rounds: int = 3) -> float:  # noqa: ANN001
    """Seconds per call: the best of `rounds` rounds of `reps` calls (after one warm round).
    On a shared machine the best round is the closest to what the hardware can do."""
    best = float("inf")
    for r in range(rounds + 1):
        sync(dev)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(dev)
        if r:
            best = min(best, (time.perf_counter() - t) / reps)
    return best


def matmul_peak(dtype: torch.dtype, dev: torch.device, native: bool) -> float:
    """GFLOP/s of a square matrix product. Without native support (bf16 on a CPU lacking
    avx512_bf16) the product is emulated and ~100x slower: a small size keeps that short."""
    n = 2048 if native else 256
    a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
    s = best_time(lambda: a @ b, dev, reps=8 if native else 2)
    return 2 * n**3 / s / 1e9


def jepa_step_time(recipe, dev: torch.device, bf16: bool, reps: int) -> float:  # noqa: ANN001
    """Seconds per training step of `recipe` on fixed random crops; masks drawn in the step."""
    torch.manual_seed(0)
    model = JEPA(recipe).to(dev).train()
    tc = recipe.train
    opt = torch.optim.AdamW(
        param_groups(model, tc.weight_decay), lr=tc.lr, fused=dev.type == "cuda" or None
    )
    x = torch.randn(tc.batch_size, 1, recipe.frontend.n_mels, recipe.frontend.frames, device=dev)
    step = iter(range(10**9))

    def one() -> None:
        i = next(step)
        masks = sample_masks(tc.batch_size, model.grid, recipe.mask, i, 0.5).to(dev)
        train_step(model, opt, x, masks, 0.996, bf16)

    return best_time(one, dev, reps)


def vit_step_time(recipe, dev: torch.device, bf16: bool, reps: int) -> float:  # noqa: ANN001
    """Seconds per step of a plain ViT (the same encoder) over every token of the crops:
    forward, a mean-square loss, backward, AdamW."""
    torch.manual_seed(0)
    tc, fe = recipe.train, recipe.frontend
    vit = ViT(recipe.encoder, fe.n_mels, fe.frames).to(dev).train()
    opt = torch.optim.AdamW(
        param_groups(vit, tc.weight_decay), lr=tc.lr, fused=dev.type == "cuda" or None
    )
    x = torch.randn(tc.batch_size, 1, fe.n_mels, fe.frames, device=dev)

    def one() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = vit(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vit.parameters(), float("inf"))
        opt.step()

    return best_time(one, dev, reps)


def vit_step_flops(recipe) -> float:  # noqa: ANN001
    fe, enc = recipe.frontend, recipe.encoder
    pf, pt = enc.patch
    n = (fe.n_mels // pf) * (fe.frames // pt)
    blocks = transformer_flops(n, enc.width, enc.depth, enc.mlp_ratio)
    return recipe.train.batch_size * (3 * blocks + 2 * n * 2 * pf * pt * enc.width)


def wider(recipe, width: int, heads: int):  # noqa: ANN001, ANN201
    return with_value(with_value(recipe, "encoder.width", width), "encoder.heads", heads)


def pipeline(recipe, steps: int) -> dict[str, float]:  # noqa: ANN001
    """Real training on the real corpus (warm cache): what the data costs the loop."""
    root = resolve_data_root(recipe.data.cache)
    for task in recipe.data.corpus:
        prepare_task(task, root, log=lambda _m: None)
    bank = DataBank(root)
    t = time.perf_counter()
    sampler = CropSampler(bank.corpus(recipe), recipe.frontend.frames, bank.normalizer(recipe), 0)
    open_s = time.perf_counter() - t
    r = with_value(with_value(recipe, "train.steps", steps), "train.warmup_steps", 5)
    _, res = train(r, sampler, seed=0)
    per_step = res.wall_s / res.steps
    budget = recipe.train.steps
    wait_per_step = res.data_wait_s / res.steps
    return {
        "steps": res.steps,
        "open_s": round(open_s, 3),
        "step_s": round(per_step, 4),
        "wait_per_step_s": round(wait_per_step, 5),
        "wait_share": res.data_wait_s / res.wall_s,
        # over the trial's training budget: opening the cache once plus every step's wait
        "data_share": (open_s + wait_per_step * budget) / (open_s + per_step * budget),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--reps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--data-steps", type=int, default=80, help="real training steps, part 4")
    ap.add_argument("--out", default=str(default_out("throughput")), help="'' to keep nothing")
    args = ap.parse_args()

    recipe = load_spec(args.experiments).baseline
    dev = pick_device()
    bf16 = use_bf16(recipe.train.bf16, dev)
    native_bf16 = use_bf16(True, dev)
    peaks = {
        "fp32": matmul_peak(torch.float32, dev, True),
        "bf16": matmul_peak(torch.bfloat16, dev, native_bf16),
    }
    precision = "bf16" if bf16 else "fp32"
    peak = peaks[precision]
    print(
        f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
        + ("" if native_bf16 else " (no native bf16 here: emulated)")
        + f"; training runs in {precision}"
    )
    note = "" if bf16 else "no native bf16 on this machine: against the fp32 peak"
    figures, details = [], {"peaks_gflops": {k: round(v, 1) for k, v in peaks.items()}}
    details["precision"] = precision
    for width, heads, target in ((192, 3, 0.30), (384, 6, 0.40)):
        r = wider(recipe, width, heads)
        s = jepa_step_time(r, dev, bf16, args.reps)
        gflops = train_step_flops(r).total / s / 1e9
        details[f"width{width}"] = {
            "step_s": round(s, 4),
            "samples_per_s": round(r.train.batch_size / s, 1),
            "gflops_per_s": round(gflops, 1),
            "gflop_per_step": round(train_step_flops(r).total / 1e9, 2),
        }
        print(
            f"width {width}: {r.train.batch_size / s:.1f} samples/s, {gflops:.1f} GFLOP/s "
            f"({train_step_flops(r).total / 1e9:.2f} GFLOP a step)"
        )
        figures.append(
            Figure(
                f"share of {precision} peak, width {width}", gflops / peak, target, "", False, note
            )
        )
    s_jepa = details["width192"]["step_s"]
    s_vit = vit_step_time(recipe, dev, bf16, args.reps)
    f_jepa, f_vit = train_step_flops(recipe).total, vit_step_flops(recipe)
    details["plain_vit"] = {
        "step_s": round(s_vit, 4),
        "gflops_per_s": round(f_vit / s_vit / 1e9, 1),
        "gflop_per_step": round(f_vit / 1e9, 2),
    }
    # Time per FLOP against the plain ViT's: the cost of the JEPA's glue (gathers, masks,
    # EMA, two models' small kernels), whatever its FLOPs.
    per_flop = (s_jepa / f_jepa) / (s_vit / f_vit) - 1
    details["jepa_overhead_per_flop"] = round(per_flop, 3)
    print(
        f"plain ViT over all tokens: {s_vit * 1e3:.1f} ms a step ({f_vit / 1e9:.2f} GFLOP); "
        f"JEPA {s_jepa * 1e3:.1f} ms ({f_jepa / 1e9:.2f} GFLOP); time per FLOP "
        f"{per_flop:+.1%} against the ViT's"
    )
    figures.append(
        Figure("JEPA step over plain ViT step", s_jepa / s_vit - 1, 0.25, "", True, "extra time")
    )
    p = pipeline(recipe, args.data_steps)
    details["pipeline"] = p
    print(
        f"input pipeline: {p['wait_per_step_s'] * 1e3:.2f} ms a step waiting for data of "
        f"{p['step_s'] * 1e3:.1f} ms; opening the warm cache {p['open_s']:.2f} s"
    )
    figures.append(Figure("step time waiting for data", p["wait_share"], 0.02, "", True))
    figures.append(Figure("data share of a trial's training", p["data_share"], 0.02, "", True))
    keep("throughput", figures, details, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
