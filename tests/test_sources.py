"""Task sources on the real Debian packages: listings, a few rendered clips, grouped splits."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from model.data import sources
from model.data.audio import is_silent, load_audio
from model.data.sources import (
    TASKS,
    EspeakDigits,
    FilletsSpeakers,
    GameSoundtracks,
    MegaGlestSounds,
    RawClip,
    SoundFontNotes,
    SpokenWords,
    loudest_window,
)
from model.data.splits import assign_splits
from model.errors import AblError

RATE = 16000
LABELLED = {k: v for k, v in TASKS.items() if not getattr(v, "unlabelled", False)}


@pytest.fixture(scope="module")
def listed() -> dict[str, list[RawClip]]:
    return {name: source.clips() for name, source in LABELLED.items()}


def test_the_four_default_tasks_are_registered() -> None:
    assert set(LABELLED) == {"env-sfx", "music-family", "speech-speaker", "speech-digits"}
    assert set(TASKS) - set(LABELLED) == {
        "corpus-0ad",
        "corpus-wesnoth",
        "corpus-speech",
        "corpus-sfx",
        "corpus-words",
        "corpus-soundtracks",
        "corpus-megaglest",
    }
    for name, source in TASKS.items():
        assert source.name == name
        assert source.description and source.packages


@pytest.mark.parametrize("task", sorted(LABELLED))
def test_every_class_lands_in_every_split_and_no_group_straddles(
    task: str, listed: dict[str, list[RawClip]]
) -> None:
    clips = listed[task]
    assert len({c.name for c in clips}) == len(clips)  # names are unique
    split_of = assign_splits((c.label, c.group) for c in clips)
    splits_of_label: dict[str, set[str]] = defaultdict(set)
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        splits_of_label[c.label].add(split_of[c.group])
        splits_of_group[c.group].add(split_of[c.group])
    groups_of_label: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        groups_of_label[c.label].add(c.group)
    # Preparation splits a class with fewer than three groups clip by clip (0 A.D. has two
    # such); the new tasks are built so that every class splits by group.
    few = {lab for lab, g in groups_of_label.items() if len(g) < 3}
    assert not few or task == "env-sfx"
    assert all(
        s == {"train", "val", "test"} for lab, s in splits_of_label.items() if lab not in few
    )
    assert all(len(s) == 1 for s in splits_of_group.values())
    # Roughly 70 / 10 / 20 of the clips.
    share = Counter(split_of[c.group] for c in clips)
    assert 0.1 < share["test"] / len(clips) < 0.35


def test_music_family_lists_every_program_with_its_family(
    listed: dict[str, list[RawClip]],
) -> None:
    clips = listed["music-family"]
    src = SoundFontNotes()
    per_note = len(src.pitches) * len(src.velocities)
    assert len(clips) == 128 * per_note
    assert Counter(c.label for c in clips) == {
        f"{f:02d}-{n}": 8 * per_note for f, n in enumerate(src.families)
    }
    for c in clips:  # group = program, label = its GM family
        program = int(c.group.removeprefix("program-"))
        assert c.label.startswith(f"{program // 8:02d}-")
    assert len({c.group for c in clips}) == 128


def test_music_notes_render_the_same_whatever_came_before() -> None:
    src = SoundFontNotes()
    by_name = {c.name: c for c in src.clips()}
    piano, flute = by_name["p000-k60-v112.wav"], by_name["p073-k67-v64.wav"]
    first = piano.read()
    flute_bytes = flute.read()
    assert piano.read() == first  # after another program, the same bytes
    for data in (first, flute_bytes):
        wave = load_audio(data, RATE)
        assert len(wave) == round((src.hold_seconds + src.release_seconds) * RATE)
        assert not is_silent(wave)
        assert np.abs(wave).max() < 1.0


def test_speech_speaker_keeps_the_four_fish_grouped_by_level(
    listed: dict[str, list[RawClip]],
) -> None:
    clips = listed["speech-speaker"]
    counts = Counter(c.label for c in clips)
    assert set(counts) == {"cs-m", "cs-v", "nl-m", "nl-v"}
    assert min(counts.values()) > 500
    levels = {c.group for c in clips}
    assert len(levels) > 60
    for c in clips:
        lang, level, file = c.name.split("/")
        assert c.group == level and c.label == f"{lang}-{file.split('-')[1]}"


def test_speech_speaker_clips_are_fixed_level_two_talker_crops(
    listed: dict[str, list[RawClip]],
) -> None:
    src = FilletsSpeakers()
    clips = listed["speech-speaker"]
    for c in (clips[0], clips[len(clips) // 2]):
        wave = load_audio(c.read(), RATE)
        assert len(wave) <= round(src.crop_seconds * RATE)
        assert np.sqrt(np.mean(wave**2)) == pytest.approx(src.level_rms, rel=0.05)
        assert c.read() == c.read()


def test_loudest_window_finds_the_burst() -> None:
    wave = np.zeros(RATE * 3, np.float32)
    wave[RATE + 800 : RATE + 4000] = 1.0
    window = loudest_window(wave, 4000, RATE)
    assert window.stop - window.start == 4000
    assert window.start <= RATE + 800 and window.stop >= RATE + 4000
    assert loudest_window(wave[:100], 4000, RATE) == slice(0, 100)


def test_speech_digits_lists_ten_words_per_voice(listed: dict[str, list[RawClip]]) -> None:
    clips = listed["speech-digits"]
    assert Counter(c.label for c in clips) == {str(d): len(clips) // 10 for d in range(10)}
    per_voice = Counter(c.group for c in clips)
    assert len(per_voice) >= 100 and set(per_voice.values()) == {10}
    assert len({v.split("+")[-1] for v in per_voice}) > 50  # many variants
    for clip in (clips[7], clips[len(clips) // 2 + 3]):
        wave = load_audio(clip.read(), RATE)
        assert 0.2 < len(wave) / RATE < 3.0
        assert not is_silent(wave)


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    notes = SoundFontNotes()
    notes.soundfont = tmp_path / "missing.sf2"
    with pytest.raises(AblError, match="fluid-soundfont-gm"):
        notes.clips()
    speakers = FilletsSpeakers()
    speakers.root = tmp_path
    with pytest.raises(AblError, match="fillets-ng-data-cs"):
        speakers.clips()
    monkeypatch.setattr(sources.shutil, "which", lambda _name: None)
    with pytest.raises(AblError, match="install the Debian package espeak-ng"):
        EspeakDigits().clips()
    words = SpokenWords()
    words.root = tmp_path
    with pytest.raises(AblError, match="install the Debian package ktuberling-data"):
        words.clips()
    tracks = GameSoundtracks()
    tracks.warzone = tmp_path
    with pytest.raises(AblError, match="install the Debian package warzone2100-music"):
        tracks.clips()
    glest = MegaGlestSounds()
    glest.root = tmp_path
    with pytest.raises(AblError, match="install the Debian package megaglest-data"):
        glest.clips()


def test_spoken_words_keep_each_recording_once_and_join_them_without_padding() -> None:
    import hashlib

    words = SpokenWords()
    streams = words.streams()
    digests = [hashlib.sha1(read()).digest() for parts in streams.values() for _, read in parts]
    assert len(digests) == len(set(digests)) > 1000  # the Serbian scripts' copies, once
    assert len(streams) >= 20  # one reader per language
    clip = words.clips()[0]
    wave = load_audio(clip.read(), words.sample_rate)
    seconds = wave.size / words.sample_rate
    assert words.seconds <= seconds < words.seconds + 10  # whole words up to about 30 s
    assert 0.45 < float(np.abs(wave).max()) <= 0.5  # brought to one peak


def test_megaglest_keeps_each_recording_once_and_joins_the_short_ones_per_faction() -> None:
    import hashlib

    glest = MegaGlestSounds()
    clips = glest.clips()
    long = [c for c in clips if c.label in ("ambience", "music")]
    # Every tileset ships its loops again: 55 files, 23 distinct ambiences.
    digests = [hashlib.sha1(c.read()).digest() for c in long]
    assert len(digests) == len(set(digests)) and {c.label for c in long} == {"ambience", "music"}
    streams = glest.streams()
    assert {"magic", "norsemen", "persian", "common"} <= set(streams)  # factions, shared
    short = [hashlib.sha1(read()).digest() for parts in streams.values() for _, read in parts]
    assert len(short) == len(set(short)) > 1000
    joined = next(c for c in clips if c.label == "magic")
    wave = load_audio(joined.read(), glest.sample_rate)
    assert glest.seconds <= wave.size / glest.sample_rate < glest.seconds + 15
    assert 0.45 < float(np.abs(wave).max()) <= 0.5  # brought to one peak


def test_soundtracks_list_both_games() -> None:
    clips = GameSoundtracks().clips()
    assert Counter(c.label for c in clips) == {"warzone2100": 30, "hedgewars": 26}
    assert len({c.name for c in clips}) == len(clips)
