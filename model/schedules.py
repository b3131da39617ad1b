"""Pure schedule functions of the training step."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def momentum_at(step: int, total: int, start: float, end: float) -> float:
    """EMA momentum growing linearly from `start` to `end` (I-JEPA)."""
    return start + (end - start) * min(1.0, step / max(1, total))
