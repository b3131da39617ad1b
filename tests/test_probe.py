"""The probe's own logic (synthetic features: it does not depend on audio or an encoder)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import model.probe as probe_module
from model.probe import cv_folds, cv_probe, knn_accuracy, linear_probe, repeated_cv_probe


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


def grouped_blobs(groups: int, per_group: int, classes: int, spread: float):
    """Clips in groups; every clip of a group has the group's class (a near-duplicate set)."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(classes, 16))
    y, g, x = [], [], []
    for gi in range(groups):
        c = gi % classes
        for _ in range(per_group):
            y.append(f"c{c}")
            g.append(f"g{gi}")
            x.append(centres[c] + spread * rng.normal(size=16))
    return np.asarray(x, np.float32), np.asarray(y), np.asarray(g)


def test_cv_folds_are_grouped_stratified_and_deterministic():
    _, y, g = grouped_blobs(40, 3, 4, 1.0)
    folds = cv_folds(y, g, 5)
    assert set(folds.tolist()) == set(range(5))
    for group in set(g.tolist()):  # a group never straddles two folds
        assert len(set(folds[g == group].tolist())) == 1
    for f in range(5):  # every fold holds every class (stratified)
        assert set(y[folds == f].tolist()) == set(y.tolist())
    assert np.array_equal(folds, cv_folds(y, g, 5))
    with pytest.raises(ValueError, match="groups"):
        cv_folds(y[:6], g[:6], 5)  # two groups cannot fill five folds


def test_cv_tests_each_clip_once_and_never_chooses_c_on_a_test_fold(monkeypatch):
    x, y, g = grouped_blobs(30, 4, 3, 1.5)
    folds = cv_folds(y, g, 5)
    seen: list[tuple[int, int, int]] = []
    real = probe_module._walk_c

    def spy(xt, y_train, xv, y_val, xs, c_grid, start=None, tol=1e-4):
        seen.append((len(y_train), len(y_val), xs.shape[0]))
        return real(xt, y_train, xv, y_val, xs, c_grid, start, tol)

    monkeypatch.setattr(probe_module, "_walk_c", spy)
    r = cv_probe(x, list(y), folds, (0.01, 1.0))
    p = r.predictions
    assert len(seen) == 5
    for f, (n_train, n_val, n_test) in enumerate(seen):
        # train: every fold but the test fold and its validation fold; C is chosen on the
        # validation fold, which is never the test fold
        assert n_test == (folds == f).sum() and n_val == (folds == (f + 1) % 5).sum()
        assert n_train == len(y) - n_test - n_val
    assert np.array_equal(p.folds, folds) and np.array_equal(p.truth, y)  # each clip once
    assert r.accuracy == pytest.approx(np.mean(p.pred == y))
    assert r.accuracy > 0.75  # well above chance (1/3)


def test_repeated_cv_averages_draws_of_the_folds_each_testing_every_clip_once():
    x, y, g = grouped_blobs(30, 4, 3, 1.5)
    draws = [cv_folds(y, g, 5, d) for d in range(3)]
    assert not np.array_equal(draws[0], draws[1])
    for folds in draws:  # each draw grouped: a group never straddles two folds
        assert all(len(set(folds[g == grp])) == 1 for grp in set(g))
    runs = [cv_probe(x, list(y), folds, (0.01, 1.0)) for folds in draws]
    r = repeated_cv_probe(x, list(y), draws, (0.01, 1.0))
    assert r.accuracy == pytest.approx(np.mean([u.accuracy for u in runs]))
    assert r.macro_f1 == pytest.approx(np.mean([u.macro_f1 for u in runs]))
    p = r.predictions
    assert p.repeats.tolist() == [d for d in range(3) for _ in y]
    for d, u in enumerate(runs):
        assert np.array_equal(p.folds[p.repeats == d], draws[d])
        assert np.array_equal(p.pred[p.repeats == d], u.predictions.pred)
    assert r.accuracy == pytest.approx(np.mean(p.pred == p.truth))
    one = repeated_cv_probe(x, list(y), draws[:1], (0.01, 1.0))
    assert one.accuracy == runs[0].accuracy and one.predictions.repeats is None


def test_cv_predictions_do_not_see_their_own_labels():
    # Labels independent of the features: a probe that saw the test clips would score well
    # above chance; cross-validation scores at chance.
    x, y, g = grouped_blobs(60, 2, 2, 1.0)
    y = np.random.default_rng(3).permutation(y)
    r = cv_probe(x, list(y), cv_folds(y, g, 5), (0.1, 10.0))
    assert r.accuracy < 0.65


def test_probe_layers_average_the_last_blocks_and_padding_stays_out():
    import torch

    from model.config import EncoderConfig
    from model.embed import clip_embeddings
    from model.vit import ViT

    torch.manual_seed(0)
    vit = ViT(EncoderConfig(depth=3, width=32, heads=2), 80, 64).eval()
    rng = np.random.default_rng(0)
    full, short = rng.normal(size=(80, 64)), rng.normal(size=(80, 20))  # 4 and 2 time patches
    one = clip_embeddings(vit, [full, short], 64)
    two = clip_embeddings(vit, [full, short], 64, layers=2)
    assert one.shape == two.shape == (2, 5 * 32) and not np.allclose(one, two)
    with torch.no_grad():
        x = torch.from_numpy(full).float()[None, None]
        h = vit(x, top_k=2)  # (1, 20, 32): the mean of the last two blocks, per token
        expected = h.view(1, 5, 4, 32).permute(0, 2, 1, 3).reshape(4, 160).mean(0)
        # The short clip's tokens never attend to its padding: it embeds as the same audio
        # alone, without padding, would through an encoder that sees only its two patches.
        keep = (torch.arange(5).unsqueeze(1) * 4 + torch.arange(2)).reshape(1, -1)
        padded = torch.zeros(1, 1, 80, 64)
        padded[..., :20] = torch.from_numpy(short).float()
        hs = vit(padded, keep=keep).view(1, 5, 2, 32).permute(0, 2, 1, 3).reshape(2, 160)
    assert np.allclose(two[0], expected.numpy(), atol=1e-5)
    assert np.allclose(one[1], hs.mean(0).numpy(), atol=1e-5)
    other = padded.clone()
    other[..., 40:] = 5.0  # different content where the clip has none
    with torch.no_grad():
        ho = vit(other, keep=keep).view(1, 5, 2, 32).permute(0, 2, 1, 3).reshape(2, 160)
    assert torch.allclose(hs, ho)


def test_the_fit_stops_at_the_tolerance_it_is_given():
    """probe.tolerance reaches L-BFGS: each fit ends with no gradient entry above it, and a
    loose one stops well before the exact one."""
    import torch
    import torch.nn.functional as F

    x, y = blobs(300, 40, 4, 3.0, 0)
    xt = probe_module._standardise(x)[0]
    yt = torch.tensor([int(c[1:]) for c in y])

    def largest_gradient(w: torch.Tensor, c: float) -> float:
        w = w.clone().requires_grad_(True)
        lam = 1.0 / (c * len(yt))
        loss = F.cross_entropy(torch.addmm(w[-1], xt, w[:-1]), yt) + 0.5 * lam * (w[:-1] ** 2).sum()
        loss.backward()
        return float(w.grad.abs().max())

    loose = probe_module._fit_logistic(xt, yt, 4, 1.0, None, tol=1e-2)
    exact = probe_module._fit_logistic(xt, yt, 4, 1.0, None, tol=1e-4)
    assert largest_gradient(exact, 1.0) <= 1e-4
    assert 1e-3 < largest_gradient(loose, 1.0) <= 1e-2
