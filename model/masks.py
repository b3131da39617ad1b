"""Masking strategies as pure, seeded samplers over the token grid.

Tokens are laid out on an (F, T) grid (frequency patches x time patches) and flattened
row-major: token = f * T + t. A sampler returns index tensors, never masked data, so it can be
tested without a model and reused by any encoder. Every sample in a batch gets the same number
of context and target tokens, which lets the model gather with one `torch.gather`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.config import MaskConfig


@dataclass(frozen=True)
class Masks:
    context: torch.Tensor  # (B, Nc) long, sorted token indices the context encoder sees
    target: torch.Tensor  # (B, Nt) long, sorted token indices the predictor must predict


def _unstructured(grid: tuple[int, int], cfg: MaskConfig, g: torch.Generator) -> torch.Tensor:
    """Random patches: a boolean (F*T,) target mask with round(ratio * N) targets."""
    n = grid[0] * grid[1]
    n_tgt = min(n - 1, max(1, round(cfg.ratio * n)))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:n_tgt]] = True
    return mask


def _time(grid: tuple[int, int], cfg: MaskConfig, g: torch.Generator) -> torch.Tensor:
    """Full-band time spans: whole time columns of the grid become targets."""
    f, t = grid
    n_cols = min(t - 1, max(1, round(cfg.ratio * t)))
    cols = torch.randperm(t, generator=g)[:n_cols]
    mask = torch.zeros(f, t, dtype=torch.bool)
    mask[:, cols] = True
    return mask.flatten()


def _frequency(grid: tuple[int, int], cfg: MaskConfig, g: torch.Generator) -> torch.Tensor:
    """Full-length frequency bands: whole frequency rows become targets."""
    f, t = grid
    n_rows = min(f - 1, max(1, round(cfg.ratio * f)))
    rows = torch.randperm(f, generator=g)[:n_rows]
    mask = torch.zeros(f, t, dtype=torch.bool)
    mask[rows, :] = True
    return mask.flatten()


MASKERS: dict[str, Callable[[tuple[int, int], MaskConfig, torch.Generator], torch.Tensor]] = {
    "unstructured": _unstructured,
    "time": _time,
    "frequency": _frequency,
}


def sample_masks(batch: int, grid: tuple[int, int], cfg: MaskConfig, seed: int) -> Masks:
    """Context and target indices for a batch; identical seeds give identical masks."""
    if cfg.strategy not in MASKERS:
        raise ValueError(f"unknown mask strategy {cfg.strategy!r}; known: {sorted(MASKERS)}")
    g = torch.Generator().manual_seed(seed)
    masks = torch.stack([MASKERS[cfg.strategy](grid, cfg, g) for _ in range(batch)])  # (B, N)
    idx = torch.arange(masks.shape[1]).expand_as(masks)
    # Each strategy yields a fixed target count per grid, so every row splits the same way.
    target = idx[masks].view(batch, -1)
    context = idx[~masks].view(batch, -1)
    return Masks(context=context, target=target)


def apply_masks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens: x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
