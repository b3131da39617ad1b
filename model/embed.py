"""Embeddings of a frozen encoder, EVAR style, for probes, audio files and the HEAR API.

A clip's log-mel (normalised with the pretraining corpus' statistics) is cut into chunks of the
encoder's input length; the encoder sees only the time patches that hold audio (a short last
chunk is not padded into attention); per time patch the frequency tokens are concatenated
(F' * D values), mean-pooled over the chunk's patches, and the chunk embeddings averaged.
Timestamp embeddings are the per-time-patch vectors before pooling.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.config import RecipeConfig, recipe_from_dict
from model.data.features import Normalizer
from model.errors import AblError
from model.frontend import log_mel
from model.vit import ViT

ENCODERS = ("context", "target")


def _chunks(lm: np.ndarray, frames: int, pt: int) -> list[tuple[np.ndarray, int, int]]:
    """(chunk (M, frames), time patches holding audio, first frame) for one normalised log-mel."""
    out = []
    n = lm.shape[1]
    for start in range(0, max(n, 1), frames):
        piece = lm[:, start : start + frames]
        chunk = np.zeros((lm.shape[0], frames), np.float32)
        chunk[:, : piece.shape[1]] = piece
        valid = max(1, min(frames // pt, math.ceil(piece.shape[1] / pt)))
        out.append((chunk, valid, start))
    return out


def _encoded_chunks(
    encoder: ViT, logmels: Sequence[np.ndarray], frames: int, batch_size: int, layers: int = 1
) -> Iterator[tuple[int, np.ndarray, int]]:
    """(clip index, its chunk's time-patch embeddings (valid, F'*D), chunk's first frame);
    chunks of every clip are batched together through the encoder, each clip's in order."""
    encoder.eval()
    pt = encoder.patch_size[1]
    device = next(encoder.parameters()).device
    pieces = [(i, c, v, s) for i, lm in enumerate(logmels) for c, v, s in _chunks(lm, frames, pt)]
    # Chunks with the same number of time patches holding audio are encoded together, only
    # those patches (see ViT.frame_embeddings). The sort is stable and only a clip's last chunk
    # can be short, so each clip's chunks still come in order.
    pieces.sort(key=lambda p: -p[2])
    s = 0
    while s < len(pieces):
        valid = pieces[s][2]
        part = pieces[s : s + batch_size]
        part = [p for p in part if p[2] == valid]
        s += len(part)
        x = torch.from_numpy(np.stack([p[1] for p in part])).unsqueeze(1).to(device)
        h = encoder.frame_embeddings(x, valid, layers).float().cpu().numpy()  # (B, valid, F'*D)
        for (clip, _, _, start), emb in zip(part, h, strict=True):
            yield clip, emb, start


@torch.inference_mode()
def frame_embeddings(
    encoder: ViT,
    logmels: Sequence[np.ndarray],
    frames: int,
    batch_size: int = 64,
    layers: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per clip: (time-patch embeddings (n, F'*D), first frame of each time patch (n,))."""
    pt = encoder.patch_size[1]
    per_clip: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in logmels]
    for clip, emb, start in _encoded_chunks(encoder, logmels, frames, batch_size, layers):
        per_clip[clip].append((emb, start + pt * np.arange(len(emb))))
    return [
        (np.concatenate([e for e, _ in parts]), np.concatenate([f for _, f in parts]))
        for parts in per_clip
    ]


@torch.inference_mode()
def clip_embeddings(
    encoder: ViT,
    logmels: Sequence[np.ndarray],
    frames: int,
    batch_size: int = 64,
    layers: int = 1,
) -> np.ndarray:
    """(n_clips, F'*D): the mean over a clip's time patches within each chunk, then over its
    chunks (a short last chunk counts as much as a full one, as in EVAR). `layers` > 1: each
    token is the average of the last `layers` blocks' outputs (`probe.layers`)."""
    sums: np.ndarray | None = None
    counts = np.zeros(len(logmels))
    for clip, emb, _ in _encoded_chunks(encoder, logmels, frames, batch_size, layers):
        if sums is None:
            sums = np.zeros((len(logmels), emb.shape[1]), np.float64)
        sums[clip] += emb.mean(0)
        counts[clip] += 1
    assert sums is not None
    return (sums / counts[:, None]).astype(np.float32)


@dataclass
class Encoder:
    """A frozen encoder with what it needs to embed raw audio."""

    vit: ViT
    recipe: RecipeConfig
    norm: Normalizer
    which: str = "context"

    @property
    def sample_rate(self) -> int:
        return self.recipe.frontend.sample_rate

    @property
    def embedding_size(self) -> int:
        return self.vit.grid[0] * self.recipe.encoder.width

    @property
    def hop_ms(self) -> float:
        fe = self.recipe.frontend
        return 1000.0 * fe.hop / fe.sample_rate

    def logmel(self, wave: np.ndarray) -> np.ndarray:
        """Normalised log-mel (M, T) of a mono waveform at `sample_rate`; rounded through
        float16 like the feature cache, so a file embeds exactly as in the probes."""
        lm = log_mel(np.asarray(wave, np.float32), self.recipe.frontend)
        return self.norm(lm.astype(np.float16).astype(np.float32))

    def scene(self, waves: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        lms = [self.logmel(w) for w in waves]
        fe, layers = self.recipe.frontend, self.recipe.probe.layers
        return clip_embeddings(self.vit, lms, fe.frames, batch_size, layers)

    def timestamps(
        self, waves: Sequence[np.ndarray], batch_size: int = 64
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per wave: (embeddings (n, F'*D), centre of each time patch in ms (n,))."""
        lms = [self.logmel(w) for w in waves]
        pt = self.recipe.encoder.patch[1]
        out = []
        fe, layers = self.recipe.frontend, self.recipe.probe.layers
        for emb, first in frame_embeddings(self.vit, lms, fe.frames, batch_size, layers):
            out.append((emb, (first + pt / 2) * self.hop_ms))
        return out


def load_encoder(path: str | Path, which: str = "context", device: str = "cpu") -> Encoder:
    """An encoder from a trial checkpoint (`abl-out/checkpoints/KEY.pt`) or an exported file
    (`abl export-best`)."""
    if which not in ENCODERS:
        raise AblError(f"encoder {which!r}: choose one of {', '.join(ENCODERS)}")
    p = Path(path)
    if not p.is_file():
        raise AblError(f"{p}: no such checkpoint; pass a file from abl-out/checkpoints/")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        recipe = recipe_from_dict(json.loads(state["config"]))
        mean, std = state["normalizer"]
    except (KeyError, TypeError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise AblError(
            f"{p}: not an abl checkpoint ({type(e).__name__}); pass a file from "
            "abl-out/checkpoints/ or from `abl export-best`"
        ) from None
    fe = recipe.frontend
    vit = ViT(recipe.encoder, fe.n_mels, fe.frames)
    weights = state["model"]
    prefix = "encoder." if which == "context" else "target_encoder."
    own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not own:
        raise AblError(f"{p}: holds no {which} encoder; try --encoder context")
    vit.load_state_dict(own)
    vit.to(device).eval()
    return Encoder(vit, recipe, Normalizer(float(mean), float(std)), which)
