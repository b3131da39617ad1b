"""Linear probes of a frozen encoder, EVAR style.

Per time step the frequency tokens are concatenated, then mean-pooled over the time steps that
hold audio; clips longer than the input length are cut into chunks whose embeddings are
averaged. Features are standardised on the train split and a logistic regression is fitted with
its regularisation chosen on the validation split only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from model.data.features import FeatureSet, Normalizer
from model.embed import clip_embeddings
from model.vit import ViT


def embed_clips(
    encoder: ViT,
    fs: FeatureSet,
    norm: Normalizer,
    frames: int,
    batch_size: int = 64,
    layers: int = 1,
) -> np.ndarray:
    """(n_clips, F'*D) clip embeddings of a feature set (see `model.embed`)."""
    logmels = [norm(np.asarray(fs.clip(i), np.float32)) for i in range(len(fs))]
    return clip_embeddings(encoder, logmels, frames, batch_size, layers)


def logmel_stats(fs: FeatureSet, norm: Normalizer) -> np.ndarray:
    """Baseline features: mean and standard deviation of each mel bin over the clip."""
    rows = []
    for i in range(len(fs)):
        lm = norm(fs.clip(i))
        rows.append(np.concatenate([lm.mean(1), lm.std(1)]))
    return np.stack(rows).astype(np.float32)


PROTOCOLS = ("cv", "split")


@dataclass(frozen=True)
class Predictions:
    """Per-clip test predictions of one task, in the order of the clips scored: what the
    reports pair clip by clip and fold by fold."""

    folds: np.ndarray  # (n,) int: the fold that tested the clip (0 for a fixed test split)
    truth: np.ndarray  # (n,) str
    pred: np.ndarray  # (n,) str
    # (n,) int: which draw of the folds tested the clip (repeated cross-validation lists each
    # clip once per draw); None: one draw
    repeats: np.ndarray | None = None


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # test (over every clip tested, all folds pooled)
    macro_f1: float  # test
    val_accuracy: float  # at the chosen regularisation; what model selection may read
    c: float  # regularisation chosen on validation (the median over folds under CV)
    seconds: float
    predictions: Predictions | None = None


TOLERANCE = 1e-4  # probe.tolerance's default: L-BFGS stops once no gradient entry exceeds it


def _fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    c: float,
    start: torch.Tensor | None,
    tol: float = TOLERANCE,
) -> torch.Tensor:
    """Multinomial logistic regression, sklearn's objective (C * summed cross-entropy plus half
    the squared weights, bias unpenalised) divided by n, solved by full-batch L-BFGS to a
    gradient tolerance of `tol`. Returns (dim + 1, classes): weights, then bias."""
    n, d = x.shape
    w = torch.zeros(d + 1, classes) if start is None else start.clone()
    w.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=300,
        tolerance_grad=tol,
        tolerance_change=1e-9,
        history_size=10,
        line_search_fn="strong_wolfe",
    )
    lam = 1.0 / (c * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.addmm(w[-1], x, w[:-1])
        loss = F.cross_entropy(logits, y) + 0.5 * lam * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _standardise(x_train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mean = x_train.mean(0)
    std = x_train.std(0)
    std[std == 0] = 1.0
    return [torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in (x_train, *others)]


def _walk_c(
    xt: torch.Tensor,
    y_train: np.ndarray,
    xv: torch.Tensor,
    y_val: np.ndarray,
    xs: torch.Tensor,
    c_grid: tuple[float, ...],
    start: torch.Tensor | None = None,
    tol: float = TOLERANCE,
) -> tuple[float, float, np.ndarray, torch.Tensor]:
    """Fit the C grid from the strongest regularisation up, each fit warm-started from the
    previous one (the first from `start`, when its shape fits); returns (validation accuracy,
    C, test predictions) of the C that validated best (ties keep the stronger
    regularisation), and the first fit's weights. The walk stops at the first C that
    validates worse than the best so far. Labels are class names (str arrays)."""
    classes = sorted(set(y_train.tolist()))
    index = {k: i for i, k in enumerate(classes)}
    yt = torch.tensor([index[k] for k in y_train.tolist()])
    names = np.asarray(classes)
    best: tuple[float, float, np.ndarray] | None = None
    w = start if start is not None and start.shape == (xt.shape[1] + 1, len(classes)) else None
    first = None
    with torch.enable_grad():
        for c in sorted(c_grid):
            w = _fit_logistic(xt, yt, len(classes), c, w, tol)
            first = w if first is None else first
            val = float(np.mean(names[(xv @ w[:-1] + w[-1]).argmax(1).numpy()] == y_val))
            if best is None or val > best[0]:
                best = (val, c, names[(xs @ w[:-1] + w[-1]).argmax(1).numpy()])
            elif val < best[0]:
                # Past the peak: weaker regularisation only overfits more, and its fits are
                # the slowest to converge.
                break
    assert best is not None and first is not None
    return (*best, first)


def cv_folds(labels: np.ndarray, groups: np.ndarray, k: int, draw: int = 0) -> np.ndarray:
    """(n,) fold of each clip, 0..k-1: grouped (a group never straddles two folds) and
    stratified by class as far as the groups allow; deterministic (`draw` seeds the shuffle:
    repeated cross-validation draws 0, 1, ...)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups.tolist()))
    if n_groups < k:
        raise ValueError(f"{n_groups} groups cannot fill {k} folds")
    folds = np.zeros(len(labels), np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=draw)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = i
    return folds


def cv_probe(
    x: np.ndarray,
    y: list[str],
    folds: np.ndarray,
    c_grid: tuple[float, ...],
    tol: float = TOLERANCE,
) -> ProbeResult:
    """Cross-validated linear probe: each fold is the test fold once; the next fold (cyclic)
    is its validation fold, which chooses C among fits on the remaining folds. So every clip
    is tested exactly once, by a model that never saw it, with a C that never saw it either.
    The chosen fit is used as is (no refit on train + validation): what validation picked is
    what is tested."""
    t0 = time.perf_counter()
    labels = np.asarray(y)
    k = int(folds.max()) + 1
    pred = np.empty(len(labels), dtype=object)
    vals, cs = [], []
    w0 = None  # the folds' solutions are close: each fold's walk starts from the last one's
    for f in range(k):
        test, val = folds == f, folds == (f + 1) % k
        train = ~(test | val)
        xt, xv, xs = _standardise(x[train], x[val], x[test])
        v, c, p, w0 = _walk_c(xt, labels[train], xv, labels[val], xs, c_grid, w0, tol)
        pred[test] = p
        vals.append(v)
        cs.append(c)
    pred = pred.astype(str)
    return ProbeResult(
        accuracy=float(accuracy_score(labels, pred)),
        macro_f1=float(f1_score(labels, pred, average="macro")),
        val_accuracy=float(np.mean(vals)),
        c=float(np.median(cs)),
        seconds=time.perf_counter() - t0,
        predictions=Predictions(folds.astype(np.int64), labels, pred),
    )


def repeated_cv_probe(
    x: np.ndarray,
    y: list[str],
    draws: list[np.ndarray],
    c_grid: tuple[float, ...],
    tol: float = TOLERANCE,
) -> ProbeResult:
    """`cv_probe` once per draw of the folds (repeated cross-validation): accuracy, macro-F1
    and validation accuracy are the draws' means, C the median of the draws' (each the median
    over its folds), and the predictions list each clip once per draw, `repeats` saying which.
    One draw is `cv_probe` itself."""
    if len(draws) == 1:
        return cv_probe(x, y, draws[0], c_grid, tol)
    runs = [cv_probe(x, y, folds, c_grid, tol) for folds in draws]
    preds = [r.predictions for r in runs]
    assert all(p is not None for p in preds)
    return ProbeResult(
        accuracy=float(np.mean([r.accuracy for r in runs])),
        macro_f1=float(np.mean([r.macro_f1 for r in runs])),
        val_accuracy=float(np.mean([r.val_accuracy for r in runs])),
        c=float(np.median([r.c for r in runs])),
        seconds=float(sum(r.seconds for r in runs)),
        predictions=Predictions(
            np.concatenate([p.folds for p in preds]),
            np.concatenate([p.truth for p in preds]),
            np.concatenate([p.pred for p in preds]),
            np.repeat(np.arange(len(draws), dtype=np.int64), [len(p.folds) for p in preds]),
        ),
    )


def linear_probe(
    x_train: np.ndarray,
    y_train: list[str],
    x_val: np.ndarray,
    y_val: list[str],
    x_test: np.ndarray,
    y_test: list[str],
    c_grid: tuple[float, ...],
    tol: float = TOLERANCE,
) -> ProbeResult:
    """Multinomial logistic regression on standardised features; C chosen on validation.

    The fit is convex and solved by L-BFGS (in torch: ~5x faster here than scikit-learn's
    lbfgs on these shapes, same accuracies; a test holds them together), so it has no seed:
    replication comes from the trial seeds. The C grid is walked from the strongest
    regularisation up, each fit starting from the previous solution (warm start), and the test
    predictions of every C are kept, so the chosen one needs no refit.
    """
    t0 = time.perf_counter()
    xt, xv, xs = _standardise(x_train, x_val, x_test)
    val, c, pred, _ = _walk_c(xt, np.asarray(y_train), xv, np.asarray(y_val), xs, c_grid, tol=tol)
    truth = np.asarray(y_test)
    return ProbeResult(
        accuracy=float(accuracy_score(y_test, pred)),
        macro_f1=float(f1_score(y_test, pred, average="macro")),
        val_accuracy=float(val),
        c=float(c),
        seconds=time.perf_counter() - t0,
        predictions=Predictions(np.zeros(len(truth), np.int64), truth, np.asarray(pred)),
    )


def knn_accuracy(
    x_train: np.ndarray, y_train: list[str], x_eval: np.ndarray, y_eval: list[str], k: int = 10
) -> float:
    """Cosine k-NN accuracy (majority vote) on standardised features: a cheap signal of
    representation quality during training, no fitting involved."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a = (x_train - mean) / std
    b = (x_eval - mean) / std
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    k = min(k, len(a))
    nearest = np.argsort(-(b @ a.T), axis=1)[:, :k]
    labels = np.asarray(y_train)
    hits = 0
    for row, truth in zip(nearest, y_eval, strict=True):
        values, counts = np.unique(labels[row], return_counts=True)
        hits += values[np.argmax(counts)] == truth
    return hits / max(1, len(y_eval))
