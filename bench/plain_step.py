"""A JEPA training step written the plain way, as a yardstick for abl's `train_step`.

The same recipe (encoder, predictor, multiblock masks, full-input target branch, layer-norm
targets, smooth-L1, AdamW, EMA) as the reference I-JEPA implementation trains it, with nothing
fused or cached: attention as two matrix products around a softmax, the patch embedding as a
convolution, the masks gathered one block at a time, each target block predicted on its own
beside a copy of the context (as I-JEPA does), AdamW's per-tensor loop, and the EMA as
`mul_` / `add_` per parameter. `bench/throughput.py` times it beside abl's step in alternating
rounds and reports the ratio.

Written for the benchmark only: abl never imports it.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MaskConfig, RecipeConfig
from model.vit import sincos_2d


class PlainAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d/H)
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        att = att.softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class PlainBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PlainAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def gather_blocks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """x (B, N, D); one (B, K) index tensor per block -> (blocks * B, K, D), block-major."""
    out = []
    for m in masks:
        index = m.unsqueeze(-1).repeat(1, 1, x.size(-1))
        out.append(torch.gather(x, dim=1, index=index))
    return torch.cat(out, dim=0)


class PlainEncoder(nn.Module):
    def __init__(self, recipe: RecipeConfig):
        super().__init__()
        enc, fe = recipe.encoder, recipe.frontend
        grid = (fe.n_mels // enc.patch[0], fe.frames // enc.patch[1])
        self.patch = nn.Conv2d(1, enc.width, kernel_size=enc.patch, stride=enc.patch)
        self.register_buffer("pos", sincos_2d(enc.width, grid).unsqueeze(0))
        self.blocks = nn.ModuleList(
            PlainBlock(enc.width, enc.heads, enc.mlp_ratio) for _ in range(enc.depth)
        )
        self.norm = nn.LayerNorm(enc.width)

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, D)
        if masks is not None:
            h = gather_blocks(h, masks)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)


class PlainPredictor(nn.Module):
    def __init__(self, recipe: RecipeConfig):
        super().__init__()
        enc, pred, fe = recipe.encoder, recipe.predictor, recipe.frontend
        grid = (fe.n_mels // enc.patch[0], fe.frames // enc.patch[1])
        self.embed = nn.Linear(enc.width, pred.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred.width))
        self.register_buffer("pos", sincos_2d(pred.width, grid).unsqueeze(0))
        self.blocks = nn.ModuleList(
            PlainBlock(pred.width, pred.heads, pred.mlp_ratio) for _ in range(pred.depth)
        )
        self.norm = nn.LayerNorm(pred.width)
        self.out = nn.Linear(pred.width, enc.width)

    def forward(
        self, ctx: torch.Tensor, ctx_masks: list[torch.Tensor], tgt_masks: list[torch.Tensor]
    ) -> torch.Tensor:
        """ctx (B, Nc, D) -> predictions (blocks * B, Nt, D), one sequence per target block."""
        pos = self.pos.repeat(ctx.shape[0], 1, 1)
        h = self.embed(ctx) + gather_blocks(pos, ctx_masks)
        n_ctx = h.shape[1]
        h = h.repeat(len(tgt_masks), 1, 1)  # the context again beside every target block
        queries = self.mask_token + gather_blocks(pos, tgt_masks)
        h = torch.cat([h, queries], dim=1)
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.norm(h[:, n_ctx:]))


def _block_size(grid: tuple[int, int], scale, aspect, g: torch.Generator) -> tuple[int, int]:  # noqa: ANN001
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item()
    a = aspect[0] + (aspect[1] - aspect[0]) * torch.rand(1, generator=g).item()
    area = s * grid[0] * grid[1]
    h = min(grid[0], max(1, round(math.sqrt(area / a))))
    return h, min(grid[1], max(1, round(area / h)))


def _place(grid: tuple[int, int], size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    top = torch.randint(0, grid[0] - size[0] + 1, (1,), generator=g).item()
    left = torch.randint(0, grid[1] - size[1] + 1, (1,), generator=g).item()
    m = torch.zeros(grid, dtype=torch.bool)
    m[top : top + size[0], left : left + size[1]] = True
    return m


def plain_masks(
    batch: int, grid: tuple[int, int], cfg: MaskConfig, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """I-JEPA's multiblock draw: one target block size and one context size for the batch,
    positions per clip; each target block its own (B, K) index tensor; the context block
    minus the targets, every clip's context cut to the shortest in the batch."""
    g = torch.Generator().manual_seed(seed)
    size = _block_size(grid, cfg.block_scale, cfg.block_aspect, g)
    ctx_size = _block_size(grid, cfg.context_scale, (1.0, 1.0), g)
    targets: list[list[torch.Tensor]] = [[] for _ in range(cfg.target_blocks)]
    contexts = []
    for _ in range(batch):
        covered = torch.zeros(grid, dtype=torch.bool)
        for blocks in targets:
            m = _place(grid, size, g)
            covered |= m
            blocks.append(m.flatten().nonzero().squeeze(1))
        ctx = _place(grid, ctx_size, g) & ~covered
        if not ctx.any():
            ctx = ~covered
        contexts.append(ctx.flatten().nonzero().squeeze(1))
    keep = min(len(c) for c in contexts)
    return [torch.stack([c[:keep] for c in contexts])], [torch.stack(t) for t in targets]


class PlainStep:
    """One training step of the plain implementation, on fixed crops and pre-drawn masks."""

    def __init__(self, recipe: RecipeConfig, x: torch.Tensor, bf16: bool, draws: int = 8):
        tc = recipe.train
        self.encoder = PlainEncoder(recipe)
        self.target = copy.deepcopy(self.encoder)
        for p in self.target.parameters():
            p.requires_grad = False
        self.predictor = PlainPredictor(recipe)
        params = [*self.encoder.parameters(), *self.predictor.parameters()]
        self.opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, foreach=False)
        fe, enc = recipe.frontend, recipe.encoder
        grid = (fe.n_mels // enc.patch[0], fe.frames // enc.patch[1])
        self.masks = [plain_masks(x.shape[0], grid, recipe.mask, i) for i in range(draws)]
        self.x, self.bf16, self.i, self.momentum = x, bf16, 0, tc.ema_start

    def __call__(self) -> None:
        ctx_masks, tgt_masks = self.masks[self.i % len(self.masks)]
        self.i += 1
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad():
                h = self.target(self.x)
                h = F.layer_norm(h, (h.size(-1),))
                h = gather_blocks(h, tgt_masks)
            z = self.encoder(self.x, ctx_masks)
            p = self.predictor(z, ctx_masks, tgt_masks)
            loss = F.smooth_l1_loss(p, h)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        m = self.momentum
        with torch.no_grad():
            for pt, po in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
                pt.mul_(m).add_((1.0 - m) * po.detach())

    def flops(self) -> float:
        """FLOPs of one step, as torch's counter counts them (matrix products)."""
        from torch.utils.flop_counter import FlopCounterMode

        ctx_masks, tgt_masks = self.masks[0]
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                h = gather_blocks(self.target(self.x), tgt_masks)
            p = self.predictor(self.encoder(self.x, ctx_masks), ctx_masks, tgt_masks)
            F.smooth_l1_loss(p, h).backward()
        self.encoder.zero_grad()
        self.predictor.zero_grad()
        return float(counter.get_total_flops())
