"""Log-mel feature cache shared by every trial and worker.

Features of one clip list under one frontend setting are computed once and stored as a flat
memory-mapped float16 array of frames plus clip offsets, in a folder named by a content hash of
(frontend settings, task manifest, clip list). Workers map the same file read-only, so a second
trial pays only for opening it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model.config import FrontendConfig
from model.data.audio import load_audio
from model.data.datasets import Clip, PreparedTask
from model.frontend import log_mel


@dataclass(frozen=True)
class FeatureSet:
    """Log-mels of a list of clips: `frames` is (total_frames, n_mels), clip i spans
    offsets[i]:offsets[i+1]."""

    frames: np.ndarray
    offsets: np.ndarray
    labels: tuple[str, ...]
    files: tuple[str, ...]
    key: str
    folder: Path

    def __len__(self) -> int:
        return len(self.labels)

    def clip(self, i: int) -> np.ndarray:
        """(n_mels, T) float32 log-mel of clip i."""
        return np.asarray(self.frames[self.offsets[i] : self.offsets[i + 1]], np.float32).T


def feature_key(task: PreparedTask, clips: list[Clip], cfg: FrontendConfig) -> str:
    h = hashlib.sha1()
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(task.meta.get("manifest_sha1", "").encode())
    for c in clips:
        h.update(f"{c.file}:{c.sha1}\n".encode())
    return h.hexdigest()[:16]


def load_features(
    task: PreparedTask, clips: list[Clip], cfg: FrontendConfig, data_root: Path
) -> FeatureSet:
    """Features for `clips`, computed on the first call and memory-mapped afterwards."""
    key = feature_key(task, clips, cfg)
    folder = data_root / "features" / f"{task.name}-{key}"
    if not (folder / "index.json").is_file():
        _build(task, clips, cfg, folder)
    index = json.loads((folder / "index.json").read_text())
    offsets = np.load(folder / "offsets.npy")
    n_frames = int(offsets[-1])
    frames = np.memmap(folder / "frames.f16", np.float16, "r", shape=(n_frames, cfg.n_mels))
    return FeatureSet(frames, offsets, tuple(index["labels"]), tuple(index["files"]), key, folder)


def _build(task: PreparedTask, clips: list[Clip], cfg: FrontendConfig, folder: Path) -> None:
    work = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    mels = []
    with torch.inference_mode():
        for c in clips:
            wave = load_audio(task.path(c), cfg.sample_rate)
            mels.append(log_mel(wave, cfg).T.astype(np.float16))  # (T, n_mels)
    offsets = np.zeros(len(mels) + 1, np.int64)
    offsets[1:] = np.cumsum([len(m) for m in mels])
    mm = np.memmap(work / "frames.f16", np.float16, "w+", shape=(int(offsets[-1]), cfg.n_mels))
    for m, start in zip(mels, offsets[:-1], strict=True):
        mm[start : start + len(m)] = m
    mm.flush()
    del mm
    np.save(work / "offsets.npy", offsets)
    index = {"labels": [c.label for c in clips], "files": [c.file for c in clips]}
    (work / "index.json").write_text(json.dumps(index))
    try:
        os.replace(work, folder)
    except OSError:
        # Another worker finished the same features first; theirs are identical.
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Normalizer:
    mean: float
    std: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def _moments(s: FeatureSet) -> tuple[float, float, int]:
    """(sum, sum of squares, count) of a feature set, cached beside its frames: reading hours
    of frames again in every trial would cost seconds."""
    path = s.folder / "moments.json"
    if path.is_file():
        m = json.loads(path.read_text())
        return m["sum"], m["sumsq"], m["n"]
    total, sq = 0.0, 0.0
    step = 1 << 20
    for i in range(0, s.frames.shape[0], step):
        f = np.asarray(s.frames[i : i + step], np.float64)
        total += float(f.sum())
        sq += float(np.square(f).sum())
    n = int(s.frames.size)
    tmp = path.with_name(f"moments.json.partial-{os.getpid()}")
    tmp.write_text(json.dumps({"sum": total, "sumsq": sq, "n": n}))
    os.replace(tmp, path)
    return total, sq, n


def corpus_normalizer(sets: list[FeatureSet]) -> Normalizer:
    """Dataset mean/std over every frame of the pretraining corpus (one scalar pair)."""
    total, sq, n = 0.0, 0.0, 0
    for s in sets:
        a, b, c = _moments(s)
        total, sq, n = total + a, sq + b, n + c
    mean = total / n
    return Normalizer(float(mean), float(np.sqrt(max(sq / n - mean * mean, 1e-12))))


def silence_floor(fe: FrontendConfig) -> float:
    """The log-mel of digital silence: log(0 + eps), as the frontend computes it."""
    return float(np.log(np.float32(fe.eps)))


SAMPLINGS = ("time", "clip", "source")
# A crop over data.max_silence is drawn again at most this many times (then the last is kept).
REDRAWS = 8
# Log-mel units above the floor still counted as silence, plus 1/1024 of the floor: float16
# storage rounds a value by up to 2^-11 of it (0.008 at the default floor, -16.1).
SILENCE_TOLERANCE = 0.05


class CropSampler:
    """Random fixed-length crops from a corpus; shorter clips are zero-padded after
    normalisation (zero is the corpus mean).

    `sampling` decides which clip a crop comes from; the crop's start is then uniform over the
    clip. `time` (the default): in proportion to the clip's frames, so every frame of the corpus
    is equally likely to be cropped and a short clip (mostly padding once cropped) is drawn as
    rarely as its length says. `clip`: every clip equally, whatever its length (a corpus of
    many short clips then trains mostly on padding). `source`: each feature set (corpus entry)
    an equal share, by time within it. `padding_share` counts the padded input frames drawn.

    Digital silence (a frame whose every band sits at the log-mel floor `floor`, the log of
    the frontend's epsilon: exact zeros in the audio) is constant input like padding;
    `silence_share` counts it among the frames drawn. With `max_silence` < 1 a crop more
    silent than that share is drawn again (clip and start), up to REDRAWS times, the last
    draw kept.
    """

    def __init__(
        self,
        sets: list[FeatureSet],
        frames: int,
        norm: Normalizer,
        seed: int,
        sampling: str = "time",
        max_silence: float = 1.0,
        floor: float | None = None,
    ):
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; known: {SAMPLINGS}")
        self.sets = sets
        self.frames = frames
        self.norm = norm
        self.sampling = sampling
        self.rng = np.random.default_rng(seed)
        self.index = [(si, ci) for si, s in enumerate(sets) for ci in range(len(s))]
        if not self.index:
            raise ValueError("the pretraining corpus is empty")
        lengths = np.concatenate([np.diff(s.offsets) for s in sets]).astype(np.float64)
        set_of = np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)])
        if sampling == "clip":
            weights = np.ones_like(lengths)
        elif sampling == "time":
            weights = lengths
        else:  # source: each set sums to one, by time within it
            weights = lengths / np.bincount(set_of, lengths)[set_of]
        self.cum = np.cumsum(weights / weights.sum())
        self.cum[-1] = 1.0  # rounding must never let a draw fall past the last clip
        # Each set's share of [0, 1) and its last index (a redraw stays in the set).
        ends = np.cumsum([len(s) for s in sets]) - 1
        self.last = [int(e) for e in ends]
        self.span = [
            (float(self.cum[e - len(s)]) if e >= len(s) else 0.0, float(self.cum[e]))
            for e, s in zip(ends, sets, strict=True)
        ]
        self.max_silence = max_silence
        # A frame is silent when its loudest band is at or under this (None: not counted).
        self.silent_at = None if floor is None else floor + SILENCE_TOLERANCE + abs(floor) / 1024
        self.frames_drawn = 0
        self.frames_padded = 0
        self.frames_silent = 0

    @property
    def padding_share(self) -> float:
        """Share of the input frames drawn so far that were padding."""
        return self.frames_padded / max(1, self.frames_drawn)

    @property
    def silence_share(self) -> float:
        """Share of the input frames drawn so far that were digital silence (0 without a
        floor to tell it by)."""
        return self.frames_silent / max(1, self.frames_drawn)

    def _silent(self, raw: np.ndarray) -> int:
        """Frames of a raw (T, n_mels) crop whose every band is at the floor."""
        if self.silent_at is None:
            return 0
        return int((raw.max(axis=1) <= self.silent_at).sum())

    def _redraw(self, si: int) -> int:
        """Another clip of feature set `si`, drawn as `sampling` weighs its clips."""
        lo, hi = self.span[si]
        u = lo + self.rng.random() * (hi - lo)
        return min(int(np.searchsorted(self.cum, u, side="right")), self.last[si])

    def _crops(self, p: int, views: int) -> tuple[list[np.ndarray], list[int]]:
        """Raw (length, n_mels) crops of clip `p`, one per view (starts drawn independently;
        a clip shorter than a crop is taken whole), and each one's silent frames."""
        si, ci = self.index[p]
        s = self.sets[si]
        lo, hi = int(s.offsets[ci]), int(s.offsets[ci + 1])
        n = hi - lo
        length = min(n, self.frames)
        raws = []
        for _ in range(views):
            start = lo + (int(self.rng.integers(0, n - self.frames + 1)) if n > self.frames else 0)
            raws.append(np.asarray(s.frames[start : start + length], np.float32))
        return raws, [self._silent(r) for r in raws]

    def batch(
        self, size: int, views: int = 1, mix: float = 0.0, gain_db: float = 0.0
    ) -> torch.Tensor:
        """(B, views, n_mels, frames) float32: each row's views are crops of one clip, their
        starts drawn independently (views > 1 give a clip-level term another crop of the same
        recording). One view draws exactly the crops it drew before views existed.

        With `mix` > 0 one more channel follows: each row's first crop mixed with the next
        row's (the last with the first) in the power domain (log-mixup-exp, BYOL-A), the
        other crop's share drawn uniformly in [0, mix) per row: what the context encoder
        hears while the target encoder hears the crop clean. With `gain_db` > 0 that channel
        (the crop itself where `mix` is 0) is heard at a gain uniform in [-gain_db, gain_db]
        dB, one per row: a shift of its log-mel frames, its padding left at zero."""
        picks = np.searchsorted(self.cum, self.rng.random(size), side="right")
        n_mels = self.sets[0].frames.shape[1]
        out = np.zeros((size, views, n_mels, self.frames), np.float32)
        lengths = np.zeros(size, np.int64)
        for b, p in enumerate(picks):
            si = self.index[p][0]
            for attempt in range(REDRAWS + 1):
                if attempt:  # again from the same corpus entry, so the mix stays as drawn
                    p = self._redraw(si)
                raws, silent = self._crops(p, views)
                if self.max_silence >= 1 or max(silent) <= self.max_silence * self.frames:
                    break
            length = len(raws[0])
            for v, raw in enumerate(raws):
                out[b, v, :, :length] = self.norm(raw.T)
            lengths[b] = length
            self.frames_padded += views * (self.frames - length)
            self.frames_silent += sum(silent)
        self.frames_drawn += size * views * self.frames
        if mix > 0 or gain_db > 0:
            heard = out[:, 0].copy()
            if mix > 0:
                share = self.rng.uniform(0.0, mix, size).astype(np.float32)[:, None, None]
                heard = self.mixed(heard, share)
            if gain_db > 0:
                # power x 10^(g / 10): log-mel + g ln(10) / 10, in normalised units
                db = self.rng.uniform(-gain_db, gain_db, size)
                shift = (db * np.log(10.0) / 10.0 / self.norm.std).astype(np.float32)
                audio = np.arange(self.frames)[None, :] < lengths[:, None]  # (B, T)
                heard += shift[:, None, None] * audio[:, None, :]
            out = np.concatenate([out, heard[:, None]], axis=1)
        return torch.from_numpy(out)

    def mixed(self, crops: np.ndarray, share: np.ndarray) -> np.ndarray:
        """Normalised log-mels (B, M, T), each mixed with the next row's at `share` (B, 1, 1)
        of the power: log((1 - s) e^lm + s e^lm') in log-mel units, normalised again (the
        normaliser is affine, so its mean cancels and only its scale enters)."""
        k = np.float32(self.norm.std)
        other = np.roll(crops, -1, axis=0)
        with np.errstate(divide="ignore"):
            a, b = np.log1p(-share), np.log(share)
        return np.logaddexp(a + k * crops, b + k * other) / k
