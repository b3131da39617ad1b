"""The audio JEPA: context encoder, EMA target encoder and a narrow predictor."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.config import LossConfig, PredictorConfig, RecipeConfig, TargetConfig, train_frames
from model.masks import Masks, apply_masks
from model.vit import Block, ViT, init_weights, sincos_2d

BRANCHES = ("targets-only", "full-input")
TARGET_NORMS = ("none", "layer", "instance", "batch", "position")
LOSSES = ("l2", "smooth_l1", "cosine")
TARGET_SOURCES = ("latent", "input")
GLOBAL_VIEWS = ("same", "other")
GLOBAL_POOLS = ("clip", "band")
GLOBAL_LOSSES = ("l2", "nce")


def input_views(recipe: RecipeConfig) -> int:
    """Crops of one recording a training step takes per row: 2 where the clip-level term reads
    another crop of the same recording (channel 1), else 1. Where `hears_other`, the sampler
    adds one more channel after them: the crop as the context encoder hears it."""
    lc = recipe.loss
    return 2 if lc.global_weight and lc.global_view == "other" else 1


def hears_other(recipe: RecipeConfig) -> bool:
    """Whether the context encoder hears the crop otherwise than the target encoder: mixed
    with another (`data.mix`) or at another level (`data.gain_db`), in a channel of its own."""
    return bool(recipe.data.mix or recipe.data.gain_db)


def input_channels(recipe: RecipeConfig) -> int:
    """Channels of the tensor a training step takes: the views, plus the context encoder's
    input where it differs (`hears_other`)."""
    return input_views(recipe) + (1 if hears_other(recipe) else 0)


class StepOutput(NamedTuple):
    loss: torch.Tensor  # scalar: the prediction loss plus the weighted anti-collapse terms
    targets: torch.Tensor  # (B*M, Nt, D) normalised target features (M masks per crop)
    context: torch.Tensor  # (B*M, Nc, D) context encoder output
    raw_targets: torch.Tensor  # (B*M, Nt, D) target features before normalisation
    prediction_loss: torch.Tensor  # scalar: the loss of the predictions alone


class Predictor(nn.Module):
    """Narrow transformer that maps context tokens plus positioned mask tokens to predictions
    at the target positions only."""

    def __init__(
        self, cfg: PredictorConfig, enc_width: int, grid: tuple[int, int], out: int | None = None
    ):
        super().__init__()
        self.embed = nn.Linear(enc_width, cfg.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.register_buffer("pos", sincos_2d(cfg.width, grid), persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, out or enc_width)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, ctx: torch.Tensor, masks: Masks) -> torch.Tensor:
        b = ctx.shape[0]
        pos = self.pos.unsqueeze(0).expand(b, -1, -1)  # (B, N, P)
        h = self.embed(ctx) + apply_masks(pos, masks.context)  # (B, Nc, P)
        q = self.mask_token + apply_masks(pos, masks.target)  # (B, Nt, P)
        h = torch.cat([h, q], dim=1)
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.norm(h[:, ctx.shape[1] :]))  # (B, Nt, D)


def normalise_targets(
    h: torch.Tensor, cfg: TargetConfig, positions: torch.Tensor | None = None, tokens: int = 0
) -> torch.Tensor:
    """h (B, N, D) -> normalised targets.

    `layer` standardises each token over its channels (Riou et al.); it leaves a component
    shared by all tokens in place, so a target encoder drifting towards one vector for every
    token makes the task trivially easy. `instance` standardises each channel over the tokens
    of a clip (data2vec), removing that shared component; `batch` over the tokens of the batch.
    """
    if cfg.norm == "layer":
        return F.layer_norm(h, h.shape[-1:])
    if cfg.norm == "instance":
        mean, var = h.mean(1, keepdim=True), h.var(1, keepdim=True, unbiased=False)
        return (h - mean) / torch.sqrt(var + 1e-6)
    if cfg.norm == "batch":
        mean = h.mean((0, 1), keepdim=True)
        var = h.var((0, 1), keepdim=True, unbiased=False)
        return (h - mean) / torch.sqrt(var + 1e-6)
    if cfg.norm == "position":
        return _position_norm(h, positions, tokens)
    if cfg.norm == "none":
        return h
    raise ValueError(f"unknown target norm {cfg.norm!r}")


def _position_norm(h: torch.Tensor, positions: torch.Tensor | None, tokens: int) -> torch.Tensor:
    """Each channel centred on its batch mean at the token's own grid position, then scaled
    by its spread over the batch's tokens. What the predictor could guess from the position
    alone (the positional embedding, a direction shared by every clip) is taken out of the
    targets, so only what depends on the clip's content is left to predict. `positions`
    (B, N) are the grid indices of h's tokens (all of them in order when None)."""
    b, n, d = h.shape
    if positions is None:
        positions = torch.arange(n, device=h.device).expand(b, n)
        tokens = n
    flat, pos = h.reshape(-1, d), positions.reshape(-1)
    sums = torch.zeros(tokens, d, dtype=h.dtype, device=h.device).index_add_(0, pos, flat)
    counts = torch.bincount(pos, minlength=tokens).clamp_min(1).unsqueeze(1)
    centred = flat - (sums / counts)[pos]
    var = centred.var(0, unbiased=False, keepdim=True)
    return (centred / torch.sqrt(var + 1e-6)).reshape(b, n, d)


def variance_covariance(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's terms on embeddings z (B, D): the mean hinge max(0, 1 - std) of each channel
    across the batch (zero once every channel spreads), and the sum of squared off-diagonal
    covariances divided by D (zero once the channels decorrelate)."""
    z = z.float() - z.float().mean(0)
    var = F.relu(1.0 - torch.sqrt(z.var(0) + 1e-4)).mean()
    cov = (z.T @ z) / max(1, z.shape[0] - 1)
    off = cov - torch.diag(torch.diag(cov))
    return var, off.pow(2).sum() / z.shape[1]


# Knots of the Epps-Pulley integral over t in [0, 5] (the integrand is even in t, and its
# Gaussian weight is below 4e-6 past 5).
_EP_KNOTS = 17


def epps_pulley(p: torch.Tensor) -> torch.Tensor:
    """SIGReg's statistic on projections p (N, M): for each of the M columns, N times the
    integral over t of |empirical characteristic function - exp(-t^2 / 2)|^2 weighted by
    exp(-t^2 / 2), the distance of its N values from a standard normal's (1.06 expected
    under the null, whatever N: the integral of 1 - e^-t^2 under the weight); the mean over
    the columns."""
    t = torch.linspace(0.0, 5.0, _EP_KNOTS, device=p.device)
    tp = p.float().unsqueeze(-1) * t  # (N, M, K)
    gauss = torch.exp(-0.5 * t * t)
    err = (tp.cos().mean(0) - gauss).square() + tp.sin().mean(0).square()  # (M, K)
    return 2.0 * p.shape[0] * torch.trapezoid(err * gauss, t, dim=-1).mean()


class Slices(nn.Module):
    """Random unit directions for SIGReg, drawn anew at each call (one a step) from a
    generator seeded by the number of calls so far: the count is kept in the state dict, so a
    resumed run draws what an uninterrupted one would."""

    def __init__(self, width: int, count: int, seed: int = 0):
        super().__init__()
        self.width, self.count, self.seed = width, count, seed
        self.calls = 0

    def forward(self, device: torch.device) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        a = torch.randn(self.width, self.count, generator=g)
        return (a / a.norm(dim=0, keepdim=True)).to(device)

    def get_extra_state(self) -> dict[str, int]:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.calls = int(state["calls"])


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    if cfg.kind == "l2":
        return F.mse_loss(pred, target)
    if cfg.kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if cfg.kind == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    raise ValueError(f"unknown loss {cfg.kind!r}")


def _nce(guess: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over the batch: each guess (B, D) must pick its own target (B, D, no gradient)
    among the batch's, by cosine similarity over `temperature` (MoCo v3 with an EMA key)."""
    g = F.normalize(guess, dim=-1)
    t = F.normalize(target - target.mean(0), dim=-1)  # the shared direction says nothing
    logits = g @ t.T / temperature
    return F.cross_entropy(logits, torch.arange(len(g), device=g.device))


class JEPA(nn.Module):
    def __init__(self, recipe: RecipeConfig):
        super().__init__()
        if recipe.target.branch not in BRANCHES:
            raise ValueError(f"unknown target branch {recipe.target.branch!r}; known: {BRANCHES}")
        self.recipe = recipe
        fe = recipe.frontend
        self.encoder = ViT(recipe.encoder, fe.n_mels, fe.frames)
        # Masks, the predictor and the clip-level bands live on the crop's grid, which is the
        # encoder's unless train.crop_frames is shorter (then at an offset of it, per crop).
        self.crop_grid = (self.encoder.grid[0], train_frames(recipe) // recipe.encoder.patch[1])
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        pf, pt = recipe.encoder.patch
        out = pf * pt if recipe.target.source == "input" else None
        self.predictor = Predictor(recipe.predictor, recipe.encoder.width, self.crop_grid, out)
        if recipe.loss.sigreg_weight:
            self.slices = Slices(recipe.encoder.width, recipe.loss.sigreg_slices)
        if recipe.loss.global_weight:
            d = recipe.encoder.width
            self.global_head = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.global_head.apply(init_weights)

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid of a training crop (masks index it)."""
        return self.crop_grid

    @property
    def spare_columns(self) -> int:
        """Time columns of the encoder's grid beyond a training crop's: its offsets' range."""
        return self.encoder.grid[1] - self.crop_grid[1]

    def forward(self, x: torch.Tensor, masks: Masks) -> StepOutput:
        """x (B, V, M, T): channel 0 the crop, channel 1 (see `input_views`) another crop of
        the same recording, the last (`hears_other`) the crop as the context encoder hears it
        (`input_channels`); masks for B * mask.per_crop samples: the masks of crop b are rows
        b * per_crop .. (b + 1) * per_crop - 1."""
        tc, lc = self.recipe.target, self.recipe.loss
        heard = x[:, -1:] if hears_other(self.recipe) else None  # the context encoder's input
        if heard is not None:
            x = x[:, :-1]
        other = x[:, 1:2] if x.shape[1] > 1 else None
        x = x[:, :1]
        per_crop = masks.context.shape[0] // x.shape[0]
        xs = x.repeat_interleave(per_crop, 0) if per_crop > 1 else x  # (B*M, 1, M, T)
        at = masks.offset  # (B*M,) crops' offsets in the encoder's grid, or None
        at1 = None if at is None else at[::per_crop]  # (B,) one per crop
        if heard is not None and per_crop > 1:
            heard = heard.repeat_interleave(per_crop, 0)
        full = None
        tokens = self.crop_grid[0] * self.crop_grid[1]
        with torch.no_grad():
            if tc.source == "input":
                # A masked autoencoder's target: the log-mel patches at the target positions.
                raw = apply_masks(self.encoder.patches(xs).float(), masks.target)
                tgt = normalise_targets(raw, tc, masks.target, tokens)
            elif tc.branch == "full-input":
                # I-JEPA: the target encoder sees the whole input, once per crop whatever the
                # number of masks; targets are selected in the latent space, after
                # normalisation over all tokens of the clip.
                full = self.target_encoder(x, top_k=tc.top_k, offset=at1).float()
                if per_crop > 1:
                    full = full.repeat_interleave(per_crop, 0)
                raw = apply_masks(full, masks.target)
                tgt = apply_masks(normalise_targets(full, tc), masks.target)
            else:
                # Targets-only (M2D, Riou et al.): the target encoder sees the target patches.
                raw = self.target_encoder(xs, keep=masks.target, top_k=tc.top_k, offset=at)
                raw = raw.float()
                tgt = normalise_targets(raw, tc, masks.target, tokens)
        ctx = self.encoder(xs if heard is None else heard, keep=masks.context, offset=at)
        pred = self.predictor(ctx, masks)  # (B*M, Nt, D)
        pred_loss = jepa_loss(pred.float(), tgt, lc)
        loss = lc.token_weight * pred_loss  # x 1.0 is exact: the default trains as before
        if lc.var_weight or lc.cov_weight:
            var, cov = variance_covariance(ctx.mean(1))
            loss = loss + lc.var_weight * var + lc.cov_weight * cov
        if lc.sigreg_weight:
            clip = ctx.float().mean(1)  # (B*M, D): what the probes read, one row a clip
            with torch.autocast(clip.device.type, enabled=False):  # projections in fp32
                sig = epps_pulley(clip @ self.slices(clip.device))
            loss = loss + lc.sigreg_weight * sig
        if lc.global_weight:
            whole = full  # a full-input target pass over this crop serves the term too
            if other is not None or whole is None:
                with torch.no_grad():  # the whole crop (or the other one), once per crop
                    view = x if other is None else other
                    whole = self.target_encoder(view, top_k=tc.top_k, offset=at1)
                    whole = whole.float()
                    if per_crop > 1:
                        whole = whole.repeat_interleave(per_crop, 0)
            loss = loss + lc.global_weight * self._global_loss(ctx, whole, masks)
        return StepOutput(loss, tgt, ctx, raw, pred_loss.detach())

    def _global_loss(self, ctx: torch.Tensor, whole: torch.Tensor, masks: Masks) -> torch.Tensor:
        """The clip-level term: the head on the context tokens' mean regresses the mean of the
        target encoder's tokens `whole` (B, N, D, no gradient), both layer-normed; with
        `global_pool: band` one such pair per frequency band, a band none of whose tokens the
        context saw left out."""
        d = whole.shape[-1]
        if self.recipe.loss.global_pool == "clip":
            guess = self.global_head(ctx.mean(1)).float()
            if self.recipe.loss.global_loss == "nce":
                return _nce(guess, whole.mean(1), self.recipe.loss.global_temperature)
            return F.mse_loss(F.layer_norm(guess, (d,)), F.layer_norm(whole.mean(1), (d,)))
        f, t = self.grid
        b = whole.shape[0]
        g = F.layer_norm(whole.view(b, f, t, d).mean(2), (d,))  # (B, F, D)
        band = (masks.context // t).unsqueeze(-1)  # (B, Nc, 1): each context token's band
        sums = ctx.new_zeros(b, f, d).scatter_add(1, band.expand(-1, -1, d), ctx)
        ones = torch.ones_like(band, dtype=torch.float32)
        counts = torch.zeros(b, f, 1, device=ctx.device).scatter_add_(1, band, ones)
        guess = self.global_head(sums / counts.clamp_min(1).to(sums.dtype)).float()
        err = (F.layer_norm(guess, (d,)) - g).pow(2).mean(-1, keepdim=True)  # (B, F, 1)
        seen = (counts > 0).float()
        return (err * seen).sum() / seen.sum().clamp_min(1)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        # t <- m t + (1 - m) o, over every parameter in one fused call
        target, online = list(self.target_encoder.parameters()), list(self.encoder.parameters())
        torch._foreach_lerp_(target, online, 1.0 - momentum)
