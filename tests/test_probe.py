"""The probe's own logic (synthetic features: it does not depend on audio or an encoder)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from model.probe import knn_accuracy, linear_probe


def blobs(n: int, dim: int, classes: int, spread: float, seed: int):
    centres = np.random.default_rng(99).normal(size=(classes, dim))  # shared by every split
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = centres[y] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), [f"c{i}" for i in y]


def test_c_is_chosen_on_validation_and_test_is_scored_with_it():
    xt, yt = blobs(200, 40, 4, 2.0, 0)
    xv, yv = blobs(80, 40, 4, 2.0, 1)
    xs, ys = blobs(80, 40, 4, 2.0, 2)
    grid = (0.001, 0.1, 10.0)
    r = linear_probe(xt, yt, xv, yv, xs, ys, grid)
    sc = StandardScaler().fit(xt)
    vals = {}
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=1000).fit(sc.transform(xt), yt)
        vals[c] = (clf.predict(sc.transform(xv)) == np.array(yv)).mean()
    best = max(grid, key=lambda c: (vals[c], -c))  # ties: the stronger regularisation
    assert r.c == best and abs(r.val_accuracy - vals[best]) < 0.02
    # The warm-started walk reaches the same test accuracy as a cold fit at the chosen C.
    cold = LogisticRegression(C=best, max_iter=1000).fit(sc.transform(xt), yt)
    assert abs(r.accuracy - (cold.predict(sc.transform(xs)) == np.array(ys)).mean()) < 0.02
    assert 0 <= r.macro_f1 <= 1 and r.seconds > 0


def test_probe_accuracy_follows_how_separable_the_features_are():
    easy = [blobs(150, 20, 3, 0.3, s) for s in (0, 1, 2)]
    hard = [blobs(150, 20, 3, 8.0, s) for s in (0, 1, 2)]
    e = linear_probe(*easy[0], *easy[1], *easy[2], (0.1, 1.0))
    h = linear_probe(*hard[0], *hard[1], *hard[2], (0.1, 1.0))
    assert e.accuracy > 0.95 and h.accuracy < 0.8


def test_knn_accuracy():
    xt, yt = blobs(120, 10, 3, 0.2, 0)
    xe, ye = blobs(60, 10, 3, 0.2, 1)
    assert knn_accuracy(xt, yt, xe, ye, k=5) > 0.95
    shuffled = list(np.random.default_rng(1).permutation(ye))
    assert knn_accuracy(xt, yt, xe, shuffled, k=5) < 0.7
