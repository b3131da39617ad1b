"""Task sources: where the labelled clips of each probe task come from.

A source lists raw clips (a name, a label, a group and a way to read the bytes); preparation in
`model.data.datasets` decodes, splits and stores them. Sources read Debian packages installed by the
README's set-up, so nothing is downloaded at run time.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import re
import shutil
import subprocess
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from model.data.audio import AudioError, is_silent, load_audio
from model.errors import AblError


@dataclass(frozen=True)
class RawClip:
    name: str  # unique within the task, used for the prepared file name
    label: str
    group: str  # clips sharing a group never straddle two splits
    read: Callable[[], bytes] = field(repr=False, compare=False)
    split: str | None = None  # a data set's own split ("train" | "val" | "test"), if it has one


class TaskSource(Protocol):
    name: str
    description: str
    packages: tuple[str, ...]  # Debian packages the audio comes from (versions are recorded)

    def clips(self) -> list[RawClip]: ...


def prepared_file(clip_name: str) -> str:
    """Where `prepare_task` stores a clip: its name without extension, made file-system safe."""
    return "audio/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_name.rsplit(".", 1)[0]) + ".flac"


def package_version(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class ZeroADArchive:
    """Reads the audio inside 0 A.D.'s `public.zip` (Debian package `0ad-data`)."""

    path = Path("/usr/share/games/0ad/mods/public/public.zip")
    _zip: zipfile.ZipFile | None = None

    def oggs(self) -> list[str]:
        if not self.path.is_file():
            raise AblError(
                f"{self.path}: 0 A.D. audio not found; install the Debian package 0ad-data "
                "(scripts/setup.sh does)"
            )
        with zipfile.ZipFile(self.path) as zf:
            return sorted(n for n in zf.namelist() if n.endswith(".ogg"))

    def reader(self, member: str) -> Callable[[], bytes]:
        def read() -> bytes:
            # Opening the 275 MB archive parses its whole directory: do it once per process.
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return self._zip.read(member)

        return read


class ZeroADEffects:
    """0 A.D. sound effects (`0ad-data`): ten folder classes of real recorded effects."""

    name = "env-sfx"
    description = "0 A.D. sound effects, 10 classes; group = sound stem without trailing digits"
    packages = ("0ad-data",)
    archive = ZeroADArchive()
    folders = {
        "impact": "audio/attack/impact/",
        "weapon": "audio/attack/weapon/",
        "fire": "audio/attack/fire/",
        "human": "audio/actor/human/",
        "fauna": "audio/actor/fauna/",
        "steps": "audio/actor/singlesteps/",
        "gathering": "audio/resource/gathering/",
        "mining": "audio/resource/mining/",
        "construction": "audio/resource/construction/",
        "lumbering": "audio/resource/lumbering/",
    }

    def clips(self) -> list[RawClip]:
        names = self.archive.oggs()
        out = []
        for label, prefix in self.folders.items():
            for n in names:
                if not n.startswith(prefix):
                    continue
                stem = Path(n).stem
                # camel_10 and camel_11 are takes of one sound: group them.
                group = label + "/" + re.sub(r"[_\-\s]*\d+$", "", stem)
                out.append(RawClip(n[len("audio/") :], label, group, self.archive.reader(n)))
        return out


class SoundFontNotes:
    """Single notes of the 128 General MIDI melodic programs, rendered from FluidR3_GM.

    Label = GM family (program // 8, 16 classes of 8 programs); group = program, so the test
    programs are instruments the probe never heard. Every program plays the same pitches and
    velocities, so pitch is no cue to the family: only timbre is.

    Rendering is in-process with pyfluidsynth (libfluidsynth): one synthesiser per process,
    created on the first clip (loading the 141 MB SoundFont takes ~0.3 s; a note then takes
    ~1 ms). A reused synthesiser carries state from one note into the next (voice objects are
    recycled, and the int16 path dithers), so that a clip's audio does not depend on which
    clips were rendered before it: reverb and chorus are off, samples are read as float, and
    before every note a fixed chord sounds for one block on every voice of the pool, so each
    note starts from the same voice state.
    """

    name = "music-family"
    description = (
        "FluidR3 GM notes, 16 GM families (program // 8); group = program (test programs unseen)"
    )
    packages = ("fluid-soundfont-gm", "libfluidsynth3")
    soundfont = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
    sample_rate = 16000
    pitches = (48, 55, 60, 64, 67, 72)  # C3 .. C5: playable by nearly every program
    velocities = (64, 112)
    hold_seconds = 1.0  # note on, then note off and
    release_seconds = 0.5  # this much of the release
    families = (
        "piano",
        "chromatic-percussion",
        "organ",
        "guitar",
        "bass",
        "strings",
        "ensemble",
        "brass",
        "reed",
        "pipe",
        "synth-lead",
        "synth-pad",
        "synth-effects",
        "ethnic",
        "percussive",
        "sound-effects",
    )

    def clips(self) -> list[RawClip]:
        if not self.soundfont.is_file():
            raise AblError(
                f"{self.soundfont}: SoundFont not found; install the Debian package "
                "fluid-soundfont-gm (scripts/setup.sh does)"
            )
        _import_fluidsynth()  # fail here, before preparation starts, if the library is missing
        out = []
        for program in range(128):
            family = f"{program // 8:02d}-{self.families[program // 8]}"
            for pitch in self.pitches:
                for velocity in self.velocities:
                    out.append(
                        RawClip(
                            f"p{program:03d}-k{pitch}-v{velocity}.wav",
                            family,
                            f"program-{program:03d}",
                            functools.partial(self._render, program, pitch, velocity),
                        )
                    )
        return out

    _BLOCK = 64  # FluidSynth renders in blocks of 64 frames; lengths are whole blocks
    _POLYPHONY = 32  # voices in the pool; the reset chord (piano: 2 voices a key) fills it

    def _render(self, program: int, pitch: int, velocity: int) -> bytes:
        synth, sfid, write = self._synth()
        n_hold = round(self.hold_seconds * self.sample_rate / self._BLOCK) * self._BLOCK
        n_release = round(self.release_seconds * self.sample_rate / self._BLOCK) * self._BLOCK
        # Reset chord: every voice of the pool plays the same piano note for one block.
        synth.system_reset()
        synth.program_select(0, sfid, 0, 0)
        for key in range(self._POLYPHONY // 2):
            synth.noteon(0, 40 + key, 100)
        write(self._BLOCK)
        synth.all_sounds_off(0)
        write(self._BLOCK)
        synth.system_reset()
        synth.program_select(0, sfid, 0, program)
        synth.noteon(0, pitch, velocity)
        held = write(n_hold)
        synth.noteoff(0, pitch)
        released = write(n_release)
        synth.all_sounds_off(0)
        write(4 * self._BLOCK)  # let the killed voices finish before the next note
        return wav_bytes(np.concatenate([held, released]), self.sample_rate)

    _state: tuple | None = None

    def _synth(self) -> tuple:
        if self._state is not None:
            return self._state
        fluidsynth = _import_fluidsynth()
        synth = fluidsynth.Synth(
            gain=0.5,
            samplerate=float(self.sample_rate),
            **{
                "synth.reverb.active": 0,
                "synth.chorus.active": 0,
                "synth.polyphony": self._POLYPHONY,
            },
        )
        sfid = synth.sfload(str(self.soundfont))
        if sfid < 0:
            raise AblError(f"{self.soundfont}: FluidSynth cannot load this SoundFont")
        c_write = fluidsynth.cfunc(
            "fluid_synth_write_float",
            ctypes.c_int,
            ("synth", ctypes.c_void_p, 1),
            ("len", ctypes.c_int, 1),
            ("lout", ctypes.c_void_p, 1),
            ("loff", ctypes.c_int, 1),
            ("lincr", ctypes.c_int, 1),
            ("rout", ctypes.c_void_p, 1),
            ("roff", ctypes.c_int, 1),
            ("rincr", ctypes.c_int, 1),
        )

        def write(n: int) -> np.ndarray:
            out = np.zeros((n, 2), np.float32)  # interleaved stereo
            c_write(synth.synth, n, out.ctypes.data, 0, 2, out.ctypes.data, 1, 2)
            return out

        self._state = (synth, sfid, write)
        return self._state


def _import_fluidsynth():
    try:
        import fluidsynth
    except (ImportError, OSError) as e:
        raise AblError(
            f"pyfluidsynth cannot load libfluidsynth ({e}); install the Debian package "
            "libfluidsynth3 (scripts/setup.sh does)"
        ) from None
    return fluidsynth


class FilletsSpeakers:
    """Who is speaking, in acted voice lines of Fish Fillets NG (Czech and Dutch dubs).

    Label = language-speaker (`cs-m`: the small fish of the Czech dub); the speaker is the
    second '-'-field of the file name (`vit-m-hlava.ogg`). Group = level directory (shared by
    both languages), so no level straddles two splits.

    Only speakers with at least `min_lines` lines in at least `min_levels` levels are kept:
    the two fish of each dub. The minor characters live in one to three levels each (with
    group = level they could not reach every split) and `x` marks sound effects, not a voice.

    Four clean actors are too easy (both baselines 99 % on 0.5 s crops, 98 % on 0.1 s crops:
    pitch and each dub's studio give them away), so each clip is a two-talker mixture: the loudest
    `crop_seconds` of the line, plus the loudest crop of a line of another speaker from the same
    level, `interferer_db` quieter (both RMS-normalised first). The label is the louder talker.
    The interferer comes from the same level, so a mixture never carries audio of another
    split. Mixtures are rendered here at 16 kHz and written as WAV.
    """

    name = "speech-speaker"
    root = Path("/usr/share/games/fillets-ng/sound")
    languages = {"cs": "fillets-ng-data-cs", "nl": "fillets-ng-data-nl"}
    packages = tuple(languages.values())
    min_levels = 3
    min_lines = 100
    crop_seconds: float | None = 1.0  # None: the whole line
    interferer_db: float | None = 2.0  # None: no interfering talker
    sample_rate = 16000
    level_rms = 0.05  # every mixture is scaled to this RMS (-26 dBFS): loudness is no cue
    description = (
        "Fish Fillets NG voice lines (cs, nl), 4 speakers; loudest 1 s of a line with a second "
        "talker 2 dB quieter; group = level"
    )

    def lines(self) -> list[tuple[str, str, str, Path]]:
        """(language, speaker, level, path) of every voice line with a speaker field."""
        out = []
        for lang, package in self.languages.items():
            files = sorted(self.root.glob(f"*/{lang}/*.ogg"))
            if not files:
                raise AblError(
                    f"{self.root}/*/{lang}: no Fish Fillets voice lines; install the Debian "
                    f"package {package} (scripts/setup.sh does)"
                )
            for f in files:
                parts = f.stem.split("-")
                if len(parts) >= 3 and parts[1].isalpha():
                    out.append((lang, parts[1], f.parent.parent.name, f))
        return out

    def clips(self) -> list[RawClip]:
        lines = self.lines()
        levels: dict[str, set[str]] = defaultdict(set)
        counts: Counter[str] = Counter()
        for lang, speaker, level, _ in lines:
            levels[f"{lang}-{speaker}"].add(level)
            counts[f"{lang}-{speaker}"] += 1
        kept = [
            (f"{lang}-{speaker}", level, path)
            for lang, speaker, level, path in lines
            if len(levels[f"{lang}-{speaker}"]) >= self.min_levels
            and counts[f"{lang}-{speaker}"] >= self.min_lines
        ]
        in_level: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for label, level, path in kept:
            in_level[level].append((label, path))
        out = []
        for label, level, path in kept:
            name = f"{path.parent.name}/{level}/{path.name}"
            # Interferer candidates: other speakers' lines of this level, in an order drawn
            # from the clip's name; the first that decodes to sound is used.
            others = sorted(
                (p for lab, p in in_level[level] if lab != label),
                key=lambda p, n=name: hashlib.sha1(f"{n}|{p}".encode()).hexdigest(),
            )
            out.append(RawClip(name, label, level, functools.partial(self._read, path, others)))
        return out

    def _crop(self, path: Path) -> np.ndarray | None:
        try:
            wave = load_audio(path.read_bytes(), self.sample_rate, name=str(path))
        except AudioError:
            return None
        if self.crop_seconds is not None:
            n = round(self.crop_seconds * self.sample_rate)
            wave = wave[loudest_window(wave, n, self.sample_rate)]
        return None if is_silent(wave) else wave

    def _read(self, path: Path, others: list[Path]) -> bytes:
        target = self._crop(path)
        if target is None:
            return path.read_bytes()  # preparation reports it as unreadable or silent
        mix = target / _rms(target)
        if self.interferer_db is not None:
            for other in others:
                second = self._crop(other)
                if second is not None:
                    second = np.pad(second, (0, max(0, len(mix) - len(second))))[: len(mix)]
                    mix = mix + second / _rms(second) * 10 ** (-self.interferer_db / 20)
                    break
        return wav_bytes(mix / _rms(mix) * self.level_rms, self.sample_rate)


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    """24-bit WAV bytes of `wave` (full scale 1.0, clipped). Not float WAV: libsndfile writes
    a PEAK chunk with a timestamp into those, so equal audio would give unequal bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), rate, "PCM_24", format="WAV")
    return buf.getvalue()


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) or 1.0


def loudest_window(wave: np.ndarray, length: int, rate: int) -> slice:
    """The `length`-sample window of `wave` with the most energy, on a 10 ms grid."""
    if len(wave) <= length:
        return slice(0, len(wave))
    hop = max(1, rate // 100)
    energy = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    starts = np.arange(0, len(wave) - length + 1, hop)
    best = int(starts[np.argmax(energy[starts + length] - energy[starts])])
    return slice(best, best + length)


class EspeakDigits:
    """The English digit words "zero" .. "nine" spoken by every espeak-ng language voice.

    Label = digit; group = voice, so the test voices are unseen. Each language voice reads the
    English spelling by its own letter-to-sound rules (a German voice says "tsero"), with one
    voice variant (`+f3`, `+croak`, ...; cycled in list order, the first voice plain) and a speed
    and base pitch drawn from the voice's name: ~130 accented, differently pitched speakers.

    Shaping, measured with the default tiny encoder: English voices saying the digits were too
    easy (log-mel statistics 93 %, random-init encoder 99 %), every voice saying the digit in
    its own language too hard (26 % / 34 %, and a few voices have no number rules at all); the
    English words through foreign rules sit in between, and the varied speed and pitch take the
    random-init encoder from 85 % to 75 %.

    Each clip is one `espeak-ng --stdout` call (~10 ms) with an argument list, no shell.
    """

    name = "speech-digits"
    description = (
        "espeak-ng: English digit words read by every language voice (one variant each, "
        "varied speed and pitch); group = voice"
    )
    packages = ("espeak-ng", "espeak-ng-data")
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    speeds = (110, 260)  # words per minute, espeak-ng -s (default 175)
    pitches = (15, 85)  # base pitch, espeak-ng -p 0-99 (default 50)

    def voices(self) -> list[str]:
        """`language+variant` voice names, e.g. `gmw/de+f3`, in list order."""
        exe = self._exe()
        langs = _espeak_list(exe, "--voices")
        variants = [""] + sorted(
            {"+" + v.split("/", 1)[1] for v in _espeak_list(exe, "--voices=variant")}, key=str.lower
        )
        return [lang + variants[i % len(variants)] for i, lang in enumerate(langs)]

    def prosody(self, voice: str) -> tuple[int, int]:
        """(speed, pitch) of a voice, drawn from its name, so fixed across runs."""
        h = int(hashlib.sha1(voice.encode()).hexdigest(), 16)
        (lo, hi), (plo, phi) = self.speeds, self.pitches
        return lo + h % (hi - lo + 1), plo + (h >> 32) % (phi - plo + 1)

    def clips(self) -> list[RawClip]:
        exe = self._exe()
        out = []
        for voice in self.voices():
            speed, pitch = self.prosody(voice)
            for digit, word in enumerate(self.words):
                args = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
                out.append(
                    RawClip(
                        f"{voice.replace('+', '_')}-{digit}.wav",
                        str(digit),
                        voice,
                        functools.partial(_run_stdout, args),
                    )
                )
        return out

    @staticmethod
    def _exe() -> str:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise AblError("espeak-ng: not found on PATH; install the Debian package espeak-ng")
        return exe


def _espeak_list(exe: str, flag: str) -> list[str]:
    """The File column of `espeak-ng --voices` (or `--voices=variant`): `gmw/en-US`, `!v/f3`.

    Columns are padded but overflow when a name is long, and a file name may hold a space
    (`!v/Mr serious`): so the first four fields are split off on whitespace and the file runs
    to the next double space or the `(` of the other-languages column.
    """
    out = subprocess.run([exe, flag], capture_output=True, text=True, check=True, timeout=60)
    files = []
    for row in out.stdout.splitlines()[1:]:
        parts = row.split(None, 4)
        if len(parts) == 5:
            files.append(re.split(r"\s{2,}|\s+\(", parts[4].strip())[0])
    return files


def _run_stdout(args: list[str]) -> bytes:
    return subprocess.run(args, capture_output=True, check=True, timeout=60).stdout


from model.data.corpus import (  # noqa: E402  (corpus.py imports RawClip from here)
    AsteriskSpeech,
    GameEffects,
    GameSoundtracks,
    MegaGlestSounds,
    SpokenWords,
    WesnothMusic,
    ZeroADLongform,
)

TASKS: dict[str, TaskSource] = {
    "corpus-0ad": ZeroADLongform(),
    "corpus-wesnoth": WesnothMusic(),
    "corpus-speech": AsteriskSpeech(),
    "corpus-sfx": GameEffects(),
    "corpus-words": SpokenWords(),
    "corpus-soundtracks": GameSoundtracks(),
    "corpus-megaglest": MegaGlestSounds(),
    "env-sfx": ZeroADEffects(),
    "music-family": SoundFontNotes(),
    "speech-speaker": FilletsSpeakers(),
    "speech-digits": EspeakDigits(),
}
