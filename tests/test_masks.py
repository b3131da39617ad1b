"""Mask samplers: pure, seeded, and shaped as each strategy promises."""

from __future__ import annotations

import pytest
import torch

from model.config import MaskConfig
from model.masks import apply_masks, sample_masks

GRID = (5, 13)


@pytest.mark.parametrize("strategy", ["unstructured", "time", "frequency"])
def test_partition_and_determinism(strategy):
    cfg = MaskConfig(strategy=strategy, ratio=0.6)
    m = sample_masks(8, GRID, cfg, seed=3)
    n = GRID[0] * GRID[1]
    for c, t in zip(m.context, m.target, strict=True):
        assert set(c.tolist()).isdisjoint(t.tolist())
        assert sorted(c.tolist() + t.tolist()) == list(range(n))
    again = sample_masks(8, GRID, cfg, seed=3)
    assert torch.equal(m.target, again.target)
    assert not torch.equal(m.target, sample_masks(8, GRID, cfg, seed=4).target)


def test_time_masks_cover_whole_columns_and_frequency_whole_rows():
    t = sample_masks(4, GRID, MaskConfig("time", 0.5), 0).target
    f = sample_masks(4, GRID, MaskConfig("frequency", 0.5), 0).target
    for row in t:
        cols = {i % GRID[1] for i in row.tolist()}
        assert len(row) == len(cols) * GRID[0]
    for row in f:
        rows = {i // GRID[1] for i in row.tolist()}
        assert len(row) == len(rows) * GRID[1]


def test_unstructured_ratio():
    m = sample_masks(2, GRID, MaskConfig("unstructured", 0.6), 0)
    assert m.target.shape[1] == round(0.6 * 65)


def test_apply_masks_gathers_tokens():
    x = torch.arange(2 * 6 * 3).view(2, 6, 3)
    idx = torch.tensor([[0, 5], [1, 2]])
    out = apply_masks(x, idx)
    assert torch.equal(out[0, 1], x[0, 5]) and torch.equal(out[1, 0], x[1, 1])
