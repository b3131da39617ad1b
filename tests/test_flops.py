"""The analytic FLOP count of a training step against torch's own count of the same step."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.config import train_frames
from model.flops import train_step_flops
from model.jepa import JEPA, input_views
from model.masks import sample_masks
from model.precision import use_attention
from orchestrator.spec import load_spec, with_value
from tests.test_grid import ROOT


def counted_step_flops(recipe, attention: str = "sdpa") -> float:
    """FLOPs torch counts for one forward and backward of the JEPA (matmuls, convolutions and
    attention), with the mask the recipe's sampler draws."""
    model = JEPA(recipe)
    use_attention(model, attention)
    fe = recipe.frontend
    x = torch.randn(recipe.train.batch_size, input_views(recipe), fe.n_mels, train_frames(recipe))
    b = recipe.train.batch_size * recipe.mask.per_crop
    masks = sample_masks(b, model.grid, recipe.mask, seed=0, spare=model.spare_columns)
    # The math attention kernel, whose matrix products torch counts (the fused CPU kernel it
    # would otherwise pick is not counted at all).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, masks).loss.backward()
    return float(counter.get_total_flops())


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"loss.global_weight": 0.0},
        {"target.branch": "full-input"},
        {"target.branch": "full-input", "loss.global_weight": 0.0},
        {"target.source": "input", "loss.global_weight": 0.0},
        {"loss.global_view": "other"},
        {"loss.global_view": "other", "target.branch": "full-input"},
        {"loss.global_pool": "band"},
        {"mask.per_crop": 2},
        {"mask.per_crop": 2, "target.branch": "full-input"},
        {"mask.per_crop": 2, "loss.global_view": "other"},
        {"mask.strategy": "time"},
        {"encoder.width": 384, "encoder.heads": 6},
        {"encoder.patch": (16, 8)},
        {"encoder.stem": "hmlp"},
        {"encoder.stem": "hmlp", "encoder.patch": (16, 8), "target.branch": "full-input"},
        {"predictor.depth": 4},
        {"train.crop_frames": 96},
        {"train.crop_frames": 96, "target.branch": "full-input", "mask.per_crop": 2},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
def test_analytic_count_matches_torchs_count(changes: dict) -> None:
    recipe = load_spec(ROOT / "experiments.yaml").baseline
    recipe = with_value(recipe, "train.batch_size", 2)
    for path, value in changes.items():
        recipe = with_value(recipe, path, value)
    analytic = train_step_flops(recipe).total
    counted = counted_step_flops(recipe)
    assert analytic == pytest.approx(counted, rel=0.01)


def test_explicit_attention_does_the_counted_work() -> None:
    """The explicit kernel's two products are the ones the count assumes, no more."""
    recipe = with_value(load_spec(ROOT / "experiments.yaml").baseline, "train.batch_size", 2)
    counted = counted_step_flops(recipe, attention="explicit")
    assert train_step_flops(recipe).total == pytest.approx(counted, rel=0.01)
