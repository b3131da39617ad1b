"""Floating-point operations of a JEPA training step, counted from the recipe.

Only matrix products count (2 FLOPs per multiply-add), the convention of throughput figures:
the patch embedding, every linear layer, and the two attention products (QK^T and AV).
Norms, GELU, softmax, the loss and the EMA update are left out; they are a few percent of the
step. A backward pass costs twice its forward (gradients of activations and of weights).

The token counts come from the recipe's own mask sampler (averaged over a few fixed draws), so
multiblock masks, whose sizes vary, are counted as the training sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import EncoderConfig, RecipeConfig, train_frames
from model.masks import sample_masks

_DRAWS = 16  # fixed mask draws averaged for the token counts


def transformer_flops(tokens: float, width: int, depth: int, mlp_ratio: float) -> float:
    """Forward FLOPs of `depth` pre-norm blocks over `tokens` tokens, per sample."""
    hidden = int(width * mlp_ratio)
    linear = 2 * tokens * (4 * width * width + 2 * width * hidden)  # qkv, proj, two MLP layers
    attention = 2 * 2 * tokens * tokens * width  # QK^T and AV over all heads
    return depth * (linear + attention)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step (the whole batch), by part."""

    context: float  # context encoder, forward + backward
    predictor: float  # predictor, forward + backward
    target: float  # target encoder, forward only (no gradient)
    context_tokens: float
    target_tokens: float

    @property
    def total(self) -> float:
        return self.context + self.predictor + self.target


def token_counts(recipe: RecipeConfig, grid: tuple[int, int]) -> tuple[float, float]:
    """Mean context and target tokens per sample over fixed mask draws (and, with a
    curriculum, over the whole schedule)."""
    ctx = tgt = 0.0
    for i in range(_DRAWS):
        m = sample_masks(1, grid, recipe.mask, seed=i, progress=i / max(_DRAWS - 1, 1))
        ctx += m.context.shape[1]
        tgt += m.target.shape[1]
    return ctx / _DRAWS, tgt / _DRAWS


def stem_flops(enc: EncoderConfig) -> tuple[float, float]:
    """FLOPs per token of the patch embedding: (forward, forward + backward). A backward
    needs the weight gradient alone where the input is the spectrogram (2x the forward), and
    also the activations' gradient after that (3x): the hMLP stem's later stages."""
    pf, pt = enc.patch
    if enc.stem != "hmlp":
        f = 2 * pf * pt * enc.width
        return f, 2 * f
    inner = max(enc.width // 4, 1)
    first = 2 * pf * pt * inner  # 16 sub-patches of pf * pt / 16 values each
    later = 2 * 4 * (4 * inner) * inner + 2 * (4 * inner) * enc.width
    return first + later, 2 * first + 3 * later


def train_step_flops(recipe: RecipeConfig) -> StepFlops:
    """FLOPs of one optimiser step of `recipe` (batch included)."""
    fe, enc, pred = recipe.frontend, recipe.encoder, recipe.predictor
    pf, pt = enc.patch
    grid = (fe.n_mels // pf, train_frames(recipe) // pt)  # a training crop's
    n_all = grid[0] * grid[1]
    n_ctx, n_tgt = token_counts(recipe, grid)
    patch, patch_train = stem_flops(enc)  # per token

    def blocks(tokens: float) -> float:
        return transformer_flops(tokens, enc.width, enc.depth, enc.mlp_ratio)

    # The patch embedding runs over every patch, the blocks over the kept tokens only.

    full = recipe.target.branch == "full-input"
    latent = recipe.target.source == "latent"  # input targets are the patches themselves
    out = enc.width if latent else pf * pt
    predictor = (
        2 * n_ctx * enc.width * pred.width  # into the predictor's width
        + transformer_flops(n_ctx + n_tgt, pred.width, pred.depth, pred.mlp_ratio)
        + 2 * n_tgt * pred.width * out  # out of it, at the targets only
    )
    b = recipe.train.batch_size
    m = recipe.mask.per_crop  # masks per crop: the context and predictor run once per mask,
    # the full-input target encoder once per crop, the targets-only one once per mask
    target = 0.0
    if latent:
        tm = 1 if full else m
        target = b * tm * (blocks(n_all if full else n_tgt) + n_all * patch)
    if recipe.loss.global_weight:
        # The clip-level term: the target encoder over the whole crop once (shared with a
        # full-input latent target; over another crop, never shared), and the head's two
        # layers (width -> 2 width -> width).
        if not (full and latent) or recipe.loss.global_view == "other":
            target += b * (blocks(n_all) + n_all * patch)
        pooled = grid[0] if recipe.loss.global_pool == "band" else 1  # vectors through the head
        predictor += 8 * enc.width * enc.width * pooled
    return StepFlops(
        context=b * m * (3 * blocks(n_ctx) + n_all * patch_train),
        predictor=3 * b * m * predictor,
        target=target,
        context_tokens=n_ctx,
        target_tokens=n_tgt,
    )
