"""A small ViT over log-mel patches with fixed 2-D sin-cos positions and no CLS token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig
from model.masks import apply_masks


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().reshape(-1, 1) * omega  # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """(F*T, dim) positions: half the channels encode the frequency row, half the time column."""
    f, t = grid
    rows, cols = torch.meshgrid(torch.arange(f), torch.arange(t), indexing="ij")
    half = dim // 2
    emb = torch.cat([sincos_1d(half, rows), sincos_1d(dim - half, cols)], dim=1)
    return emb.float()


# How attention's softmax(q k^T / sqrt(d)) v is computed; the same maths either way.
ATTENTION_KERNELS = ("explicit", "sdpa")


class Attention(nn.Module):
    """Multi-head self-attention without masking.

    `kernel` chooses the computation: "explicit" is two batched matrix products around a
    softmax, "sdpa" is torch's fused `scaled_dot_product_attention`. Which is faster depends on
    the device and the precision: on CPUs with native bf16, SDPA's CPU kernel is slower than
    the two products at these sequence lengths (65 tokens or fewer). So training measures it
    per machine (model.precision) and sets it on every block; weights are the same either way.
    """

    def __init__(self, dim: int, heads: int, kernel: str = "sdpa"):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.kernel = kernel
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d/H); one stack in backward, not three adds
        if self.kernel == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)  # (B, H, N, N)
            y = weights @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


STEMS = ("linear", "hmlp")


class HMLPStem(nn.Module):
    """A patch (pf x pt values) to a token in three linear stages, each followed by a layer
    norm and GELU but the last: sub-patches of (pf/4) x (pt/4) values to width/4 channels,
    then 2 x 2 neighbouring sub-patches merged twice (Touvron et al.'s hMLP stem). Every stage
    reads one patch only, so masking after the stem hides a patch as completely as masking a
    linear embedding does."""

    def __init__(self, patch: tuple[int, int], width: int):
        super().__init__()
        pf, pt = patch
        self.sub = (pf // 4, pt // 4)
        inner = max(width // 4, 1)
        self.stages = nn.ModuleList(
            [
                nn.Linear(self.sub[0] * self.sub[1], inner),
                nn.Linear(4 * inner, inner),
                nn.Linear(4 * inner, width),
            ]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(inner), nn.LayerNorm(inner)])

    def reset_parameters(self) -> None:
        for lin in self.stages:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """p (B, N, pf * pt), each patch row-major -> (B, N, width)."""
        b, n, _ = p.shape
        kf, kt = self.sub
        # rows = (i2, i1, a), cols = (j2, j1, c): i2/j2 pick the quarter, i1/j1 the
        # sub-patch in it, a/c the value in the sub-patch
        x = p.reshape(b * n, 2, 2, kf, 2, 2, kt).permute(0, 1, 4, 2, 5, 3, 6)
        x = x.reshape(b * n, 2, 2, 2, 2, kf * kt)  # (BN, i2, j2, i1, j1, values)
        x = F.gelu(self.norms[0](self.stages[0](x)))
        x = F.gelu(self.norms[1](self.stages[1](x.flatten(3))))  # (BN, i2, j2, inner)
        return self.stages[2](x.flatten(1)).view(b, n, -1)


class ViT(nn.Module):
    """Encoder: (B, 1, n_mels, frames) log-mel -> (B, N, D) tokens, N = F*T patches."""

    def __init__(self, cfg: EncoderConfig, n_mels: int, frames: int):
        super().__init__()
        pf, pt = cfg.patch
        self.grid = (n_mels // pf, frames // pt)
        self.patch_size = (pf, pt)
        # One of the two embeddings: the linear one as a convolution's weights (its
        # checkpoints' layout), or the hMLP stem.
        self.stem = HMLPStem(cfg.patch, cfg.width) if cfg.stem == "hmlp" else None
        if self.stem is None:
            self.patch = nn.Conv2d(1, cfg.width, kernel_size=cfg.patch, stride=cfg.patch)
        self.register_buffer("pos", sincos_2d(cfg.width, self.grid), persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.apply(init_weights)
        if self.stem is not None:
            self.stem.reset_parameters()
        else:
            w = self.patch.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def tokens(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding plus positions: (B, 1, M, T) -> (B, N, D), row-major over (F, T).

        The same product as the stride-equals-kernel convolution whose weights it holds (and
        whose checkpoints it reads), computed as one matrix product over the unfolded patches:
        on CPU that is faster than the convolution kernel, forward and backward. With the
        hMLP stem, its stages over the same patches.
        """
        if self.stem is not None:
            return self.stem(self.patches(x)) + self.positions(x, offset)
        w = self.patch.weight.view(self.patch.out_channels, -1)
        return F.linear(self.patches(x), w, self.patch.bias) + self.positions(x, offset)

    def positions(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Positions of x's patches: the whole grid for a full-length input; for a shorter
        crop the grid's columns from `offset` (B,) on (from 0 when None)."""
        f, t_all = self.grid
        t = min(t_all, x.shape[-1] // self.patch_size[1])
        if t == t_all:
            return self.pos
        cols = torch.arange(t, device=x.device).unsqueeze(0)  # (1, t)
        if offset is not None:
            cols = cols + offset.unsqueeze(1)  # (B, t)
        rows = torch.arange(f, device=x.device).view(1, f, 1) * t_all
        idx = (rows + cols.unsqueeze(1)).reshape(cols.shape[0], f * t)  # (B or 1, F*t)
        return self.pos[idx]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The log-mel patches, flattened: (B, 1, M, T) -> (B, N, pf * pt), row-major over
        (F, T) as the tokens (T: the input's time patches, the grid's or a shorter crop's)."""
        b = x.shape[0]
        (pf, pt), (f, t_all) = self.patch_size, self.grid
        t = min(t_all, x.shape[-1] // pt)  # frames past the grid are left out, as before
        p = x[:, 0, : f * pf, : t * pt].reshape(b, f, pf, t, pt).transpose(2, 3)
        return p.reshape(b, f * t, pf * pt)

    def forward(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        top_k: int = 1,
        offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens at `keep` (all when None) after the last block and the final norm; with
        `top_k` > 1, the average of the last k blocks' outputs, each standardised per token
        (data2vec's target, made comparable across layers). A crop shorter than the grid sits
        at the time columns from `offset` on (see `positions`)."""
        h = self.tokens(x, offset)
        if keep is not None:
            h = apply_masks(h, keep)  # (B, K, D)
        first_kept = len(self.blocks) - top_k
        acc = None
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if top_k > 1 and i >= first_kept:
                z = F.layer_norm(h.float(), h.shape[-1:])
                acc = z if acc is None else acc + z
        if top_k > 1:
            return acc / top_k
        return self.norm(h)

    def frame_embeddings(
        self, x: torch.Tensor, valid: int | None = None, layers: int = 1
    ) -> torch.Tensor:
        """(B, T', F'*D): per time step the frequency tokens concatenated (EVAR pooling input).

        With `valid`, only the first `valid` time steps (those holding audio) are encoded and
        returned: the padding after a short clip is left out of attention altogether, as the
        context encoder leaves out masked tokens in training, so it cannot shape the tokens
        that hold audio. `layers` > 1: the average of the last `layers` blocks' outputs, each
        standardised per token (as `forward`'s top_k)."""
        f, t = self.grid
        if valid is not None and valid < t:
            keep = (torch.arange(f).unsqueeze(1) * t + torch.arange(valid)).reshape(1, -1)
            keep = keep.expand(x.shape[0], -1).to(x.device)
            h = self.forward(x, keep=keep, top_k=layers)  # (B, F*v, D)
            t = valid
        else:
            h = self.forward(x, top_k=layers)  # (B, F*T, D)
        b, _, d = h.shape
        return h.view(b, f, t, d).permute(0, 2, 1, 3).reshape(b, t, f * d)
