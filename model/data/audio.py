"""Audio file I/O: decode anything libsndfile reads to mono float32 at a chosen rate.

Decoding goes through `soundfile` (libsndfile: wav, flac, ogg vorbis, ...) and resampling
through `soxr`; torchaudio is deliberately not used. Bad input is reported as `AudioError`
naming the file, so a data-preparation loop can skip or list broken clips without guessing
which exception types a codec might raise.
"""

from __future__ import annotations

import io
import math
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

# The lowest sample rate a file's header may declare: telephone speech is 8 kHz and the lowest
# rates in use (some bioacoustics, old voice codecs) are a few kHz. A header that says less is
# damaged or mislabelled, and resampling it to 16 kHz would inflate it thousands of times.
MIN_NATIVE_RATE = 1000


class AudioError(ValueError):
    """Audio that cannot be decoded or is unusable (empty, non-finite); names the file."""


def _source_name(source: str | Path | bytes | BinaryIO, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    # Real file objects carry their path; in-memory streams do not.
    stream_name = getattr(source, "name", None)
    return str(stream_name) if stream_name is not None else "<stream>"


def load_audio(
    source: str | Path | bytes | BinaryIO, sample_rate: int, name: str | None = None
) -> np.ndarray:
    """Decode `source` to a 1-D float32 mono waveform at `sample_rate` Hz.

    `source` is a path, the encoded file's bytes, or a seekable binary stream; `name` is used
    in error messages (defaults to the path or the stream's name). Multi-channel audio is
    downmixed by averaging the channels; a different native rate is resampled with soxr 'HQ'.

    Raises:
        AudioError: the data is not decodable audio (unknown format, truncated so that the
            codec notices, not audio at all), decodes to no samples, declares a sample rate
            under MIN_NATIVE_RATE, or holds NaN/inf.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    label = _source_name(source, name)
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)

    # Only the decode is guarded: anything raised later is a bug here, not bad input.
    try:
        data, native_rate = sf.read(source, dtype="float32", always_2d=True)  # (N, C)
    except (sf.SoundFileError, RuntimeError, EOFError) as exc:
        # libsndfile names an in-memory source by its object's address: say what it found only
        why = re.sub(r"^Error opening <[^>]*>: ", "", str(exc))
        raise AudioError(f"{label}: cannot decode audio: {why}") from exc

    if data.shape[0] == 0:
        raise AudioError(f"{label}: audio has no samples")
    # A header's rate is bad input like any other: 1 Hz would be resampled 16,000-fold.
    if native_rate < MIN_NATIVE_RATE:
        raise AudioError(
            f"{label}: its header declares {native_rate} Hz, under the {MIN_NATIVE_RATE} Hz "
            "any audio has; rewrite it at its true sample rate"
        )
    # Checked before resampling, which would smear a single NaN across the whole clip.
    if not np.isfinite(data).all():
        raise AudioError(f"{label}: audio contains non-finite samples (NaN or inf)")

    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)  # (N,)
    if native_rate != sample_rate:
        wave = soxr.resample(wave, native_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def is_silent(wave: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when the RMS level of `wave` (full scale = 1.0) is below `threshold_db` dBFS.

    An empty or all-zero wave is silent (its level is -inf dBFS).
    """
    if wave.size == 0:
        return True
    # float64 so that the mean of many tiny squares neither underflows nor loses precision.
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms == 0.0:
        return True
    return 20.0 * math.log10(rms) < threshold_db


def save_flac(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write `wave` ((N,) or (N, C), full scale 1.0) to `path` as 16-bit FLAC, atomically.

    The data goes to a temporary file in the destination folder that is then renamed over
    `path`, so readers never see a half-written file and a failed write leaves any existing
    file untouched. Samples beyond [-1, 1] are clipped here rather than trusting the
    encoder's float-to-int conversion settings to saturate instead of wrapping around.
    """
    path = Path(path)
    if not np.isfinite(wave).all():
        raise ValueError(f"{path}: refusing to write non-finite samples")
    clipped = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)

    # Same folder as the target so os.replace is a rename within one filesystem; opened by
    # hand (not mkstemp) so the file gets the usual umask-derived permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            sf.write(fh, clipped, sample_rate, format="FLAC", subtype="PCM_16")
            fh.flush()
            os.fsync(fh.fileno())  # durable before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
