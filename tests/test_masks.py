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


def test_crop_offsets_are_shared_by_a_crops_masks_and_span_the_spare_columns():
    cfg = MaskConfig(per_crop=2)
    assert sample_masks(8, (5, 6), cfg, seed=0).offset is None  # full-length crops
    m = sample_masks(400, (5, 6), cfg, seed=0, spare=7)
    assert m.offset.shape == (400,)
    assert torch.equal(m.offset[::2], m.offset[1::2])  # one offset a crop
    assert set(m.offset.tolist()) == set(range(8))
    # The offsets are drawn after the masks: the masks are those of full-length crops.
    assert torch.equal(m.target, sample_masks(400, (5, 6), cfg, seed=0).target)
    assert torch.equal(m.to("cpu").offset, m.offset)


def test_apply_masks_gathers_tokens():
    x = torch.arange(2 * 6 * 3).view(2, 6, 3)
    idx = torch.tensor([[0, 5], [1, 2]])
    out = apply_masks(x, idx)
    assert torch.equal(out[0, 1], x[0, 5]) and torch.equal(out[1, 0], x[1, 1])


def test_curriculum_chance_grows_linearly_to_its_end_value():
    from model.masks import curriculum_chance

    cfg = MaskConfig("multiblock", curriculum="time", curriculum_end=0.8)
    assert [curriculum_chance(cfg, p) for p in (0.0, 0.5, 1.0)] == [0.0, 0.4, 0.8]
    assert curriculum_chance(MaskConfig(), 1.0) == 0.0


def test_curriculum_share_of_switched_batches_follows_the_chance():
    cfg = MaskConfig("unstructured", 0.5, curriculum="frequency", curriculum_end=1.0)
    f, t = GRID

    def is_frequency(m):
        return all(len(row) == len({i // t for i in row}) * t for row in m.target.tolist())

    early = sum(is_frequency(sample_masks(2, GRID, cfg, s, progress=0.1)) for s in range(200))
    late = sum(is_frequency(sample_masks(2, GRID, cfg, s, progress=0.9)) for s in range(200))
    assert early < 50 < 150 < late  # ~10 % and ~90 % of the batches


def test_multiblock_i_jepa_defaults_on_the_reference_grid():
    cfg = MaskConfig("multiblock", target_blocks=4)
    m = sample_masks(16, GRID, cfg, 0)
    share = m.target.shape[1] / 65
    assert 0.15 <= share <= 0.8  # 4 blocks of 15-20 %, overlapping
    assert m.context.shape[1] >= 1
