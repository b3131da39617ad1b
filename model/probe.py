"""Linear probes of a frozen encoder, EVAR style.

Per time step the frequency tokens are concatenated, then mean-pooled over the time steps that
hold audio; clips longer than the input length are cut into chunks whose embeddings are
averaged. Features are standardised on the train split and a logistic regression is fitted with
its regularisation chosen on the validation split only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from model.features import FeatureSet, Normalizer
from model.vit import ViT


@torch.inference_mode()
def embed_clips(
    encoder: ViT, fs: FeatureSet, norm: Normalizer, frames: int, batch_size: int = 64
) -> np.ndarray:
    """(n_clips, F'*D) clip embeddings."""
    pt = encoder.patch.kernel_size[1]
    chunks: list[np.ndarray] = []
    owner: list[int] = []
    valid: list[int] = []  # time patches of each chunk that hold audio
    for i in range(len(fs)):
        lm = norm(fs.clip(i))  # (M, T)
        n = lm.shape[1]
        for start in range(0, max(n, 1), frames):
            piece = lm[:, start : start + frames]
            chunk = np.zeros((lm.shape[0], frames), np.float32)
            chunk[:, : piece.shape[1]] = piece
            chunks.append(chunk)
            owner.append(i)
            valid.append(max(1, min(frames // pt, math.ceil(piece.shape[1] / pt))))
    encoder.eval()
    pooled = []
    for s in range(0, len(chunks), batch_size):
        x = torch.from_numpy(np.stack(chunks[s : s + batch_size])).unsqueeze(1)  # (B,1,M,T)
        h = encoder.frame_embeddings(x).float()  # (B, T', F'*D)
        for j in range(h.shape[0]):
            pooled.append(h[j, : valid[s + j]].mean(0).numpy())
    pooled_arr = np.stack(pooled)
    owner_arr = np.asarray(owner)
    out = np.zeros((len(fs), pooled_arr.shape[1]), np.float32)
    for i in range(len(fs)):
        out[i] = pooled_arr[owner_arr == i].mean(0)
    return out


def logmel_stats(fs: FeatureSet, norm: Normalizer) -> np.ndarray:
    """Baseline features: mean and standard deviation of each mel bin over the clip."""
    rows = []
    for i in range(len(fs)):
        lm = norm(fs.clip(i))
        rows.append(np.concatenate([lm.mean(1), lm.std(1)]))
    return np.stack(rows).astype(np.float32)


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    macro_f1: float
    c: float  # regularisation chosen on validation
    seconds: float


def linear_probe(
    x_train: np.ndarray,
    y_train: list[str],
    x_val: np.ndarray,
    y_val: list[str],
    x_test: np.ndarray,
    y_test: list[str],
    c_grid: tuple[float, ...],
    seeds: tuple[int, ...] = (0,),
) -> ProbeResult:
    """Test accuracy and macro-F1, averaged over probe seeds."""
    t0 = time.perf_counter()
    scaler = StandardScaler().fit(x_train)
    xt, xv, xs = (scaler.transform(a) for a in (x_train, x_val, x_test))
    accs, f1s, cs = [], [], []
    for seed in seeds:
        best_c, best_val = c_grid[0], -1.0
        for c in c_grid:
            clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(xt, y_train)
            val = accuracy_score(y_val, clf.predict(xv))
            if val > best_val:
                best_c, best_val = c, val
        clf = LogisticRegression(C=best_c, max_iter=1000, random_state=seed).fit(xt, y_train)
        pred = clf.predict(xs)
        accs.append(accuracy_score(y_test, pred))
        f1s.append(f1_score(y_test, pred, average="macro"))
        cs.append(best_c)
    return ProbeResult(
        float(np.mean(accs)),
        float(np.mean(f1s)),
        float(np.median(cs)),
        time.perf_counter() - t0,
    )
