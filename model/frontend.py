"""Log-mel frontend in plain torch.

Matches torchaudio's `MelSpectrogram` defaults (HTK mel scale, no filter-area normalisation,
periodic Hann window, centred reflect-padded frames, power 2) without depending on
torchaudio; the tests check it against librosa with `htk=True, norm=None`.
"""

from __future__ import annotations

import numpy as np
import torch

from model.config import FrontendConfig


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _mel_edges(cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """(FFT bin frequencies (F,), filter edges (M + 2,)) in Hz, float64."""
    if not 0.0 <= cfg.f_min < cfg.f_max:
        raise ValueError(f"need 0 <= f_min < f_max, got f_min={cfg.f_min}, f_max={cfg.f_max}")
    # float64 throughout: the triangle edges are differences of nearby frequencies.
    fft_hz = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)  # (F,)
    mel_pts = np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2)
    return fft_hz, _mel_to_hz(mel_pts)  # edges: lower edge, centre, upper edge of each filter


def empty_mel_filters(cfg: FrontendConfig) -> int:
    """How many mel filters hold no FFT bin (all zero: a band that is constant log(eps)).

    Filter m is non-zero exactly at the bins strictly between its lower and upper edge, so
    this counts what `_mel_filterbank_f64` builds without building it."""
    fft_hz, edge_hz = _mel_edges(cfg)
    first = np.searchsorted(fft_hz, edge_hz[:-2], side="right")  # first bin above the lower edge
    end = np.searchsorted(fft_hz, edge_hz[2:], side="left")  # first bin at or above the upper
    return int(np.count_nonzero(end <= first))


def _mel_filterbank_f64(cfg: FrontendConfig) -> np.ndarray:
    fft_hz, edge_hz = _mel_edges(cfg)  # (F,), (M + 2,)
    width = np.diff(edge_hz)  # (M + 1,)
    ramps = edge_hz[:, None] - fft_hz[None, :]  # (M + 2, F)
    rising = -ramps[:-2] / width[:-1, None]  # (M, F) 0 at the lower edge, 1 at the centre
    falling = ramps[2:] / width[1:, None]  # (M, F) 1 at the centre, 0 at the upper edge
    return np.maximum(0.0, np.minimum(rising, falling))  # (M, F)


def mel_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """Triangular HTK-mel filters, float32 (n_mels, n_fft // 2 + 1), peak height 1 each."""
    return torch.from_numpy(_mel_filterbank_f64(cfg)).to(torch.float32)


def num_frames(n_samples: int, cfg: FrontendConfig) -> int:
    """Frames `LogMel` yields for `n_samples` samples (centred frames: one per hop, plus one)."""
    return 1 + n_samples // cfg.hop


class LogMel(torch.nn.Module):
    """Waveform (..., samples) -> natural-log mel power spectrogram (..., n_mels, frames).

    `dtype` sets the precision of the window, filters and computation; input is cast to it.
    float32 is the working precision; float64 exists so tests can check the algorithm
    exactly, since `.double()` would only widen buffers already rounded to float32.
    """

    window: torch.Tensor
    fbank: torch.Tensor

    def __init__(self, cfg: FrontendConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        # Both built in float64 and rounded once. Non-persistent: they derive from cfg, so
        # checkpoints need not carry them.
        window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64).to(dtype)
        fbank = torch.from_numpy(_mel_filterbank_f64(cfg)).to(dtype)  # (M, F)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("fbank", fbank, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        lead = wave.shape[:-1]
        flat = wave.reshape(-1, wave.shape[-1]).to(self.window.dtype)  # (B, S)
        # Reflect padding needs samples > n_fft // 2 (torch.stft raises otherwise): a clip
        # shorter than half a window (a click, a 10 ms sound) is padded with silence to that.
        # Its frames stay those of its own length (`num_frames`).
        frames = 1 + flat.shape[-1] // self.cfg.hop
        short = self.cfg.n_fft // 2 + 1 - flat.shape[-1]
        if short > 0:
            flat = torch.nn.functional.pad(flat, (0, short))
        spec = torch.stft(
            flat,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop,
            win_length=self.cfg.n_fft,
            window=self.window,
            center=True,
            pad_mode="reflect",
            onesided=True,
            return_complex=True,
        )  # (B, F, T)
        spec = spec[..., :frames]
        power = spec.real.square() + spec.imag.square()  # (B, F, T); avoids abs()'s sqrt
        mel = torch.matmul(self.fbank, power)  # (B, M, T)
        out = torch.log(mel + self.cfg.eps)  # (B, M, T)
        return out.reshape(*lead, *out.shape[-2:])  # (..., M, T)


def log_mel(wave: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """NumPy convenience around `LogMel`: (samples,) -> float32 (n_mels, frames)."""
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with torch.no_grad():
        return LogMel(cfg)(x).numpy()
