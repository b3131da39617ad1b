"""Property tests of the mask samplers over random grids, ratios and seeds."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import MaskConfig
from model.masks import sample_masks

grids = st.tuples(st.integers(2, 8), st.integers(2, 16))
ratios = st.floats(0.05, 0.95)
seeds = st.integers(0, 2**31 - 1)
strategies = st.sampled_from(["unstructured", "time", "frequency"])


@settings(max_examples=60, deadline=None)
@given(grid=grids, ratio=ratios, seed=seeds, strategy=strategies, batch=st.integers(1, 6))
def test_disjoint_complete_equal_counts_and_seeded(grid, ratio, seed, strategy, batch):
    cfg = MaskConfig(strategy=strategy, ratio=ratio)
    m = sample_masks(batch, grid, cfg, seed)
    n = grid[0] * grid[1]
    # Equal token counts across the batch (the tensors are rectangular) and a full partition.
    assert m.context.shape[0] == m.target.shape[0] == batch
    assert m.context.shape[1] + m.target.shape[1] == n
    assert m.context.shape[1] >= 1 and m.target.shape[1] >= 1
    for c, t in zip(m.context.tolist(), m.target.tolist(), strict=True):
        assert not set(c) & set(t)
        assert sorted(c + t) == list(range(n))
    # The ratio is met to within one unit of the strategy's granularity.
    unit = {"unstructured": 1, "time": grid[0], "frequency": grid[1]}[strategy]
    assert abs(m.target.shape[1] - ratio * n) <= unit + 1e-9 or m.context.shape[1] == unit
    again = sample_masks(batch, grid, cfg, seed)
    assert torch.equal(m.context, again.context) and torch.equal(m.target, again.target)


@settings(max_examples=40, deadline=None)
@given(grid=grids, ratio=ratios, seed=seeds)
def test_time_spans_are_full_band_and_frequency_bands_full_length(grid, ratio, seed):
    f, t = grid
    for tgt in sample_masks(3, grid, MaskConfig("time", ratio), seed).target.tolist():
        cols = {i % t for i in tgt}
        assert set(tgt) == {r * t + c for r in range(f) for c in cols}
    for tgt in sample_masks(3, grid, MaskConfig("frequency", ratio), seed).target.tolist():
        rows = {i // t for i in tgt}
        assert set(tgt) == {r * t + c for r in rows for c in range(t)}
