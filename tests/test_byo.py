"""Bring-your-own loaders (model.data.byo) on tiny fixtures laid out exactly as the public data sets
unpack: same file names, metadata columns and list-file formats, with real (0.2 s sine) audio."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import model.data.datasets
import model.data.sources
from model.data.audio import load_audio
from model.data.byo import (
    FORMATS,
    CremaDTask,
    CsvTask,
    ESC50Task,
    FolderTask,
    GTZANTask,
    NSynthTask,
    SpeechCommandsTask,
    US8KTask,
    VoxCeleb1Task,
    byo_source,
    take_group,
)
from model.errors import AblError

FREQS = [220.0, 440.0, 880.0, 1320.0]


def tone(path: Path, freq: float = 440.0, rate: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.2 * rate)) / rate
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), rate, format=fmt)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def check_readable(clips) -> None:
    for c in clips[:3]:
        assert load_audio(c.read(), 16000, name=c.name).shape[0] > 0


def by_name(clips) -> dict:
    return {c.name: c for c in clips}


# -- fixtures laid out as the public data sets ------------------------------------------------

ESC_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
ESC_CLASSES = [(0, "dog", True), (1, "rooster", False), (10, "rain", True)]


def make_esc50(root: Path) -> Path:
    rows = []
    for fold in range(1, 6):
        for i, (target, category, esc10) in enumerate(ESC_CLASSES):
            src = str(100000 + 10 * target + fold)
            name = f"{fold}-{src}-A-{target}.wav"
            tone(root / "audio" / name, FREQS[i], rate=44100)
            rows.append([name, fold, target, category, esc10, src, "A"])
    write_csv(root / "meta" / "esc50.csv", ESC_COLUMNS, rows)
    return root


US8K_COLUMNS = [
    "slice_file_name",
    "fsID",
    "start",
    "end",
    "salience",
    "fold",
    "classID",
    "class",
]


def make_us8k(root: Path) -> Path:
    rows = []
    for fold in (1, 2, 9, 10):
        for i, (class_id, cls) in enumerate([(1, "car_horn"), (3, "dog_bark")]):
            fsid = 1000 * fold + class_id
            name = f"{fsid}-{class_id}-0-0.wav"
            tone(root / "audio" / f"fold{fold}" / name, FREQS[i], rate=22050)
            rows.append([name, fsid, 0.0, 0.2, 1, fold, class_id, cls])
    write_csv(root / "metadata" / "UrbanSound8K.csv", US8K_COLUMNS, rows)
    return root


SPEAKERS = ["0a7c2a8d", "1b4c9b89", "2aca1e72", "3bfd30e6"]


def make_spcv2(root: Path) -> Path:
    for i, word in enumerate(["yes", "no", "up"]):
        for spk in SPEAKERS:
            for n in (0, 1):
                tone(root / word / f"{spk}_nohash_{n}.wav", FREQS[i])
    tone(root / "_background_noise_" / "white_noise.wav", 3000.0)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    # Speaker 2 is validation, speaker 3 test (as the official lists split by speaker hash).
    val = [f"{w}/{SPEAKERS[2]}_nohash_{n}.wav" for w in ("yes", "no", "up") for n in (0, 1)]
    test = [f"{w}/{SPEAKERS[3]}_nohash_{n}.wav" for w in ("yes", "no", "up") for n in (0, 1)]
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def make_gtzan(root: Path, folder: str = "genres", ext: str = "au") -> Path:
    for i, genre in enumerate(["blues", "jazz", "rock"]):
        for n in range(4):
            fmt = "AU" if ext == "au" else None
            tone(root / folder / genre / f"{genre}.{n:05d}.{ext}", FREQS[i], 22050, fmt)
    return root


NSYNTH = {
    "nsynth-train": ["bass_synthetic_033", "guitar_acoustic_010"],
    "nsynth-valid": ["bass_electronic_018", "guitar_electronic_022"],
    "nsynth-test": ["bass_synthetic_068", "guitar_acoustic_030"],
}


def make_nsynth(root: Path) -> Path:
    families = {"bass": 0, "guitar": 3}
    sources = {"acoustic": 0, "electronic": 1, "synthetic": 2}
    for k, (folder, instruments) in enumerate(NSYNTH.items()):
        examples = {}
        for inst_i, inst in enumerate(instruments):
            family, source, _ = inst.split("_")
            for pitch in (60, 62):
                note = f"{inst}-{pitch:03d}-100"
                tone(root / folder / "audio" / f"{note}.wav", 110.0 * (1 + inst_i) + pitch)
                examples[note] = {
                    "note": 1000 * k + 10 * inst_i + pitch,
                    "note_str": note,
                    "instrument": 100 * k + inst_i,
                    "instrument_str": inst,
                    "pitch": pitch,
                    "velocity": 100,
                    "sample_rate": 16000,
                    "qualities": [0] * 10,
                    "qualities_str": [],
                    "instrument_family": families[family],
                    "instrument_family_str": family,
                    "instrument_source": sources[source],
                    "instrument_source_str": source,
                }
        (root / folder / "examples.json").write_text(json.dumps(examples))
    return root


def make_cremad(root: Path) -> Path:
    for actor in (1001, 1002, 1003, 1004):
        for i, emotion in enumerate(["ANG", "HAP", "NEU"]):
            for sentence, level in (("DFA", "XX"), ("IEO", "HI")):
                tone(root / "AudioWAV" / f"{actor}_{sentence}_{emotion}_{level}.wav", FREQS[i])
    return root


def make_voxceleb1(root: Path) -> Path:
    lines = []
    for i, spk in enumerate(["id10001", "id10002"]):
        for split, video in (("1", "1zcIwhmdeo4"), ("2", "7w0IBEWc9Qw"), ("3", "Y8hIVOBuels")):
            for n in (1, 2):
                rel = f"{spk}/{video}/{n:05d}.wav"
                tone(root / "wav" / rel, FREQS[i])
                lines.append(f"{split} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


# -- loaders ------------------------------------------------------------------------------------


def test_folder_task(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    tone(root / "dog" / "bark_01.wav", 220)
    tone(root / "dog" / "bark_02.flac", 220)
    tone(root / "dog" / "outdoor" / "growl-3.ogg", 220, fmt="OGG")
    tone(root / "cat" / "0001.WAV", 880)
    tone(root / "cat" / "0002.wav", 880)
    tone(root / "cat" / "._0003.wav", 880)  # macOS resource fork: not audio
    (root / "cat" / "notes.txt").write_text("not audio\n")
    tone(root / ".hidden" / "x.wav")
    tone(root / "loose.wav")  # not in a class folder
    (root / "dog" / "outdoor" / "back").symlink_to("..")  # a loop: each file is read once
    clips = by_name(FolderTask("mine", root).clips())
    assert sorted(clips) == [
        "cat/0001.WAV",
        "cat/0002.wav",
        "dog/bark_01.wav",
        "dog/bark_02.flac",
        "dog/outdoor/growl-3.ogg",
    ]
    assert clips["dog/bark_01.wav"].group == clips["dog/bark_02.flac"].group == "dog/bark"
    assert clips["dog/outdoor/growl-3.ogg"].group == "dog/outdoor/growl"
    assert clips["cat/0001.WAV"].group == "cat/0001"  # all-digit stems stay whole
    assert {c.label for c in clips.values()} == {"dog", "cat"}
    assert all(c.split is None for c in clips.values())
    check_readable(list(clips.values()))


def test_take_group() -> None:
    assert take_group("dog_bark_02") == "dog_bark"
    assert take_group("bark 3") == "bark"
    assert take_group("take_1_2") == "take"
    assert take_group("0042") == "0042"


def test_folder_single_class_is_refused(tmp_path: Path) -> None:
    tone(tmp_path / "data" / "mine" / "dog" / "a.wav")
    with pytest.raises(AblError, match="only one class folder"):
        FolderTask("t", tmp_path / "data").clips()


def test_csv_task(tmp_path: Path) -> None:
    root = tmp_path / "set"
    tone(root / "clips" / "a.wav", 220)
    tone(root / "clips" / "b.wav", 220)
    tone(root / "clips" / "c.wav", 880)
    outside = tone(tmp_path / "elsewhere" / "d.flac", 880)
    write_csv(
        root / "labels.csv",
        ["Path", "Label", "Split", "group", "extra"],
        [
            ["clips/a.wav", "low", "train", "spk1", "x"],
            ["clips/b.wav", "low", "Validation", "", ""],
            ["clips/c.wav", "high", "test", "spk2", ""],
            [str(outside), "high", "", "", ""],
        ],
    )
    clips = by_name(CsvTask("t", root / "labels.csv").clips())
    assert [(n, c.label, c.group, c.split) for n, c in sorted(clips.items())] == [
        ("clips/a.wav", "low", "spk1", "train"),
        ("clips/b.wav", "low", "clips/b.wav", "val"),
        ("clips/c.wav", "high", "spk2", "test"),
        (outside.as_posix().lstrip("/"), "high", outside.as_posix().lstrip("/"), None),
    ]
    check_readable(list(clips.values()))
    # A folder root reads its manifest.csv.
    (root / "labels.csv").rename(root / "manifest.csv")
    assert len(CsvTask("t", root).clips()) == 4


def test_esc50_task(tmp_path: Path) -> None:
    root = make_esc50(tmp_path / "ESC-50-master")
    clips = ESC50Task("esc", root).clips()
    assert len(clips) == 15
    assert Counter(c.label for c in clips) == {"dog": 5, "rooster": 5, "rain": 5}
    for c in clips:
        fold = int(c.name.split("/")[1].split("-")[0])
        assert c.split == {5: "test", 4: "val"}.get(fold, "train")
        assert c.group == c.name.split("-")[1]  # src_file
        assert c.name.startswith("audio/")
    check_readable(clips)
    other = ESC50Task("esc", root, test_fold=1).clips()
    assert {c.name.split("/")[1][0] for c in other if c.split == "test"} == {"1"}
    assert {c.name.split("/")[1][0] for c in other if c.split == "val"} == {"5"}
    esc10 = ESC50Task("esc", root, esc10=True).clips()
    assert {c.label for c in esc10} == {"dog", "rain"}


def test_us8k_task(tmp_path: Path) -> None:
    root = make_us8k(tmp_path / "UrbanSound8K")
    clips = US8KTask("u", root).clips()
    assert len(clips) == 8
    assert Counter(c.label for c in clips) == {"car_horn": 4, "dog_bark": 4}
    folds = {c.name: int(c.name.split("/")[1].removeprefix("fold")) for c in clips}
    for c in clips:
        assert c.split == {10: "test", 9: "val"}.get(folds[c.name], "train")
        assert c.group == c.name.rsplit("/", 1)[1].split("-")[0]  # fsID
    check_readable(clips)


def test_speech_commands_task(tmp_path: Path) -> None:
    root = make_spcv2(tmp_path / "speech_commands_v0.02")
    clips = SpeechCommandsTask("kws", root).clips()
    assert len(clips) == 24  # background noise is skipped
    assert Counter(c.label for c in clips) == {"yes": 8, "no": 8, "up": 8}
    for c in clips:
        assert c.group == c.name.split("/")[1].split("_nohash_")[0]
        expected = {SPEAKERS[2]: "val", SPEAKERS[3]: "test"}.get(c.group, "train")
        assert c.split == expected
    check_readable(clips)


@pytest.mark.parametrize(("folder", "ext"), [("genres", "au"), ("genres_original", "wav")])
def test_gtzan_task(tmp_path: Path, folder: str, ext: str) -> None:
    root = make_gtzan(tmp_path / "gtzan", folder, ext)
    clips = GTZANTask("g", root).clips()
    assert len(clips) == 12
    assert Counter(c.label for c in clips) == {"blues": 4, "jazz": 4, "rock": 4}
    assert all(c.split is None for c in clips)
    assert len({c.group for c in clips}) == 12
    assert by_name(clips)[f"{folder}/jazz/jazz.00002.{ext}"].group == "jazz.00002"
    check_readable(clips)


def test_nsynth_task(tmp_path: Path) -> None:
    root = make_nsynth(tmp_path / "nsynth")
    clips = NSynthTask("n", root).clips()
    assert len(clips) == 12
    assert Counter(c.split for c in clips) == {"train": 4, "val": 4, "test": 4}
    c = by_name(clips)["nsynth-valid/audio/guitar_electronic_022-062-100.wav"]
    assert (c.label, c.group, c.split) == ("guitar", "guitar_electronic_022", "val")
    assert {c.label for c in clips} == {"bass", "guitar"}
    check_readable(clips)


def test_metadata_rows_outside_the_layout_are_named(tmp_path: Path) -> None:
    # Folds past the data set's own, empty labels, and JSON values that are not names used to
    # pass (fold 7 read as train, a class named "") or crash (unhashable lists, deep nesting).
    esc = make_esc50(tmp_path / "esc")
    meta = esc / "meta" / "esc50.csv"
    text = meta.read_text()
    meta.write_text(text.replace("1-100001-A-0.wav,1,", "1-100001-A-0.wav,7,"))
    with pytest.raises(AblError, match=r"esc50.csv:2: fold = 7 is outside the esc50 folds 1..5"):
        ESC50Task("e", esc).clips()
    meta.write_text(text.replace(",dog,", ",,"))
    with pytest.raises(AblError, match="gives it the label '', not a name"):
        ESC50Task("e", esc).clips()
    meta.write_text(text + text.splitlines()[1] + "\n")
    with pytest.raises(AblError, match=r"audio/1-100001-A-0.wav is listed twice; list each"):
        ESC50Task("e", esc).clips()
    us = make_us8k(tmp_path / "us")
    meta = us / "metadata" / "UrbanSound8K.csv"
    meta.write_text(meta.read_text().replace("1001,0.0,0.2,1,1,", "1001,0.0,0.2,1,11,", 1))
    with pytest.raises(AblError, match="fold = 11 is outside the us8k folds 1..10"):
        US8KTask("u", us).clips()
    ns = make_nsynth(tmp_path / "ns")
    meta = ns / "nsynth-train" / "examples.json"
    examples = json.loads(meta.read_text())
    first = next(iter(examples))
    for field, value in (("instrument_family_str", ["bass"]), ("instrument_str", {"k": 1})):
        bad = {**examples, first: {**examples[first], field: value}}
        meta.write_text(json.dumps(bad))
        with pytest.raises(
            AblError, match=f"gives it the {'label' if 'family' in field else 'group'}"
        ):
            NSynthTask("n", ns).clips()
    meta.write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(AblError, match="examples.json: nested deeper than a JSON reader"):
        NSynthTask("n", ns).clips()


def test_cremad_task(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "CREMA-D")
    clips = CremaDTask("c", root).clips()
    assert len(clips) == 24
    c = by_name(clips)["AudioWAV/1002_IEO_HAP_HI.wav"]
    assert (c.label, c.group, c.split) == ("HAP", "1002", None)
    assert Counter(c.label for c in clips) == {"ANG": 8, "HAP": 8, "NEU": 8}
    check_readable(clips)


def test_voxceleb1_task(tmp_path: Path) -> None:
    root = make_voxceleb1(tmp_path / "VoxCeleb1")
    clips = VoxCeleb1Task("v", root).clips()
    assert len(clips) == 12
    c = by_name(clips)["wav/id10002/7w0IBEWc9Qw/00001.wav"]
    assert (c.label, c.group, c.split) == ("id10002", "id10002/7w0IBEWc9Qw", "val")
    assert Counter(c.split for c in clips) == {"train": 4, "val": 4, "test": 4}
    check_readable(clips)


def test_byo_source_registry(tmp_path: Path) -> None:
    assert set(FORMATS) == {
        "folder",
        "csv",
        "esc50",
        "us8k",
        "spcv2",
        "gtzan",
        "nsynth",
        "crema-d",
        "voxceleb1",
        "corpus",
    }
    src = byo_source("ESC50", "my-esc", str(tmp_path), test_fold=2)
    assert isinstance(src, ESC50Task)
    assert (src.name, src.root, src.test_fold, src.val_fold) == ("my-esc", tmp_path, 2, 1)
    assert src.packages == () and "ESC-50" in src.description


# -- errors -------------------------------------------------------------------------------------


def test_unknown_format_lists_known_ones() -> None:
    with pytest.raises(AblError, match=r"data\.tasks\.t\.format = 'wav2'.*esc50.*voxceleb1"):
        byo_source("wav2", "t", "/data")


def test_bad_options() -> None:
    with pytest.raises(AblError, match="unknown option.*fold.*test_fold"):
        byo_source("esc50", "t", "/data", fold=3)
    with pytest.raises(AblError, match="test_fold = 6"):
        byo_source("esc50", "t", "/data", test_fold=6)
    with pytest.raises(AblError, match="val_fold = 10"):
        byo_source("us8k", "t", "/data", val_fold=10, test_fold=10)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_missing_root(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(
        AblError, match=f"{re.escape(str(root))}: data root of task 't' does not exist"
    ) as e:
        byo_source(fmt, "t", root).clips()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("csv", "manifest.csv"),
        ("esc50", "meta/esc50.csv"),
        ("us8k", "metadata/UrbanSound8K.csv"),
        ("spcv2", "validation_list.txt"),
        ("gtzan", "genres"),
        ("nsynth", "nsynth-train/examples.json"),
        ("crema-d", "AudioWAV"),
        ("voxceleb1", "iden_split.txt"),
    ],
)
def test_missing_metadata(tmp_path: Path, fmt: str, expected: str) -> None:
    with pytest.raises(AblError, match=f"{re.escape(str(tmp_path / expected))}: .*not found") as e:
        byo_source(fmt, "t", tmp_path).clips()
    assert "\n" not in str(e.value)


def test_missing_metadata_spcv2_testing_list(tmp_path: Path) -> None:
    root = make_spcv2(tmp_path)
    (root / "testing_list.txt").unlink()
    with pytest.raises(AblError, match=f"{re.escape(str(root / 'testing_list.txt'))}: not found"):
        SpeechCommandsTask("t", root).clips()


def test_a_column_twice_and_an_open_quote_are_named(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "PATH"], [["a.wav", "x", "b"]])
    with pytest.raises(AblError, match="m.csv: column 'path' appears twice.*case-blind"):
        CsvTask("t", manifest).clips()
    # An open quote used to swallow the rest of the file into one row ("empty path or label").
    manifest.write_text('path,label\n"a.wav,x\nb.wav,y\n')
    with pytest.raises(AblError, match="m.csv:2: not valid CSV from this line on.*close its quote"):
        CsvTask("t", manifest).clips()


def test_missing_columns(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", ["file", "label"], [["a.wav", "x"]])
    with pytest.raises(AblError, match=f"{re.escape(str(manifest))}: missing column.*path"):
        CsvTask("t", manifest).clips()
    write_csv(tmp_path / "meta" / "esc50.csv", ESC_COLUMNS[:3], [])
    with pytest.raises(AblError, match=r"esc50\.csv: missing column.*category.*src_file"):
        ESC50Task("t", tmp_path).clips()


def test_missing_audio_in_manifests(tmp_path: Path) -> None:
    root = make_esc50(tmp_path / "esc")
    gone = root / "audio" / "3-100013-A-1.wav"
    gone.unlink()
    with pytest.raises(
        AblError, match=f"esc50.csv:\\d+: audio file {re.escape(str(gone))} not found"
    ):
        ESC50Task("t", root).clips()

    root = make_us8k(tmp_path / "us8k")
    gone = root / "audio" / "fold9" / "9003-3-0-0.wav"
    gone.unlink()
    with pytest.raises(AblError, match=f"audio file {re.escape(str(gone))} not found"):
        US8KTask("t", root).clips()

    manifest = write_csv(tmp_path / "m.csv", ["path", "label"], [["nope.wav", "x"]])
    with pytest.raises(
        AblError,
        match=f"{re.escape(str(manifest))}:2: audio file {re.escape(str(tmp_path / 'nope.wav'))}",
    ):
        CsvTask("t", manifest).clips()

    root = make_spcv2(tmp_path / "spc")
    gone = root / "no" / f"{SPEAKERS[3]}_nohash_1.wav"
    gone.unlink()
    with pytest.raises(AblError, match=f"testing_list.txt:4: audio file {re.escape(str(gone))}"):
        SpeechCommandsTask("t", root).clips()

    root = make_nsynth(tmp_path / "ns")
    gone = root / "nsynth-test" / "audio" / "bass_synthetic_068-060-100.wav"
    gone.unlink()
    with pytest.raises(AblError, match=f"audio file {re.escape(str(gone))} not found"):
        NSynthTask("t", root).clips()

    root = make_voxceleb1(tmp_path / "vox")
    gone = root / "wav" / "id10001" / "Y8hIVOBuels" / "00002.wav"
    gone.unlink()
    with pytest.raises(AblError, match=f"iden_split.txt:6: audio file {re.escape(str(gone))}"):
        VoxCeleb1Task("t", root).clips()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_zero_clips(tmp_path: Path, fmt: str) -> None:
    # Every layout's metadata is present but lists nothing (and the folders hold no audio).
    (tmp_path / "dog").mkdir()
    (tmp_path / "genres" / "jazz").mkdir(parents=True)
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "wav").mkdir()
    (tmp_path / "iden_split.txt").write_text("\n")
    write_csv(tmp_path / "manifest.csv", ["path", "label"], [])
    write_csv(tmp_path / "meta" / "esc50.csv", ESC_COLUMNS, [])
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", US8K_COLUMNS, [])
    (tmp_path / "validation_list.txt").write_text("")
    (tmp_path / "testing_list.txt").write_text("")
    for folder in NSYNTH:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "examples.json").write_text("{}")
    with pytest.raises(
        AblError, match=f"{re.escape(str(tmp_path))}: task 't' found no audio clips"
    ):
        byo_source(fmt, "t", tmp_path).clips()


def test_colliding_names_are_refused(tmp_path: Path) -> None:
    tone(tmp_path / "dog" / "a.wav")
    tone(tmp_path / "dog" / "a.flac")
    tone(tmp_path / "cat" / "b.wav")
    with pytest.raises(AblError, match=r"dog/a\.flac and dog/a\.wav would both be prepared"):
        FolderTask("t", tmp_path).clips()


def test_bad_rows(tmp_path: Path) -> None:
    tone(tmp_path / "a.wav")
    manifest = write_csv(tmp_path / "m.csv", ["path", "label", "split"], [["a.wav", "x", "eval"]])
    with pytest.raises(AblError, match=f"{re.escape(str(manifest))}:2: split = 'eval'"):
        CsvTask("t", manifest).clips()
    (tmp_path / "iden_split.txt").write_text("4 id1/v/1.wav\n")
    (tmp_path / "wav").mkdir()
    with pytest.raises(AblError, match="iden_split.txt:1: expected"):
        VoxCeleb1Task("t", tmp_path).clips()
    tone(tmp_path / "AudioWAV" / "angry_actor.wav")
    with pytest.raises(AblError, match="angry_actor.wav: name is not"):
        CremaDTask("t", tmp_path).clips()


# -- end to end ---------------------------------------------------------------------------------


def test_prepare_task_esc50_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_esc50(tmp_path / "ESC-50-master")
    source = ESC50Task("my-esc", root)
    monkeypatch.setitem(model.data.sources.TASKS, "my-esc", source)
    if model.data.datasets.TASKS is not model.data.sources.TASKS:
        monkeypatch.setitem(model.data.datasets.TASKS, "my-esc", source)
    task = model.data.datasets.prepare_task("my-esc", tmp_path / "cache", log=lambda _m: None)
    assert len(task.clips) == 15
    assert task.meta["skipped"] == {}
    for clip in task.clips:
        fold = int(Path(clip.file).name.split("_")[1].split("-")[0])
        assert clip.split == {5: "test", 4: "val"}.get(fold, "train"), clip.file
        assert clip.file.endswith(".flac") and task.path(clip).is_file()
    assert Counter(c.split for c in task.clips) == {"train": 9, "val": 3, "test": 3}
    assert task.classes == ["dog", "rain", "rooster"]


def test_experiments_file_declares_own_task_and_cli_prepares_it(tmp_path: Path) -> None:
    """`data.tasks` in the experiments file -> `abl data prepare --task` -> a usable task."""
    import yaml
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.spec import load_spec

    root = make_esc50(tmp_path / "ESC-50-master")
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments.yaml").read_text())
    spec["baseline"]["data"]["tasks"] = {"my-esc": {"format": "esc50", "root": "ESC-50-master"}}
    spec["baseline"]["probe"]["tasks"] = ["my-esc"]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(spec))
    loaded = load_spec(exp)
    (task_def,) = loaded.baseline.data.tasks
    assert task_def.format == "esc50" and Path(task_def.root) == root  # relative to the file

    data = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["data", "prepare", "--task", "my-esc", "-e", str(exp), "--data", str(data)]
    )
    assert result.exit_code == 0, result.output
    listed = CliRunner().invoke(app, ["data", "list", "-e", str(exp), "--data", str(data)])
    assert "my-esc:" in listed.output and "not prepared" not in listed.output.split("my-esc:")[1]

    spec["baseline"]["data"]["tasks"]["my-esc"]["format"] = "esc-fifty"
    exp.write_text(yaml.safe_dump(spec))
    with pytest.raises(AblError, match=r"exp.yaml: data.tasks.my-esc.format"):
        load_spec(exp)


def test_copies_of_one_recording_share_a_group_and_so_a_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data set that ships one recording under two names (games reuse sounds: 0 A.D.'s
    gravel steps are its rock steps) must not test one copy on a model fitted to the other."""
    root = tmp_path / "mine"
    freqs = {"dog": [220, 230, 240, 250], "cat": [880, 890, 900, 910]}
    for label, fs in freqs.items():
        for i, f in enumerate(fs):
            tone(root / label / f"{label}-{'abcd'[i]}.wav", f)
    tone(root / "dog" / "howl.wav", 220)  # dog-a's samples under another stem
    tone(root / "cat" / "mew.wav", 910)  # cat-d's
    source = FolderTask("mine", root)
    assert len({c.group for c in source.clips()}) == 10  # by stem: ten groups
    monkeypatch.setitem(model.data.sources.TASKS, "mine", source)
    if model.data.datasets.TASKS is not model.data.sources.TASKS:
        monkeypatch.setitem(model.data.datasets.TASKS, "mine", source)
    task = model.data.datasets.prepare_task("mine", tmp_path / "cache", log=lambda _m: None)
    group = {Path(c.file).stem: c.group for c in task.clips}
    split = {Path(c.file).stem: c.split for c in task.clips}
    assert group["dog_howl"] == group["dog_dog-a"] and group["cat_mew"] == group["cat_cat-d"]
    assert split["dog_howl"] == split["dog_dog-a"] and split["cat_mew"] == split["cat_cat-d"]
    assert len(set(group.values())) == 8
    assert task.meta["copies_joined"] == 2


def test_data_prepare_runs_tasks_side_by_side_and_names_the_one_that_fails(tmp_path: Path):
    """`abl data prepare -j 2`: tasks prepared in worker processes, each one whole; a task that
    cannot be prepared is one line naming it, and leaves nothing half-written."""
    import yaml
    from typer.testing import CliRunner

    from orchestrator.cli import app

    make_esc50(tmp_path / "one")
    make_esc50(tmp_path / "two")
    bad = make_esc50(tmp_path / "bad")
    (bad / "meta" / "esc50.csv").write_text("filename,fold\n")  # a header and no clips
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments.yaml").read_text())
    spec["baseline"]["data"]["tasks"] = {
        n: {"format": "esc50", "root": n} for n in ("one", "two", "bad")
    }
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(spec))
    data = tmp_path / "data"
    args = ["data", "prepare", "-e", str(exp), "--data", str(data), "-j", "2"]
    ok = CliRunner().invoke(app, [*args, "--task", "one", "--task", "two"])
    assert ok.exit_code == 0, ok.output
    for n in ("one", "two"):
        assert f"{n}: 15 clips ready" in ok.output
        assert (data / "tasks" / n / "task.json").is_file()
    res = CliRunner().invoke(app, [*args, "--task", "bad", "--task", "one"])
    assert res.exit_code == 2, res.output
    (line,) = [x for x in res.output.splitlines() if x.startswith("abl: error")]
    assert "bad" in line
    assert not (data / "tasks" / "bad").exists()
    assert (data / "tasks" / "one" / "task.json").is_file()  # prepared before: untouched
