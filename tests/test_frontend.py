"""The log-mel frontend against librosa (an independent implementation) and simple physics.

librosa is configured to compute what torchaudio's MelSpectrogram does by default: HTK mel
scale, unnormalised triangles, periodic Hann window, centred reflect-padded frames, power 2.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from model.config import FrontendConfig
from model.data.audio import load_audio
from model.frontend import LogMel, log_mel, mel_filterbank, num_frames

# Voice lines (ogg vorbis, 22.05 kHz) from the Debian package fillets-ng-data.
RECORDINGS = Path("/usr/share/games/fillets-ng/sound")

DEFAULT = FrontendConfig()
# Everything but the defaults: another rate (no resampling of the recording), a power-of-two
# FFT, a different hop and mel count, and filters spanning 0 Hz to Nyquist.
WIDE = FrontendConfig(sample_rate=22050, n_fft=1024, hop=256, n_mels=64, f_min=0.0, f_max=11025.0)
CONFIGS = [pytest.param(DEFAULT, id="default"), pytest.param(WIDE, id="22k-1024-64")]


def recording() -> Path:
    files = sorted(RECORDINGS.glob("**/*.ogg"))
    if not files:
        pytest.fail(
            f"no .ogg recordings under {RECORDINGS}: run the project setup, which installs the "
            "Debian package fillets-ng-data (apt-get install fillets-ng-data)",
            pytrace=False,
        )
    return files[0]


def librosa_log_mel(y: np.ndarray, cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel, mel power) in float64; librosa's filters default to float32, so ask for 64."""
    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float64),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
        htk=True,
        norm=None,
        dtype=np.float64,
    )
    return np.log(mel + cfg.eps), mel


@pytest.mark.parametrize("cfg", CONFIGS)
def test_filterbank_matches_librosa(cfg: FrontendConfig) -> None:
    ref = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
        htk=True,
        norm=None,
        dtype=np.float64,
    )
    fb = mel_filterbank(cfg)
    assert fb.dtype == torch.float32
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    # Measured: 3e-8, i.e. float32 rounding of the float64 weights.
    np.testing.assert_allclose(fb.numpy(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_log_mel_matches_librosa_on_recording(cfg: FrontendConfig) -> None:
    y = load_audio(recording(), cfg.sample_rate)
    ref, mel = librosa_log_mel(y, cfg)

    # float64: the algorithm itself must agree to rounding (measured 1e-12 to 5e-12).
    with torch.no_grad():
        exact = LogMel(cfg, dtype=torch.float64)(torch.from_numpy(y.astype(np.float64)))
    assert np.abs(exact.numpy() - ref).max() < 1e-9

    # float32, the working precision. torch's float32 FFT leaves an absolute error of about
    # 1e-7 of each frame's amplitude, so the log error grows as a bin drops below the loud
    # bins: measured <= 4e-5 within 60 dB of the clip's peak (5e-4 to 2e-3 at 100 dB down,
    # which is why there is no bound on the quietest bins). Against the peak, the mel power
    # error is measured at 2e-7 to 4e-7.
    out = log_mel(y, cfg)
    assert out.dtype == np.float32
    assert out.shape == (cfg.n_mels, num_frames(len(y), cfg))
    assert np.isfinite(out).all()
    loud = mel > mel.max() * 1e-6
    assert loud.mean() > 0.5  # the bound below must cover most of the clip to mean much
    assert np.abs(out - ref)[loud].max() < 2e-4
    power_err = np.abs(np.exp(out.astype(np.float64)) - cfg.eps - mel).max()
    assert power_err < 2e-6 * mel.max()


def test_sine_peaks_in_nearest_mel_bin() -> None:
    cfg = DEFAULT
    t = np.arange(cfg.sample_rate) / cfg.sample_rate
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    energy = np.exp(log_mel(tone, cfg)).mean(axis=1)  # (n_mels,)

    # Filter centres from the HTK formula, written out here rather than taken from the code.
    mel_lo, mel_hi = (2595 * np.log10(1 + f / 700) for f in (cfg.f_min, cfg.f_max))
    centres = 700 * (10 ** (np.linspace(mel_lo, mel_hi, cfg.n_mels + 2)[1:-1] / 2595) - 1)
    assert int(np.argmax(energy)) == int(np.argmin(np.abs(centres - 1000.0)))


def test_batched_and_nd_inputs_match_single() -> None:
    rng = np.random.default_rng(0)
    waves = torch.from_numpy(rng.standard_normal((2, 3, 4000)).astype(np.float32))
    module = LogMel(DEFAULT)
    with torch.no_grad():
        nd = module(waves)  # (2, 3, M, T)
        flat = module(waves.reshape(6, -1))  # (6, M, T)
        single = module(waves[1, 2])  # (M, T)
    assert nd.shape == (2, 3, DEFAULT.n_mels, num_frames(4000, DEFAULT))
    # numpy's asserts: torch.testing's first call costs ~0.7 s of lazy imports.
    np.testing.assert_array_equal(nd.reshape(6, *nd.shape[-2:]).numpy(), flat.numpy())
    np.testing.assert_allclose(nd[1, 2].numpy(), single.numpy(), rtol=0, atol=1e-5)


def test_silence_is_log_eps_and_buffers_not_persistent() -> None:
    out = log_mel(np.zeros(1600, dtype=np.float32), DEFAULT)
    np.testing.assert_allclose(out, np.log(DEFAULT.eps), rtol=1e-6)
    # The window and filters derive from the config, so checkpoints must not carry them.
    assert LogMel(DEFAULT).state_dict() == {}


@pytest.mark.parametrize("n", [1, 80, 200, 201, 1599, 1600, 1601, 32000])
def test_num_frames_matches_output(n: int) -> None:
    out = log_mel(np.ones(n, dtype=np.float32), DEFAULT)
    assert out.shape[-1] == num_frames(n, DEFAULT) == 1 + n // DEFAULT.hop


def test_bad_frequency_range_rejected() -> None:
    with pytest.raises(ValueError, match="f_min"):
        mel_filterbank(FrontendConfig(f_min=8000.0, f_max=50.0))


def test_a_clip_shorter_than_half_a_window_is_padded_with_silence() -> None:
    """A 5 ms click (shorter than n_fft // 2, which reflect padding needs) gives finite frames
    whose energy is the click's: it is padded with silence, not refused."""
    click = np.zeros(80, dtype=np.float32)
    click[10:20] = 0.5
    out = log_mel(click, DEFAULT)
    assert out.shape == (DEFAULT.n_mels, 1) and np.isfinite(out).all()
    assert out.max() > np.log(DEFAULT.eps) + 5
