"""Masking strategies as pure, seeded samplers over the token grid.

Tokens are laid out on an (F, T) grid (frequency patches x time patches) and flattened
row-major: token = f * T + t. A sampler returns index tensors, never masked data, so it can be
tested without a model and reused by any encoder. Every sample in a batch gets the same number
of context and target tokens, which lets the model gather with one `torch.gather`.

Strategies (`MaskConfig.strategy`):

- `unstructured`: round(ratio * N) random tokens are targets, the rest is context.
- `time`: round(ratio * T) whole time columns are targets, laid out as `target_blocks`
  disjoint spans; every frequency row of a span is a target.
- `frequency`: round(ratio * F) whole frequency rows, as `target_blocks` disjoint bands.
- `multiblock` (I-JEPA): `target_blocks` rectangles, each covering a share of the grid drawn
  from `block_scale` with a time/frequency aspect drawn from `block_aspect`; one context
  rectangle covering a share drawn from `context_scale`, minus the targets unless `overlap` is
  `allow`. `ratio` is not used: the block sizes set it.

For the three ratio strategies the target share is met to within half a grid unit (a token, a
column or a row), clamped so that context and targets each keep at least one unit. The A-JEPA
curriculum (`curriculum`) replaces the strategy of a whole batch by a time-frequency-aware one
with a probability that grows linearly from 0 at the start of training to `curriculum_end`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.config import MaskConfig


@dataclass(frozen=True)
class Masks:
    context: torch.Tensor  # (B, Nc) long, sorted token indices the context encoder sees
    target: torch.Tensor  # (B, Nt) long, sorted token indices the predictor must predict
    # (B,) long: the first time column of each sample's crop in the encoder's position grid,
    # for crops shorter than the input (train.crop_frames); None: every crop starts at 0
    offset: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Masks:
        return Masks(
            self.context.to(device, non_blocking=non_blocking),
            self.target.to(device, non_blocking=non_blocking),
            None if self.offset is None else self.offset.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Masks:
        offset = None if self.offset is None else self.offset.pin_memory()
        return Masks(self.context.pin_memory(), self.target.pin_memory(), offset)


Grid = tuple[int, int]
# A sampler returns boolean (F*T,) masks (context, target) for one sample.
Sampler = Callable[[Grid, MaskConfig, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _count(ratio: float, units: int) -> int:
    """Units that become targets: the nearest count to ratio * units, keeping one of each."""
    return min(units - 1, max(1, round(ratio * units)))


def _uniform(lo_hi: tuple[float, float], g: torch.Generator) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _spans(length: int, covered: int, n: int, g: torch.Generator) -> torch.Tensor:
    """A boolean (length,) line with `covered` positions set as at most `n` disjoint spans."""
    n = max(1, min(n, covered, length - covered + 1))
    # Split `covered` into n positive span lengths and the rest into n + 1 gaps (inner gaps > 0).
    cuts = torch.randperm(covered - 1, generator=g)[: n - 1].sort().values + 1
    sizes = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([covered])]))
    free = length - covered - (n - 1)  # after one separating position between spans
    gaps = torch.zeros(n + 1, dtype=torch.long)
    if free > 0:
        gaps += torch.bincount(torch.randint(0, n + 1, (free,), generator=g), minlength=n + 1)
    gaps[1:n] += 1
    line = torch.zeros(length, dtype=torch.bool)
    pos = 0
    for i in range(n):
        pos += int(gaps[i])
        line[pos : pos + int(sizes[i])] = True
        pos += int(sizes[i])
    return line


def _unstructured(grid: Grid, cfg: MaskConfig, g: torch.Generator):
    n = grid[0] * grid[1]
    target = torch.zeros(n, dtype=torch.bool)
    target[torch.randperm(n, generator=g)[: _count(cfg.ratio, n)]] = True
    return ~target, target


def _time(grid: Grid, cfg: MaskConfig, g: torch.Generator):
    f, t = grid
    cols = _spans(t, _count(cfg.ratio, t), cfg.target_blocks, g)
    target = cols.unsqueeze(0).expand(f, t).flatten()
    return ~target, target.clone()


def _frequency(grid: Grid, cfg: MaskConfig, g: torch.Generator):
    f, t = grid
    rows = _spans(f, _count(cfg.ratio, f), cfg.target_blocks, g)
    target = rows.unsqueeze(1).expand(f, t).flatten()
    return ~target, target.clone()


def _rectangle(grid: Grid, scale: float, aspect: float, g: torch.Generator) -> torch.Tensor:
    """A boolean (F, T) rectangle of about scale * F * T tokens, time/frequency extent ~aspect."""
    f, t = grid
    area = scale * f * t
    h = min(f, max(1, round(math.sqrt(area / aspect))))
    w = min(t, max(1, round(area / h)))
    top = int(torch.randint(0, f - h + 1, (), generator=g))
    left = int(torch.randint(0, t - w + 1, (), generator=g))
    out = torch.zeros(f, t, dtype=torch.bool)
    out[top : top + h, left : left + w] = True
    return out


def _multiblock(grid: Grid, cfg: MaskConfig, g: torch.Generator):
    target = torch.zeros(grid, dtype=torch.bool)
    for _ in range(cfg.target_blocks):
        scale, aspect = _uniform(cfg.block_scale, g), _uniform(cfg.block_aspect, g)
        target |= _rectangle(grid, scale, aspect, g)
    for _ in range(20):  # a context block that the targets leave non-empty
        context = _rectangle(grid, _uniform(cfg.context_scale, g), 1.0, g)
        if cfg.overlap == "disjoint":
            context &= ~target
        if context.any():
            break
    else:
        context = ~target
    if not context.any():  # the targets cover the grid: give one of them back
        keep = int(torch.randint(0, target.numel(), (), generator=g))
        target.view(-1)[keep] = False
        context.view(-1)[keep] = True
    return context.flatten(), target.flatten()


MASKERS: dict[str, Sampler] = {
    "unstructured": _unstructured,
    "multiblock": _multiblock,
    "time": _time,
    "frequency": _frequency,
}
OVERLAP = ("disjoint", "allow")
# Strategies the A-JEPA curriculum may move towards ("none" disables it).
CURRICULUM = ("none", "time", "frequency", "multiblock", "unstructured")


def curriculum_chance(cfg: MaskConfig, progress: float) -> float:
    """Probability that a batch uses the curriculum strategy at `progress` in [0, 1]."""
    if cfg.curriculum == "none":
        return 0.0
    return cfg.curriculum_end * min(1.0, max(0.0, progress))


def _equalise(rows: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """Subsample each row's token indices at random to the batch minimum; sorted (B, K)."""
    k = min(len(r) for r in rows)
    out = [r[torch.randperm(len(r), generator=g)[:k]].sort().values for r in rows]
    return torch.stack(out)


def sample_masks(
    batch: int,
    grid: Grid,
    cfg: MaskConfig,
    seed: int,
    progress: float = 0.0,
    spare: int = 0,
) -> Masks:
    """Context and target indices for a batch; identical seeds give identical masks.

    `progress` (step / total steps) only matters when the curriculum is on. With `spare` > 0
    time columns of the encoder's grid beyond the crop's, each crop (`cfg.per_crop` samples in
    a row) gets an offset uniform in 0..spare, drawn after the masks.
    """
    g = torch.Generator().manual_seed(seed)
    strategy = cfg.strategy
    if cfg.curriculum != "none":
        # Drawn at every step, so the chance alone decides which batches switch.
        if float(torch.rand((), generator=g)) < curriculum_chance(cfg, progress):
            strategy = cfg.curriculum
    if strategy not in MASKERS:
        raise ValueError(f"unknown mask strategy {strategy!r}; known: {sorted(MASKERS)}")
    sampler = MASKERS[strategy]
    pairs = [sampler(grid, cfg, g) for _ in range(batch)]
    idx = torch.arange(grid[0] * grid[1])
    context = _equalise([idx[c] for c, _ in pairs], g)
    target = _equalise([idx[t] for _, t in pairs], g)
    offset = None
    if spare > 0:
        crops = max(1, batch // cfg.per_crop)
        offset = torch.randint(0, spare + 1, (crops,), generator=g)
        offset = offset.repeat_interleave(batch // crops)
    return Masks(context=context, target=target, offset=offset)


def apply_masks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens: x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
