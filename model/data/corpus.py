"""Unlabelled pretraining audio: long recordings that no probe task uses.

Probe tasks are scored by cross-validation (every labelled clip is a test clip once), so the
pretraining corpus must hold none of their audio. These sources come from Debian packages that
no built-in task draws on (0 A.D.'s music and ambience are not its sound effects), and they are
long-form: a crop of a long recording is audio from edge to edge, where a short clip padded to
the crop length would teach the JEPA to predict padding.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.errors import AblError

if TYPE_CHECKING:
    from model.data.sources import RawClip


class ZeroADLongform:
    """0 A.D. music tracks and ambient loops (`0ad-data`), all in the train split."""

    name = "corpus-0ad"
    description = "0 A.D. music and ambience (unlabelled pretraining audio)"
    packages = ("0ad-data",)
    max_seconds = 600.0
    unlabelled = True  # pretraining audio only: never a probe task
    prefixes = {"music": "audio/music/", "ambient": "audio/ambient/"}

    def clips(self) -> list[RawClip]:
        from model.data.sources import RawClip, ZeroADArchive

        archive = ZeroADArchive()
        names = archive.oggs()
        return [
            RawClip(n[len("audio/") :], kind, n, archive.reader(n), split="train")
            for kind, prefix in self.prefixes.items()
            for n in names
            if n.startswith(prefix)
        ]


class WesnothMusic:
    """The orchestral soundtrack of Battle for Wesnoth (`wesnoth-1.16-music`): 41 tracks, 2.1 h."""

    name = "corpus-wesnoth"
    description = "Battle for Wesnoth music (unlabelled pretraining audio)"
    packages = ("wesnoth-1.16-music",)
    root = Path("/usr/share/games/wesnoth/1.16/data/core/music")
    max_seconds = 600.0
    unlabelled = True

    def clips(self) -> list[RawClip]:
        from model.data.sources import RawClip

        files = sorted(self.root.glob("*.ogg"))
        if not files:
            raise AblError(
                f"{self.root}: no Wesnoth music; install the Debian package wesnoth-1.16-music "
                "(scripts/setup.sh does)"
            )
        return [RawClip(f.name, "music", f.stem, f.read_bytes, split="train") for f in files]


class AsteriskSpeech:
    """Real read speech: the studio voice prompts of Asterisk (`asterisk-core-sounds-*-wav`),
    one professional voice per language (en, es, fr, it, ru), 2.2 h in all.

    A prompt lasts one to five seconds, so the prompts of each voice are joined, in file order
    with 0.25 s of silence between them, into recordings of about `seconds`: long-form speech
    whose crops hold no padding. The files are 8 kHz telephone audio, band-limited to 4 kHz.
    """

    name = "corpus-speech"
    description = "Asterisk voice prompts in 5 languages, joined into 30 s recordings (unlabelled)"
    languages = ("en", "es", "fr", "it", "ru")
    packages = tuple(f"asterisk-core-sounds-{lang}-wav" for lang in languages)
    root = Path("/usr/share/asterisk/sounds")
    seconds = 30.0
    gap_seconds = 0.25
    sample_rate = 16000
    max_seconds = 60.0
    unlabelled = True

    def voices(self) -> dict[str, list[Path]]:
        """Voice folder (`en_US_f_Allison`) -> its prompt files, sorted."""
        out = {}
        for lang, package in zip(self.languages, self.packages, strict=True):
            folders = sorted(self.root.glob(f"{lang}_*"))
            files = sorted(f for d in folders for f in d.rglob("*.wav"))
            if not files:
                raise AblError(
                    f"{self.root}/{lang}_*: no Asterisk prompts; install the Debian package "
                    f"{package} (scripts/setup.sh does)"
                )
            out[folders[0].name] = files
        return out

    def clips(self) -> list[RawClip]:
        import soundfile as sf

        from model.data.sources import RawClip

        out = []
        for voice, files in self.voices().items():
            batches: list[list[Path]] = [[]]
            total = 0.0
            for f in files:
                try:
                    total += sf.info(str(f)).duration + self.gap_seconds
                except RuntimeError:
                    continue  # unreadable: left out of the joined recordings
                batches[-1].append(f)
                if total >= self.seconds:
                    batches.append([])
                    total = 0.0
            for batch in filter(None, batches):
                name = f"{voice}/{len(out):04d}.wav"
                join = functools.partial(self._join, batch)
                out.append(RawClip(name, voice, voice, join, split="train"))
        return out

    def _join(self, files: list[Path]) -> bytes:
        from model.data.audio import AudioError, load_audio
        from model.data.sources import wav_bytes

        gap = np.zeros(round(self.gap_seconds * self.sample_rate), np.float32)
        parts = []
        for f in files:
            try:
                parts += [load_audio(f.read_bytes(), self.sample_rate, name=str(f)), gap]
            except AudioError:
                continue
        wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        return wav_bytes(wave / peak * 0.5 if peak > 0 else wave, self.sample_rate)
