"""Training throughput against a plain reference step and this machine's matmul peak, and the
input pipeline, in one run.

1. The matmul peak of this machine (fp32 and bf16, large square products).
2. abl's training step against the plain reference step (bench/plain_step.py) at the I-JEPA
   configuration below, in every precision the machine runs natively (fp32, and bf16 where the
   CPU has avx512_bf16 or AMX, or on CUDA), timed in alternating rounds: samples per second and
   the ratio abl / plain (target at least 1.5x). abl runs with the attention kernel its
   measurement picks (model/precision.py); the other kernel is timed in the same rounds.
3. A JEPA training step (mask sampling, both encoders, predictor, backward, AdamW, EMA) of the
   default recipe at encoder width 192 and 384, in the precision `auto` picks here: samples per
   second and achieved GFLOP/s, the FLOPs counted from the recipe (model/flops.py), as a share
   of that precision's peak.
4. The JEPA's own overhead: its step time against a plain ViT forward and backward (and AdamW)
   over every token of the same crops.
5. The input pipeline: `train()` on the real corpus with a warm feature cache; the share of
   step time spent waiting for a batch, and the data cost (opening the cache plus waiting) as a
   share of the trial's training.

    .venv/bin/python -m bench.throughput            # appends to bench/results/throughput.jsonl
    .venv/bin/python -m bench.throughput --only-reference --rounds 7   # part 2 alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import Figure, default_out, keep
from bench.plain_step import PlainStep
from model.config import train_frames
from model.data.datasets import prepare_task, resolve_data_root
from model.data.features import CropSampler
from model.flops import train_step_flops, transformer_flops
from model.jepa import JEPA, input_channels
from model.masks import sample_masks
from model.precision import Choice, choose, native_bf16, use_attention
from model.train import make_optimizer, param_groups, pick_device, step_timer, train, train_step
from model.vit import ViT
from orchestrator.bank import DataBank
from orchestrator.spec import load_spec, with_value

ROOT = Path(__file__).resolve().parents[1]
# The configuration of the comparison with I-JEPA's code, over the baseline recipe.
REFERENCE_CONFIG = {
    "encoder.depth": 4,
    "encoder.width": 192,
    "encoder.heads": 3,
    "predictor.depth": 4,
    "predictor.width": 96,
    "mask.strategy": "multiblock",
    "mask.target_blocks": 4,
    "target.branch": "full-input",
    "target.norm": "layer",
    "loss.kind": "smooth_l1",
    "train.batch_size": 64,
}


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


def jepa_step_time(recipe, dev: torch.device, choice: Choice, reps: int) -> float:  # noqa: ANN001
    """Seconds per training step of `recipe` on fixed random crops; masks drawn in the step."""
    torch.manual_seed(0)
    model = JEPA(recipe).to(dev).train()
    use_attention(model, choice.attention)
    opt = make_optimizer(model, recipe, dev)
    tc = recipe.train
    x = torch.randn(
        tc.batch_size,
        input_channels(recipe),
        recipe.frontend.n_mels,
        train_frames(recipe),
        device=dev,
    )
    step = iter(range(10**9))

    def one() -> None:
        i = next(step)
        masks = sample_masks(
            tc.batch_size, model.grid, recipe.mask, i, 0.5, model.spare_columns
        ).to(dev)
        train_step(model, opt, x, masks, 0.996, choice.bf16)

    return best_time(one, dev, reps)


def abl_step(recipe, dev: torch.device, x: torch.Tensor, choice: Choice, draws: int = 8):  # noqa: ANN001, ANN201
    """abl's training step of `recipe` on crops `x` and pre-drawn masks (the training loop
    draws them ahead in a thread, so they are not part of the step)."""
    torch.manual_seed(0)
    model = JEPA(recipe).to(dev).train()
    use_attention(model, choice.attention)
    opt = make_optimizer(model, recipe, dev)
    b = x.shape[0]
    masks = [sample_masks(b, model.grid, recipe.mask, i, 0.5).to(dev) for i in range(draws)]
    m = recipe.train.ema_start
    step = iter(range(10**9))
    return lambda: train_step(model, opt, x, masks[next(step) % draws], m, choice.bf16)


def alternate(
    steps: dict[str, Callable[[], object]], dev: torch.device, rounds: int, reps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process CPU seconds per step of each, per round: every round times `reps`
    steps of each in turn (after one warm-up round), so a load that comes and goes on the
    machine falls on all alike. CPU seconds are the work done whatever the waiting; on a
    shared machine they are the steadier of the two."""
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds + 1):
        for name, fn in steps.items():
            sync(dev)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(reps):
                fn()
            sync(dev)
            if r:
                wall[name].append((time.perf_counter() - t) / reps)
                cpu[name].append((time.process_time() - c) / reps)
    return wall, cpu


def _paired(slow: list[float], fast: list[float]) -> list[float]:
    """Per round, how many times faster `fast` ran than `slow` (the two ran back to back)."""
    return [s / f for s, f in zip(slow, fast, strict=True)]


def against_plain(recipe, dev: torch.device, rounds: int, reps: int) -> tuple[list, dict]:  # noqa: ANN001
    """abl's step against the plain step, in fp32 and (where native) bf16, one run."""
    for path, value in REFERENCE_CONFIG.items():
        recipe = with_value(recipe, path, value)
    timings = resolve_data_root(recipe.data.cache) / "timings"
    precisions = ["fp32", "bf16"] if native_bf16(dev) else ["fp32"]
    fe, b = recipe.frontend, recipe.train.batch_size
    x = torch.randn(b, 1, fe.n_mels, fe.frames, generator=torch.Generator().manual_seed(0))
    x = x.to(dev)
    steps, chosen = {}, {}
    for p in precisions:
        chosen[p] = choose(p, recipe, dev, step_timer(recipe, dev), timings)
        other = Choice(p, "sdpa" if chosen[p].attention == "explicit" else "explicit")
        steps[f"abl {p}"] = abl_step(recipe, dev, x, chosen[p])
        torch.manual_seed(0)
        steps[f"plain {p}"] = PlainStep(recipe, x, bf16=p == "bf16")
        steps[f"abl {p}, other attention"] = abl_step(recipe, dev, x, other)
    flops = {"abl": train_step_flops(recipe).total, "plain": steps["plain fp32"].flops()}
    times, cpu = alternate(steps, dev, rounds, reps)
    details: dict = {
        "config": REFERENCE_CONFIG,
        "rounds": rounds,
        "reps": reps,
        "gflop_per_step": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "samples_per_s": {k: round(b / min(v), 1) for k, v in times.items()},
        "median_samples_per_s": {k: round(b / statistics.median(v), 1) for k, v in times.items()},
        "attention": {p: c.attention for p, c in chosen.items()},
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    figures = []
    for p in precisions:
        ratios = _paired(times[f"plain {p}"], times[f"abl {p}"])
        ratio = statistics.median(ratios)
        cpu_ratio = statistics.median(_paired(cpu[f"plain {p}"], cpu[f"abl {p}"]))
        details[f"ratio_{p}"] = round(ratio, 3)
        details[f"ratio_{p}_rounds"] = [round(r, 3) for r in ratios]
        details[f"cpu_ratio_{p}"] = round(cpu_ratio, 3)
        sps = details["samples_per_s"]
        print(
            f"{p}: abl {sps[f'abl {p}']:.0f} samples/s ({chosen[p].attention} attention; "
            f"{sps[f'abl {p}, other attention']:.0f} with the other), plain "
            f"{sps[f'plain {p}']:.0f}: abl / plain {ratio:.2f}x (median of the rounds, "
            f"{min(ratios):.2f} to {max(ratios):.2f}; in CPU time {cpu_ratio:.2f}x)"
        )
        figures.append(Figure(f"abl step over the plain step, {p}", ratio, 1.5, "x", False))
    if "bf16" in precisions:
        gain = statistics.median(_paired(times["abl fp32"], times["abl bf16"]))
        details["bf16_over_fp32"] = round(gain, 3)
        print(f"abl bf16 over abl fp32: {gain:.2f}x")
    return figures, details


def vit_step_time(recipe, dev: torch.device, choice: Choice, reps: int) -> float:  # noqa: ANN001
    """Seconds per step of a plain ViT (the same encoder) over every token of the crops:
    forward, a mean-square loss, backward, AdamW."""
    torch.manual_seed(0)
    tc, fe = recipe.train, recipe.frontend
    vit = ViT(recipe.encoder, fe.n_mels, fe.frames).to(dev).train()
    use_attention(vit, choice.attention)
    opt = torch.optim.AdamW(
        param_groups(vit, tc.weight_decay), lr=tc.lr, fused=dev.type in ("cpu", "cuda") or None
    )
    x = torch.randn(tc.batch_size, 1, fe.n_mels, fe.frames, device=dev)

    def one() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=choice.bf16):
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
    sampler = CropSampler(bank.corpus(recipe), train_frames(recipe), bank.normalizer(recipe), 0)
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
    ap.add_argument("--reps", type=int, default=10, help="steps per timed round, part 3")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds, part 2")
    ap.add_argument("--reference-reps", type=int, default=3, help="steps per round, part 2")
    ap.add_argument("--only-reference", action="store_true", help="parts 1 and 2 only")
    ap.add_argument("--data-steps", type=int, default=80, help="real training steps, part 5")
    ap.add_argument("--out", default=str(default_out("throughput")), help="'' to keep nothing")
    args = ap.parse_args()

    recipe = load_spec(args.experiments).baseline
    dev = pick_device()
    native = native_bf16(dev)
    timings = resolve_data_root(recipe.data.cache) / "timings"
    peaks = {
        "fp32": matmul_peak(torch.float32, dev, True),
        "bf16": matmul_peak(torch.bfloat16, dev, native),
    }
    print(
        f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
        + ("" if native else " (no native bf16 here: emulated)")
    )
    details: dict = {"peaks_gflops": {k: round(v, 1) for k, v in peaks.items()}}
    figures, details["reference"] = against_plain(recipe, dev, args.rounds, args.reference_reps)
    if args.only_reference:
        keep("throughput", figures, details, Path(args.out) if args.out else None)
        return
    choices = {}
    for width, heads, target in ((192, 3, 0.30), (384, 6, 0.40)):
        r = wider(recipe, width, heads)
        choices[width] = c = choose(r.train.precision, r, dev, step_timer(r, dev), timings)
        s = jepa_step_time(r, dev, c, args.reps)
        gflops = train_step_flops(r).total / s / 1e9
        details[f"width{width}"] = {
            "precision": c.precision,
            "attention": c.attention,
            "step_s": round(s, 4),
            "samples_per_s": round(r.train.batch_size / s, 1),
            "gflops_per_s": round(gflops, 1),
            "gflop_per_step": round(train_step_flops(r).total / 1e9, 2),
        }
        print(
            f"width {width} ({c.precision}, {c.attention} attention): "
            f"{r.train.batch_size / s:.1f} samples/s, {gflops:.1f} GFLOP/s "
            f"({train_step_flops(r).total / 1e9:.2f} GFLOP a step)"
        )
        figures.append(
            Figure(
                f"share of {c.precision} peak, width {width}",
                gflops / peaks[c.precision],
                target,
                "",
                False,
                f"{r.train.precision} ran as {c.precision} here",
            )
        )
    s_jepa = details["width192"]["step_s"]
    s_vit = vit_step_time(recipe, dev, choices[192], args.reps)
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
