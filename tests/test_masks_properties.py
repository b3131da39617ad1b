"""Property tests of the mask samplers over random grids, ratios, block settings and seeds."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import MaskConfig
from model.masks import sample_masks

grids = st.tuples(st.integers(2, 8), st.integers(2, 16))
ratios = st.floats(0.05, 0.95)
seeds = st.integers(0, 2**31 - 1)
ratio_strategies = st.sampled_from(["unstructured", "time", "frequency"])
blocks = st.integers(1, 5)


def ranges(lo: float, hi: float):
    return st.tuples(st.floats(lo, hi), st.floats(lo, hi)).map(lambda t: (min(t), max(t)))


@settings(max_examples=60, deadline=None)
@given(
    grid=grids,
    ratio=ratios,
    seed=seeds,
    strategy=ratio_strategies,
    batch=st.integers(1, 6),
    n_blocks=blocks,
)
def test_ratio_strategies_partition_meet_the_ratio_and_are_seeded(
    grid, ratio, seed, strategy, batch, n_blocks
):
    cfg = MaskConfig(strategy=strategy, ratio=ratio, target_blocks=n_blocks)
    m = sample_masks(batch, grid, cfg, seed)
    n = grid[0] * grid[1]
    # Equal token counts across the batch (the tensors are rectangular) and a full partition.
    assert m.context.shape[0] == m.target.shape[0] == batch
    assert m.context.shape[1] + m.target.shape[1] == n
    for c, t in zip(m.context.tolist(), m.target.tolist(), strict=True):
        assert not set(c) & set(t)
        assert sorted(c + t) == list(range(n))
    # The stated tolerance: the target share is within half a grid unit of the ratio, unless
    # clamped so that context and targets each keep at least one unit.
    units = {"unstructured": n, "time": grid[1], "frequency": grid[0]}[strategy]
    share = m.target.shape[1] / n
    clamped = min(units - 1, max(1, round(ratio * units))) != round(ratio * units)
    assert clamped or abs(share - ratio) <= 0.5 / units + 1e-9
    again = sample_masks(batch, grid, cfg, seed)
    assert torch.equal(m.context, again.context) and torch.equal(m.target, again.target)


@settings(max_examples=40, deadline=None)
@given(grid=grids, ratio=ratios, seed=seeds, n_blocks=blocks)
def test_time_spans_are_full_band_and_frequency_bands_full_length(grid, ratio, seed, n_blocks):
    f, t = grid
    cfg = MaskConfig("time", ratio, target_blocks=n_blocks)
    for tgt in sample_masks(3, grid, cfg, seed).target.tolist():
        cols = sorted({i % t for i in tgt})
        assert set(tgt) == {r * t + c for r in range(f) for c in cols}
        spans = 1 + sum(1 for a, b in zip(cols, cols[1:], strict=False) if b != a + 1)
        assert spans <= n_blocks
    cfg = MaskConfig("frequency", ratio, target_blocks=n_blocks)
    for tgt in sample_masks(3, grid, cfg, seed).target.tolist():
        rows = sorted({i // t for i in tgt})
        assert set(tgt) == {r * t + c for r in rows for c in range(t)}
        bands = 1 + sum(1 for a, b in zip(rows, rows[1:], strict=False) if b != a + 1)
        assert bands <= n_blocks


@settings(max_examples=60, deadline=None)
@given(
    grid=grids,
    seed=seeds,
    batch=st.integers(1, 6),
    n_blocks=blocks,
    scale=ranges(0.05, 0.5),
    aspect=ranges(0.3, 3.0),
    context=ranges(0.5, 1.0),
    overlap=st.sampled_from(["disjoint", "allow"]),
)
def test_multiblock(grid, seed, batch, n_blocks, scale, aspect, context, overlap):
    cfg = MaskConfig(
        "multiblock",
        target_blocks=n_blocks,
        block_scale=scale,
        block_aspect=aspect,
        context_scale=context,
        overlap=overlap,
    )
    m = sample_masks(batch, grid, cfg, seed)
    n = grid[0] * grid[1]
    assert m.context.shape[0] == m.target.shape[0] == batch
    assert m.context.shape[1] >= 1 and m.target.shape[1] >= 1
    # Targets: a union of n_blocks rectangles, none larger than the grid or its scale allows.
    biggest = max(
        min(grid[0], max(1, round((scale[1] * n / a) ** 0.5))) for a in aspect
    )  # rows of the tallest block
    assert m.target.shape[1] <= n_blocks * biggest * grid[1]
    for c, t in zip(m.context.tolist(), m.target.tolist(), strict=True):
        assert len(set(c)) == len(c) and len(set(t)) == len(t)
        assert all(0 <= i < n for i in c + t)
        if overlap == "disjoint":
            assert not set(c) & set(t)
    again = sample_masks(batch, grid, cfg, seed)
    assert torch.equal(m.context, again.context) and torch.equal(m.target, again.target)


@settings(max_examples=30, deadline=None)
@given(grid=grids, seed=seeds, ratio=ratios)
def test_curriculum_moves_from_the_strategy_to_the_curriculum_one(grid, seed, ratio):
    base = MaskConfig("unstructured", ratio)
    cur = MaskConfig("unstructured", ratio, curriculum="time", curriculum_end=1.0)
    f, t = grid
    # At the end of training every batch uses time masks: whole columns.
    for tgt in sample_masks(2, grid, cur, seed, progress=1.0).target.tolist():
        cols = {i % t for i in tgt}
        assert set(tgt) == {r * t + c for r in range(f) for c in cols}
    # With a zero end chance the curriculum never switches: the base strategy's share.
    off = MaskConfig("unstructured", ratio, curriculum="time", curriculum_end=0.0)
    m = sample_masks(2, grid, off, seed, progress=1.0)
    assert m.target.shape[1] == sample_masks(2, grid, base, seed).target.shape[1]
