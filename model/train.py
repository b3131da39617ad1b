"""Pretraining loop: AdamW, warmup + cosine, EMA target, bf16 autocast on capable hardware.

`train(recipe, sampler, seed)` returns the model and a `TrainResult` whose history holds one
record per step (loss, learning rate, momentum, gradient norm) and, every `log_every` steps, the
collapse signals (target-feature spread across the batch, effective rank of the pooled target
and context embeddings). A non-finite or diverging loss ends training with `failed` set.
Checkpoints save the whole state (weights, optimiser, data and mask position) and resume from
it; `on_eval(step, model)` is called every `eval_every` steps and may stop training by
returning True (pruning).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch

from model.config import RecipeConfig
from model.features import CropSampler
from model.jepa import JEPA
from model.masks import sample_masks
from model.schedules import lr_at, momentum_at

OnLog = Callable[[dict[str, float]], None]
OnEval = Callable[[int, JEPA], bool | None]


@cache
def cpu_has_bf16() -> bool:
    """bf16 autocast pays on CPUs with native bf16 dot products; elsewhere it is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(enabled: bool, device: torch.device) -> bool:
    if not enabled:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_s: float = 0.0
    samples_per_s: float = 0.0
    failed: str | None = None  # reason, when the loss went non-finite or diverged
    stopped: str | None = None  # reason, when the evaluation hook ended training early
    resumed_from: int = 0  # the step a checkpoint resumed at (0: from scratch)


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values: ~1 when features collapse."""
    s = torch.linalg.svdvals(x.float() - x.float().mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and the mask token (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or p.shape[:2] == (1, 1) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def save_checkpoint(
    path: Path, model: JEPA, opt: torch.optim.Optimizer, sampler: CropSampler, result: TrainResult
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": result.steps,
        "history": result.history,
        "sampler_rng": json.dumps(sampler.rng.bit_generator.state),
        "wall_s": result.wall_s,
        "config": json.dumps(dataclasses.asdict(model.recipe)),  # what built these weights
        "normalizer": [sampler.norm.mean, sampler.norm.std],  # what the inputs were scaled by
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, model: JEPA, opt: torch.optim.Optimizer, sampler: CropSampler, result: TrainResult
) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
    result.steps = result.resumed_from = int(state["step"])
    result.history = list(state["history"])
    result.wall_s = float(state["wall_s"])


def train(
    recipe: RecipeConfig,
    sampler: CropSampler,
    seed: int,
    on_log: OnLog | None = None,
    on_eval: OnEval | None = None,
    checkpoint: Path | None = None,
    device: str | None = None,
) -> tuple[JEPA, TrainResult]:
    """Pretrain a JEPA on crops from `sampler`.

    `on_log` receives every step's record as it is made. With `checkpoint`, training resumes
    from that file when it exists and writes it every `train.checkpoint_every` steps and at the
    end.
    """
    tc = recipe.train
    dev = pick_device(device)
    torch.manual_seed(seed)
    model = JEPA(recipe).to(dev)
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.95))
    bf16 = use_bf16(tc.bf16, dev)
    result = TrainResult()
    if checkpoint is not None and checkpoint.exists():
        load_checkpoint(checkpoint, model, opt, sampler, result)
    first_loss = result.history[0]["loss"] if result.history else None
    t0 = time.perf_counter() - result.wall_s
    samples_before = result.steps * tc.batch_size
    t_start = time.perf_counter()
    model.train()
    for step in range(result.steps, tc.steps):
        lr = lr_at(step, tc.steps, tc.lr, tc.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x = sampler.batch(tc.batch_size).to(dev, non_blocking=True)
        masks = sample_masks(
            tc.batch_size, model.grid, recipe.mask, seed * 1_000_003 + step, step / tc.steps
        ).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x, masks)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        value = float(out.loss.detach())
        if first_loss is None:
            first_loss = value
        if not math.isfinite(value) or not math.isfinite(grad_norm):
            result.failed = f"loss became non-finite at step {step} (lr {lr:.3g})"
            break
        if value > 1e3 * max(first_loss, 1e-3):
            result.failed = f"loss diverged at step {step}: {value:.3g} (first {first_loss:.3g})"
            break
        opt.step()
        m = momentum_at(step, tc.steps, tc.ema_start, tc.ema_end)
        model.update_target(m)
        result.steps = step + 1
        rec = {"step": step, "loss": value, "lr": lr, "momentum": m, "grad_norm": grad_norm}
        if step % tc.log_every == 0 or step == tc.steps - 1:
            pooled = out.targets.detach().float().mean(1)  # (B, D)
            rec["target_std"] = float(pooled.std(0).mean())
            rec["target_rank"] = effective_rank(pooled)
            rec["context_rank"] = effective_rank(out.context.detach().float().mean(1))
        result.history.append(rec)
        if on_log is not None:
            on_log(rec)
        result.wall_s = time.perf_counter() - t0
        every = tc.checkpoint_every
        if checkpoint is not None and every and result.steps % every == 0:
            save_checkpoint(checkpoint, model, opt, sampler, result)
        if on_eval is not None and tc.eval_every and result.steps % tc.eval_every == 0:
            model.eval()
            stop = on_eval(result.steps, model)
            model.train()
            if stop:
                result.stopped = f"stopped by the evaluation hook at step {result.steps}"
                break
    result.wall_s = time.perf_counter() - t0
    ran = result.steps * tc.batch_size - samples_before
    result.samples_per_s = ran / max(time.perf_counter() - t_start, 1e-9)
    if checkpoint is not None and result.failed is None:
        save_checkpoint(checkpoint, model, opt, sampler, result)
    model.eval()
    return model, result
