"""Which clip a pretraining crop comes from (`data.sampling`), and how much of it is padding.

Synthetic feature sets: each clip's frames hold its own number, so a crop says where it was
cut from. The sampler's logic does not depend on what the frames hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data.features import CropSampler, FeatureSet, Normalizer

CROP = 50


def feature_set(lengths: list[int], first_id: int = 1) -> FeatureSet:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    frames = np.zeros((int(offsets[-1]), 4), np.float16)
    for i, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        frames[lo:hi] = first_id + i
    n = len(lengths)
    return FeatureSet(frames, offsets, ("x",) * n, tuple(map(str, range(n))), "k", Path("."))


def draws(sampler: CropSampler, n: int = 4000) -> np.ndarray:
    """The clip id of each crop (the first frame always holds audio)."""
    x = sampler.batch(n).numpy()
    return x[:, 0, 0, 0].round().astype(int)


def test_time_sampling_draws_a_clip_in_proportion_to_its_frames():
    fs = feature_set([1000, 200, 100, 40])  # ids 1..4
    ids = draws(CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0, sampling="time"))
    share = np.bincount(ids, minlength=5)[1:] / len(ids)
    expected = np.array([1000, 200, 100, 40]) / 1340
    assert np.allclose(share, expected, atol=0.02), share


def test_clip_sampling_draws_every_clip_equally():
    fs = feature_set([1000, 200, 100, 40])
    ids = draws(CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0, sampling="clip"))
    share = np.bincount(ids, minlength=5)[1:] / len(ids)
    assert np.allclose(share, 0.25, atol=0.03), share


def test_source_sampling_gives_each_corpus_entry_an_equal_share():
    big = feature_set([3000, 3000], first_id=1)  # ids 1, 2
    small = feature_set([100, 300], first_id=3)  # ids 3, 4
    s = CropSampler([big, small], CROP, Normalizer(0.0, 1.0), seed=0, sampling="source")
    share = np.bincount(draws(s), minlength=5)[1:] / 4000
    assert share[:2].sum() == pytest.approx(0.5, abs=0.03)
    assert share[2] == pytest.approx(0.125, abs=0.03)  # by time within the small entry
    assert share[3] == pytest.approx(0.375, abs=0.03)


def test_padding_share_counts_the_padded_frames_drawn():
    fs = feature_set([CROP, CROP // 2])  # a full clip and a half-length one
    clip = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0, sampling="clip")
    x = clip.batch(2000).numpy()
    padded = float((x[:, 0, 0, :] == 0).mean())  # padding is zero; audio is 1 or 2
    assert clip.padding_share == pytest.approx(padded)
    assert clip.padding_share == pytest.approx(0.25, abs=0.02)  # half the crops, half padded
    time = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0, sampling="time")
    time.batch(2000)
    # The short clip is drawn in proportion to its frames: a third of the crops, half padded.
    assert time.padding_share == pytest.approx(1 / 6, abs=0.02)


def test_crops_are_reproducible_and_unknown_sampling_is_refused():
    fs = feature_set([500, 80])
    a = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=3).batch(16)
    b = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=3).batch(16)
    assert np.array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="sampling"):
        CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0, sampling="uniform")


def test_views_are_crops_of_one_clip_cut_at_independent_starts():
    fs = feature_set([5000, 3000, 4000])
    # Channel 0 holds 10000 * clip + the frame's position, so a crop says where it was cut.
    frames = fs.frames.astype(np.float64)
    for i, (lo, hi) in enumerate(zip(fs.offsets[:-1], fs.offsets[1:], strict=True)):
        frames[lo:hi, 0] = 10_000 * (i + 1) + np.arange(hi - lo)
    fs = FeatureSet(frames, fs.offsets, fs.labels, fs.files, fs.key, fs.folder)
    x = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0).batch(500, views=2).numpy()
    assert x.shape == (500, 2, 4, CROP)
    first = x[:, :, 0, 0].round().astype(int)  # (crop, view)
    assert np.array_equal(first[:, 0] // 10_000, first[:, 1] // 10_000)  # one clip
    starts = first % 10_000
    assert (starts[:, 0] != starts[:, 1]).mean() > 0.95  # cut apart, not copied
    assert set(first[:, 0] // 10_000) == {1, 2, 3}


def test_mixed_channel_adds_the_next_crops_power_and_leaves_the_crop_clean():
    fs = feature_set([5000, 3000, 4000])
    frames = np.random.default_rng(0).normal(-3.0, 2.5, fs.frames.shape).astype(np.float16)
    fs = FeatureSet(frames, fs.offsets, fs.labels, fs.files, fs.key, fs.folder)
    norm = Normalizer(-3.0, 2.5)
    clean = CropSampler([fs], CROP, norm, seed=3).batch(64).numpy()
    x = CropSampler([fs], CROP, norm, seed=3).batch(64, mix=0.5).numpy()
    assert x.shape == (64, 2, 4, CROP)
    assert np.array_equal(x[:, 0], clean[:, 0])  # the target encoder's crop is untouched
    # Back in power: the mixed channel is (1 - s) * own + s * next, for one s < 0.5 a row.
    own, nxt, mixed = (
        np.exp(norm.std * c + norm.mean) for c in (x[:, 0], np.roll(x[:, 0], -1, 0), x[:, 1])
    )
    with np.errstate(invalid="ignore", divide="ignore"):  # rows whose crops are equal
        s = ((mixed - own) / (nxt - own)).reshape(64, -1)
    apart = np.abs(nxt - own) > 0.1 * np.maximum(own, nxt)  # where the share is well defined
    s = np.where(apart.reshape(64, -1), s, np.nan)
    share = np.nanmedian(s, axis=1)
    assert np.nanmax(np.abs(s - share[:, None])) < 1e-3  # one share over the whole row
    assert (share >= 0).all() and (share < 0.5).all() and share.std() > 0.05
    with pytest.raises(AssertionError):  # not the clean crop: something was mixed in
        np.testing.assert_allclose(x[:, 1], x[:, 0], atol=1e-3)


FLOOR = -16.0  # the log-mel of digital silence in these sets


def with_silence(lengths: list[int], silent: list[int], first_id: int = 1) -> FeatureSet:
    """Clips as feature_set, the first silent[i] frames of clip i at the floor."""
    fs = feature_set(lengths, first_id)
    for lo, n in zip(fs.offsets[:-1], silent, strict=True):
        fs.frames[lo : lo + n] = FLOOR
    return fs


def test_silence_share_counts_the_silent_frames_drawn():
    fs = with_silence([1000, 1000], [0, 600])
    s = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0, floor=FLOOR)
    x = s.batch(2000).numpy()
    silent = float((x[:, 0, 0, :] == FLOOR).mean())
    assert s.silence_share == pytest.approx(silent)
    assert s.silence_share == pytest.approx(0.3, abs=0.03)  # half the crops, 60 % silent
    # Without a floor to tell silence by, nothing is counted and the crops are the same.
    plain = CropSampler([fs], CROP, Normalizer(0.0, 1.0), seed=0)
    assert np.array_equal(plain.batch(2000).numpy(), x)
    assert plain.silence_share == 0.0


def test_max_silence_draws_a_silent_crop_again_within_its_corpus_entry():
    # Entry one: a clip silent but for its last 100 frames (id 2 there) and a loud one (3);
    # entry two: one loud clip (4).
    one = with_silence([1000, 1000], [900, 0], first_id=2)
    two = feature_set([2000], first_id=4)
    kw = dict(seed=0, sampling="source", floor=FLOOR)
    s = CropSampler([one, two], CROP, Normalizer(0.0, 1.0), max_silence=0.2, **kw)
    x = s.batch(4000).numpy()[:, 0, 0, :]
    silent = (x == FLOOR).mean(axis=1)
    # 8 redraws leave a crop over the limit only when all nine draws were (0.45 ** 9).
    assert (silent > 0.2).mean() < 0.01
    assert s.silence_share < 0.02
    before = CropSampler([one, two], CROP, Normalizer(0.0, 1.0), **kw)
    before.batch(4000)
    assert before.silence_share > 0.2  # a quarter of the crops, nine tenths silent
    # Each entry keeps its half of the crops: a silent crop is replaced from its own entry.
    ids = x.max(axis=1).round().astype(int)
    assert (ids == 4).mean() == pytest.approx(0.5, abs=0.03)
    assert ((ids == 2) | (ids == 3)).mean() == pytest.approx(0.5, abs=0.03)


def test_gain_shifts_the_context_encoders_channel_by_one_level_a_crop():
    fs = feature_set([CROP, CROP // 2])  # a full clip and a half-length one (padded)
    norm = Normalizer(0.0, 2.0)
    x = CropSampler([fs], CROP, norm, seed=0, sampling="clip").batch(400, gain_db=6.0).numpy()
    clean, heard = x[:, 0], x[:, 1]
    shift = heard - clean
    audio = clean != 0  # padding is zero, audio 0.5 or 1 (normalised)
    per_row = np.array([shift[b][audio[b]].mean() for b in range(len(x))])
    # One level a crop, constant over its frames and bands, padding untouched.
    assert np.allclose(shift, per_row[:, None, None] * audio, atol=1e-6)
    # Uniform in +-6 dB: ln(10) / 10 log-mel units a dB, over the normaliser's scale.
    db = per_row * norm.std * 10 / np.log(10.0)
    assert db.min() >= -6.0 - 1e-4 and db.max() <= 6.0 + 1e-4
    assert db.min() < -5 and db.max() > 5 and abs(db.mean()) < 0.6
    # Without gain or mix there is no channel for it, and the crops are the same.
    plain = CropSampler([fs], CROP, norm, seed=0, sampling="clip").batch(400).numpy()
    assert plain.shape[1] == 1 and np.array_equal(plain[:, 0], clean)
