"""Audio decoding, downmix, resampling, error reporting and FLAC writing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.data.audio import MIN_NATIVE_RATE, AudioError, is_silent, load_audio, save_flac

# Voice lines (ogg vorbis, 22.05 kHz) from the Debian package fillets-ng-data.
RECORDINGS = Path("/usr/share/games/fillets-ng/sound")


def recording() -> Path:
    files = sorted(RECORDINGS.glob("**/*.ogg"))
    if not files:
        pytest.fail(
            f"no .ogg recordings under {RECORDINGS}: run the project setup, which installs the "
            "Debian package fillets-ng-data (apt-get install fillets-ng-data)",
            pytrace=False,
        )
    return files[0]


def write_float_wav(path: Path, data: np.ndarray, sample_rate: int) -> Path:
    # 32-bit float WAV stores the samples exactly, so expected values need no quantisation.
    sf.write(path, data, sample_rate, subtype="FLOAT")
    return path


def test_downmix_is_channel_mean(tmp_path: Path) -> None:
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (4000, 3)).astype(np.float32)
    wave = load_audio(write_float_wav(tmp_path / "three.wav", data, 16000), 16000)
    assert wave.dtype == np.float32 and wave.shape == (4000,)
    np.testing.assert_allclose(wave, data.mean(axis=1), rtol=0, atol=1e-7)
    assert not np.allclose(wave, data[:, 0], atol=1e-3)  # not merely the first channel


def test_mono_native_rate_is_returned_unchanged(tmp_path: Path) -> None:
    data = np.random.default_rng(1).uniform(-0.5, 0.5, 3000).astype(np.float32)
    wave = load_audio(write_float_wav(tmp_path / "mono.wav", data, 22050), 22050)
    np.testing.assert_array_equal(wave, data)


def test_resampling_keeps_frequency_and_length(tmp_path: Path) -> None:
    src_rate, dst_rate, n_in = 44100, 16000, 44100 + 1234
    t = np.arange(n_in) / src_rate
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    wave = load_audio(write_float_wav(tmp_path / "tone.wav", tone, src_rate), dst_rate)

    assert abs(len(wave) - n_in * dst_rate / src_rate) <= 1
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak_hz = np.argmax(spectrum) * dst_rate / len(wave)
    # Unresampled samples read as 16 kHz would put the tone at 1213 Hz.
    assert abs(peak_hz - 440.0) < 2.0
    rms = np.sqrt(np.mean(np.square(wave[1000:-1000], dtype=np.float64)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)  # 440 Hz is well in the passband


@pytest.mark.parametrize(
    ("freq", "low_db", "high_db"),
    [
        (7000.0, -0.02, 0.02),  # passband up to 0.875 of the new Nyquist (measured -0.007 dB)
        (10000.0, -np.inf, -100.0),  # above 8 kHz: must be filtered, not aliased (-143 dB)
    ],
)
def test_resampling_filter(tmp_path: Path, freq: float, low_db: float, high_db: float) -> None:
    # Tells soxr 'HQ' from the cheaper settings: 'QQ' aliases 10 kHz through at -0.5 dB,
    # 'LQ' drops 7 kHz by 13 dB, 'MQ' by 0.05 dB.
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    wave = load_audio(write_float_wav(tmp_path / "tone.wav", tone, 44100), 16000)
    rms = np.sqrt(np.mean(np.square(wave[500:-500], dtype=np.float64)))
    gain_db = 20 * np.log10(rms / (0.5 / np.sqrt(2)))
    assert low_db < gain_db < high_db


def test_path_bytes_and_stream_sources_agree() -> None:
    path = recording()
    from_path = load_audio(path, 16000)
    from_str = load_audio(str(path), 16000)
    from_bytes = load_audio(path.read_bytes(), 16000)
    with open(path, "rb") as fh:
        from_stream = load_audio(fh, 16000)
    assert sf.info(path).samplerate == 22050  # so the 16 kHz loads really were resampled
    assert len(from_path) == round(sf.info(path).frames * 16000 / 22050)
    for other in (from_str, from_bytes, from_stream):
        np.testing.assert_array_equal(other, from_path)


def test_empty_file_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: cannot decode"):
        load_audio(path, 16000)


def test_header_only_file_has_no_samples(tmp_path: Path) -> None:
    path = write_float_wav(tmp_path / "nothing.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="nothing.wav: audio has no samples"):
        load_audio(path, 16000)


def test_text_file_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.flac"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match="notes.flac: cannot decode"):
        load_audio(path, 16000)


def test_bytes_error_uses_given_name() -> None:
    with pytest.raises(AudioError, match="^clip-42: cannot decode"):
        load_audio(b"definitely not audio", 16000, name="clip-42")


def test_missing_file_is_an_audio_error(tmp_path: Path) -> None:
    # libsndfile opens the path itself, so a missing file surfaces as a decode failure.
    with pytest.raises(AudioError, match="absent.wav"):
        load_audio(tmp_path / "absent.wav", 16000)


def test_truncated_flac_raises(tmp_path: Path) -> None:
    # FLAC's header records the total length, so libsndfile notices the missing half
    # (observed message: "flac decoder lost sync").
    full = tmp_path / "full.flac"
    save_flac(full, load_audio(recording(), 22050), 22050)
    cut = tmp_path / "cut.flac"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.flac: cannot decode"):
        load_audio(cut, 22050)


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, granule position) of each Ogg page: the header pages have granule 0."""
    out, at = [], data.find(b"OggS")
    while at >= 0:
        out.append((at, int.from_bytes(data[at + 6 : at + 14], "little", signed=True)))
        at = data.find(b"OggS", at + 4)
    return out


def test_truncated_ogg_without_audio_pages_raises(tmp_path: Path) -> None:
    # Ogg has no up-front length: a file cut before its first audio page decodes to nothing,
    # which is an error naming the file (not an empty clip).
    data = recording().read_bytes()
    first_audio = next(at for at, granule in ogg_pages(data) if granule > 0)
    for end in (first_audio, first_audio + 10):
        cut = tmp_path / "cut.ogg"
        cut.write_bytes(data[:end])
        with pytest.raises(AudioError, match="cut.ogg"):
            load_audio(cut, 22050)


def test_truncated_ogg_decodes_its_whole_pages(tmp_path: Path) -> None:
    # Cut inside the last pages, libsndfile decodes the pages that survive whole and does not
    # report the loss: a strictly shorter clip, sample for sample the start of the full one,
    # the same wherever inside a page the cut falls.
    source = recording()
    full = load_audio(source, 22050)
    data = source.read_bytes()
    pages = ogg_pages(data)
    assert len(pages) >= 4
    last = pages[-2][0]  # the start of the page before the last one
    at_page = tmp_path / "at-page.ogg"
    at_page.write_bytes(data[:last])
    inside = tmp_path / "inside.ogg"
    inside.write_bytes(data[: (last + pages[-1][0]) // 2])
    partial = load_audio(at_page, 22050)
    assert 0 < len(partial) < len(full)
    np.testing.assert_array_equal(partial, full[: len(partial)])
    np.testing.assert_array_equal(load_audio(inside, 22050), partial)
    # The pages that survive hold the samples up to the last one's granule position.
    assert len(partial) == pages[-3][1]


def test_non_finite_samples_raise(tmp_path: Path) -> None:
    data = np.zeros(1000, np.float32)
    data[500] = np.nan
    path = write_float_wav(tmp_path / "nan.wav", data, 16000)
    with pytest.raises(AudioError, match="nan.wav: audio contains non-finite"):
        load_audio(path, 16000)


@pytest.mark.parametrize("rate", [1, 999])
def test_a_header_rate_under_any_audio_raises_naming_it(tmp_path: Path, rate: int) -> None:
    # A real recording relabelled at `rate` Hz: resampling it to 16 kHz would make it
    # 16,000 / rate times longer, so it is refused before any resampling.
    t = np.arange(4000) / 16000
    path = tmp_path / "relabelled.wav"
    sf.write(path, np.sin(2 * np.pi * 440 * t).astype(np.float32), rate)
    with pytest.raises(AudioError, match=f"relabelled.wav: its header declares {rate} Hz"):
        load_audio(path, 16000)
    sf.write(path, np.sin(2 * np.pi * 440 * t).astype(np.float32), MIN_NATIVE_RATE)
    assert len(load_audio(path, 16000)) == 64000  # the floor itself is audio


def test_is_silent() -> None:
    t = np.arange(16000) / 16000
    sine = np.sin(2 * np.pi * 300 * t).astype(np.float32)  # RMS 1/sqrt(2): -3 dBFS
    assert is_silent(np.zeros(1000, np.float32))
    assert is_silent(np.zeros(0, np.float32))
    assert is_silent(sine * 1e-4)  # -83 dBFS
    assert not is_silent(sine * 0.1)  # -23 dBFS
    quiet = sine * 10 ** (-47 / 20)  # -50 dBFS
    assert not is_silent(quiet)
    assert is_silent(quiet, threshold_db=-40.0)


def test_save_flac_round_trip(tmp_path: Path) -> None:
    wave = np.random.default_rng(2).uniform(-1, 1, 8000).astype(np.float32)
    path = tmp_path / "out.flac"
    save_flac(path, wave, 16000)

    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.frames) == (
        "FLAC",
        "PCM_16",
        16000,
        8000,
    )
    back = load_audio(path, 16000)
    # One 16-bit step (libsndfile scales by 32767 on write and 1/32768 on read).
    assert np.abs(back - wave).max() <= 2.0**-15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac"]  # no temp file left


def test_save_flac_clips_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "out.flac"
    save_flac(path, np.full(100, 0.25, np.float32), 16000)
    save_flac(path, np.array([1.5, -1.5, 0.0], np.float32), 16000)
    back, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(back, [32767, -32768, 0])


def test_save_flac_failure_leaves_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.flac"
    save_flac(path, np.full(100, 0.25, np.float32), 16000)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        save_flac(path, np.array([0.0, np.inf], np.float32), 16000)
    # This one fails inside the encoder, after the temporary file was created.
    with pytest.raises(sf.LibsndfileError):
        save_flac(path, np.zeros(10, np.float32), 0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac"]


def test_stereo_save_and_bytes_round_trip(tmp_path: Path) -> None:
    stereo = np.stack([np.full(500, 0.5), np.full(500, -0.25)], axis=1).astype(np.float32)
    path = tmp_path / "stereo.flac"
    save_flac(path, stereo, 16000)
    assert sf.info(path).channels == 2
    mono = load_audio(io.BytesIO(path.read_bytes()), 16000)
    np.testing.assert_allclose(mono, 0.125, atol=2.0**-15)
