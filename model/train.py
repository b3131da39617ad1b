"""Pretraining loop: AdamW, warmup + cosine, EMA target, bf16 autocast on capable CPUs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import torch

from model.config import RecipeConfig
from model.features import CropSampler
from model.jepa import JEPA
from model.masks import sample_masks
from model.schedules import lr_at, momentum_at


@cache
def cpu_has_bf16() -> bool:
    """bf16 autocast pays on CPUs with native bf16 dot products; elsewhere it is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_s: float = 0.0
    samples_per_s: float = 0.0
    failed: str | None = None  # reason, when the loss went non-finite or diverged


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


def train(
    recipe: RecipeConfig,
    sampler: CropSampler,
    seed: int,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[JEPA, TrainResult]:
    """Pretrain a JEPA on crops from `sampler`; `on_log` receives each logged record."""
    tc = recipe.train
    torch.manual_seed(seed)
    model = JEPA(recipe)
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.95))
    use_bf16 = tc.bf16 and cpu_has_bf16()
    result = TrainResult()
    first_loss: float | None = None
    t0 = time.perf_counter()
    model.train()
    for step in range(tc.steps):
        lr = lr_at(step, tc.steps, tc.lr, tc.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x = sampler.batch(tc.batch_size)
        masks = sample_masks(tc.batch_size, model.grid, recipe.mask, seed * 1_000_003 + step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss, tgt = model(x, masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        value = float(loss.detach())
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
        if step % tc.log_every == 0 or step == tc.steps - 1:
            pooled = tgt.mean(1)  # (B, D)
            rec = {
                "step": step,
                "loss": value,
                "lr": lr,
                "momentum": m,
                "grad_norm": grad_norm,
                "target_std": float(pooled.std(0).mean()),
                "target_rank": effective_rank(pooled),
            }
            result.history.append(rec)
            if on_log is not None:
                on_log(rec)
    result.wall_s = time.perf_counter() - t0
    result.samples_per_s = result.steps * tc.batch_size / max(result.wall_s, 1e-9)
    model.eval()
    return model, result
