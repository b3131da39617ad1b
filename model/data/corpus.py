"""Unlabelled pretraining audio: long recordings that no probe task uses.

Probe tasks are scored by cross-validation (every labelled clip is a test clip once), so the
pretraining corpus must hold none of their audio. These sources come from Debian packages that
no built-in task draws on (0 A.D.'s music and ambience are not its sound effects), and they are
long-form: a crop of a long recording is audio from edge to edge, where a short clip padded to
the crop length would teach the JEPA to predict padding.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
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
                readers = [f.read_bytes for f in batch]
                join = functools.partial(_join_waves, readers, self.sample_rate, self.gap_seconds)
                out.append(RawClip(name, voice, voice, join, split="train"))
        return out


def _joined(
    stream: str, parts: list[tuple[str, Callable[[], bytes]]], seconds: float, gap: float
) -> list[tuple[str, list[Callable[[], bytes]]]]:
    """Cut one stream of short recordings (name, reader) into batches of about `seconds`
    (`gap` of silence after each), in order: (recording name, its readers)."""
    import io

    import soundfile as sf

    batches: list[list[Callable[[], bytes]]] = [[]]
    total = 0.0
    for _, read in parts:
        try:
            total += sf.info(io.BytesIO(read())).duration + gap
        except RuntimeError:
            continue  # unreadable: left out
        batches[-1].append(read)
        if total >= seconds:
            batches.append([])
            total = 0.0
    return [(f"{stream}/{i:04d}.wav", b) for i, b in enumerate(filter(None, batches))]


def _join_waves(
    readers: list[Callable[[], bytes]], rate: int, gap: float, each: bool = False
) -> bytes:
    """One recording of the parts, `gap` seconds of silence after each; with `each`, every part
    is brought to the same peak first (sound effects differ in level by tens of dB)."""
    from model.data.audio import AudioError, load_audio
    from model.data.sources import wav_bytes

    silence = np.zeros(round(gap * rate), np.float32)
    parts = []
    for read in readers:
        try:
            w = load_audio(read(), rate)
        except AudioError:
            continue
        peak = float(np.abs(w).max()) if w.size else 0.0
        if each and peak > 0:
            w = w / peak * 0.5
        parts += [w, silence]
    wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return wav_bytes(wave / peak * 0.5 if peak > 0 else wave, rate)


class JoinedEvents:
    """Short recordings joined into long ones: each stream's files (`streams()`: stream name ->
    its (file name, reader) pairs, in order), with 0.25 s of silence after each and each brought
    to the same peak (short events differ in level by tens of dB), into recordings of about
    30 s: a crop holds several whole events and no padding."""

    seconds = 30.0
    gap_seconds = 0.25
    sample_rate = 16000
    max_seconds = 60.0
    unlabelled = True

    def streams(self) -> dict[str, list[tuple[str, Callable[[], bytes]]]]:
        raise NotImplementedError

    def clips(self) -> list[RawClip]:
        from model.data.sources import RawClip

        out = []
        for stream, parts in self.streams().items():
            for name, readers in _joined(stream, parts, self.seconds, self.gap_seconds):
                join = functools.partial(
                    _join_waves, readers, self.sample_rate, self.gap_seconds, True
                )
                out.append(RawClip(name, stream, stream, join, split="train"))
        return out


class GameEffects(JoinedEvents):
    """Short sound events that no probe task uses: the sound effects and the voice lines (15
    voice packs, many speakers) of Hedgewars (`hedgewars-data`) and the city sounds of
    LinCity-NG (`lincity-ng-data`), 30 min in all; one stream per folder."""

    name = "corpus-sfx"
    description = "game sound effects and voice lines, joined into 30 s recordings (unlabelled)"
    packages = ("hedgewars-data", "lincity-ng-data")
    hedgewars = Path("/usr/share/games/hedgewars/Data/Sounds")
    lincity = Path("/usr/share/games/lincity-ng/sounds")

    def streams(self) -> dict[str, list[tuple[str, Callable[[], bytes]]]]:
        def files(folder: Path) -> list[tuple[str, Callable[[], bytes]]]:
            found = sorted(f for f in folder.glob("*") if f.is_file()) if folder.is_dir() else []
            return [(f.name, f.read_bytes) for f in found]

        out = {"hedgewars": files(self.hedgewars), "lincity": files(self.lincity)}
        voices = self.hedgewars / "voices"
        for d in sorted(voices.iterdir()) if voices.is_dir() else []:
            out[f"hedgewars-{d.name}"] = files(d)
        if not out["hedgewars"] or not out["lincity"]:
            raise AblError(
                f"{self.name}: sound effects missing under {self.hedgewars} or {self.lincity}; "
                f"install the Debian packages {', '.join(self.packages)} (scripts/setup.sh does)"
            )
        return out


class SpokenWords(JoinedEvents):
    """Short words in many voices: the spoken object names of KTuberling (`ktuberling-data`),
    one reader per language, 0.65 h once joined, mostly wideband (8-48 kHz files); one stream
    per language. The words name objects and body parts, never digits."""

    name = "corpus-words"
    description = "KTuberling's spoken words in 23 languages, joined into 30 s recordings"
    packages = ("ktuberling-data",)
    root = Path("/usr/share/ktuberling/sounds")
    suffixes = (".ogg", ".opus", ".wav")

    def streams(self) -> dict[str, list[tuple[str, Callable[[], bytes]]]]:
        folders = sorted(d for d in self.root.iterdir() if d.is_dir()) if self.root.is_dir() else []
        out, seen = {}, set()
        for d in folders:
            found = sorted(f for f in d.iterdir() if f.suffix in self.suffixes and f.is_file())
            # the Serbian scripts share one reader's files
            files = [(f.name, f.read_bytes) for f in _distinct(found, seen)]
            if files:
                out[d.name] = files
        if not out:
            raise AblError(
                f"{self.root}: no spoken words; install the Debian package ktuberling-data "
                "(scripts/setup.sh does)"
            )
        return out


def _distinct(files: list[Path], seen: set[bytes]) -> list[Path]:
    """The files whose content is not in `seen` yet (SHA-1), in order; `seen` takes theirs.
    Games ship one recording under several names (a loop in every tileset, one reader's words
    under two scripts): kept once, a corpus does not weight it by its copies."""
    out = []
    for f in files:
        digest = hashlib.sha1(f.read_bytes()).digest()
        if digest not in seen:
            seen.add(digest)
            out.append(f)
    return out


class GameSoundtracks:
    """Two more game soundtracks, in styles the other corpora lack: Warzone 2100's three
    albums (`warzone2100-music`: electronic and ambient, 30 tracks, 4.05 h) and Hedgewars'
    cartoon themes (`hedgewars-data`: 26 tracks, 1.56 h)."""

    name = "corpus-soundtracks"
    description = "Warzone 2100 and Hedgewars music (unlabelled pretraining audio)"
    packages = ("warzone2100-music", "hedgewars-data")
    warzone = Path("/usr/share/games/warzone2100/music")
    hedgewars = Path("/usr/share/games/hedgewars/Data/Music")
    max_seconds = 600.0
    unlabelled = True

    def clips(self) -> list[RawClip]:
        from model.data.sources import RawClip

        out = []
        games = [("warzone2100", self.warzone, "*.opus"), ("hedgewars", self.hedgewars, "*.ogg")]
        for (game, root, pattern), package in zip(games, self.packages, strict=True):
            files = sorted(root.rglob(pattern)) if root.is_dir() else []
            if not files:
                raise AblError(
                    f"{root}: no {game} music; install the Debian package {package} "
                    "(scripts/setup.sh does)"
                )
            for f in files:
                name = f"{game}/{f.relative_to(root)}"
                out.append(RawClip(name, game, name, f.read_bytes, split="train"))
        return out


class MegaGlestSounds(JoinedEvents):
    """Everything MegaGlest (`megaglest-data`) sounds like, each recording once: its tilesets'
    ambience loops (forest, desert, water, night) and its factions' music as they are, and the
    short sounds of its units (voices, weapons, magic, buildings) joined per faction into 30 s
    recordings, 1.5 h in all."""

    name = "corpus-megaglest"
    description = "MegaGlest ambience, music and unit sounds (short ones joined to 30 s)"
    packages = ("megaglest-data",)
    root = Path("/usr/share/games/megaglest")
    max_seconds = 600.0

    def _files(self, suffix: str) -> list[Path]:
        found = sorted(self.root.rglob(f"*{suffix}")) if self.root.is_dir() else []
        if not found:
            raise AblError(
                f"{self.root}: no MegaGlest sounds; install the Debian package megaglest-data "
                "(scripts/setup.sh does)"
            )
        return found

    def streams(self) -> dict[str, list[tuple[str, Callable[[], bytes]]]]:
        out: dict[str, list[tuple[str, Callable[[], bytes]]]] = {}
        factions = self.root / "techs" / "megapack" / "factions"
        for f in _distinct(self._files(".wav"), set()):
            rel = f.relative_to(self.root)
            if f.is_relative_to(factions):
                stream = rel.parts[3]  # the faction
            else:  # the tech tree's shared sounds, the menus', the tilesets' one-shots
                stream = "common" if "commondata" in rel.parts else rel.parts[0]
            out.setdefault(stream, []).append((str(rel), f.read_bytes))
        return out

    def clips(self) -> list[RawClip]:
        from model.data.sources import RawClip

        long = []
        for f in _distinct(self._files(".ogg"), set()):
            rel = str(f.relative_to(self.root))
            kind = "ambience" if rel.startswith("tilesets/") else "music"
            long.append(RawClip(rel, kind, rel, f.read_bytes, split="train"))
        return long + super().clips()
