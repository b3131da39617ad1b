"""What a study's training will take on this machine, before it runs (`abl run --dry-run
--estimate`).

Each cell (a recipe; its seeds share it) trains a few steps of its own model on random crops,
as `model.precision` times its candidates: one warm-up, then two rounds of two timed steps
per candidate (precision x attention kernel), the fastest kept, with the threads each local
worker will have. Its seconds a step times its steps is its training time; the trials, handed
in order to the first free worker, give the study's. Data loading runs beside the steps and is
not counted, nor are the probes. A cell is timed alone, while a study's workers share the
machine: the default study's trials then trained about 15 % slower than timed. A cell past
`MAX_TIMED_FLOPS` a step is not run (one step could take minutes); it is estimated from its
FLOPs at the rate the timed cells reached. bf16 asked for where it is emulated is not timed
either (about 100x slower than fp32).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.config import RecipeConfig
from model.flops import train_step_flops
from model.precision import candidates, fastest, native_bf16

# Timing rounds per candidate, the best kept: with one, two cells of equal FLOPs read 0.24 and
# 0.20 s a step; with two, 0.18 and 0.18.
ROUNDS = 2
# A step past this many FLOPs is not timed: 200 GFLOP take about 5 s on one core here, about
# twelve times the default recipe's 17.
MAX_TIMED_FLOPS = 200e9


@dataclass(frozen=True)
class CellTime:
    """One cell's training time: `step_s` measured (timed) or from its FLOPs (not timed; None
    where nothing was timed to take a rate from)."""

    step_s: float | None
    steps: int
    flops: float
    precision: str  # what was timed: fp32/explicit, ...; "" where not timed
    emulated: bool = False  # bf16 asked for where it is emulated: not timed, no estimate

    @property
    def timed(self) -> bool:
        return bool(self.precision)

    @property
    def train_s(self) -> float | None:
        return None if self.step_s is None else self.step_s * self.steps


def time_cells(
    recipes: Sequence[RecipeConfig], device: torch.device, threads: int
) -> list[CellTime]:
    """Each recipe's training time on `device` with `threads` CPU threads (see the module)."""
    from model.train import step_timer  # imports the training loop: only when timing

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    native = native_bf16(device)
    flops = [train_step_flops(r).total for r in recipes]
    timed: dict[int, tuple[float, str]] = {}  # recipe index -> (seconds a step, what ran)
    emulated = {i for i, r in enumerate(recipes) if r.train.precision == "bf16" and not native}
    try:
        for i, r in enumerate(recipes):
            if flops[i] > MAX_TIMED_FLOPS or i in emulated:
                continue
            options = candidates(r.train.precision, native)
            choice, seconds = fastest(options, step_timer(r, device), rounds=ROUNDS)
            timed[i] = (seconds[choice], f"{choice.precision}/{choice.attention}")
    finally:
        torch.set_num_threads(before)
    rate = max((flops[i] / s for i, (s, _) in timed.items()), default=None)  # FLOP/s
    out = []
    for i, r in enumerate(recipes):
        if i in timed:
            out.append(CellTime(timed[i][0], r.train.steps, flops[i], timed[i][1]))
        else:
            step_s = None if rate is None or i in emulated else flops[i] / rate
            out.append(CellTime(step_s, r.train.steps, flops[i], "", i in emulated))
    return out


def makespan(seconds: Sequence[float], workers: int) -> float:
    """Wall time of jobs taken in order, each by the first worker free."""
    free = [0.0] * max(1, min(workers, len(seconds)))
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free) if seconds else 0.0


def _duration(s: float) -> str:
    return f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def estimate_lines(
    cells: Sequence[tuple[str, RecipeConfig]],
    per_trial: Sequence[int],
    device: torch.device,
    workers: int,
    threads: int,
) -> list[str]:
    """Lines for `abl run --dry-run --estimate`: each cell's training time (cells: (name,
    recipe)), and the study's over its trials (per_trial: each trial's cell, in run order)."""
    times = time_cells([r for _, r in cells], device, threads)
    where = "the GPU" if device.type == "cuda" else f"{threads} CPU thread(s) a worker"
    cap = f"{MAX_TIMED_FLOPS / 1e9:.0f} GFLOP"
    lines = [
        f"training time on this machine ({where}; a few steps of each cell timed on random "
        "crops; data loading and probes not counted):"
    ]
    for (name, _), c in zip(cells, times, strict=True):
        size = f"{c.flops / 1e9:,.1f} GFLOP a step"
        if c.emulated:
            lines.append(f"  {name}: {size}, bf16 emulated here (about 100x fp32): not timed")
            continue
        if c.train_s is None:
            lines.append(f"  {name}: {size}, over {cap}: too large to time here")
            continue
        how = c.precision if c.timed else f"over {cap}, not timed: at the timed cells' rate"
        lines.append(
            f"  {name}: {c.step_s:.2f} s a step x {c.steps} steps = {_duration(c.train_s)} a "
            f"trial ({size}, {how})"
        )
    if all(c.train_s is not None for c in times):
        total = makespan([times[i].train_s for i in per_trial], workers)
        lines.append(
            f"  {len(per_trial)} trials on {workers} worker(s): about {_duration(total)} of "
            "training"
        )
    return lines
