"""Bad data sets of the user's own, on real audio files and the real CLI: a data set none of
whose files decode, one left with a single class, a manifest that is not UTF-8, probe folds
the tasks cannot fill, and a data cache that is not a folder. Each is one line naming the file
(or the task and its folder) and the fix, exit code 2, and nothing half-written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from model.data.byo import CsvTask
from model.errors import AblError
from orchestrator.cli import app
from orchestrator.prepare import check_probes
from orchestrator.spec import load_spec, with_value
from tests.conftest import _tiny_experiments

runner = CliRunner()


def tone(path: Path, freq: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 16000
    sf.write(path, 0.4 * np.sin(2 * np.pi * freq * t), 16000)
    return path


def bad(path: Path, kind: str) -> Path:
    """A file named like audio that is not: empty, or text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"" if kind == "empty" else b"these are my notes, not audio\n")
    return path


def experiments(tmp_path: Path, tasks: dict, probe: list[str], corpus: list[str], **probe_keys):
    path = _tiny_experiments(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["baseline"]["data"].update(
        cache=str(tmp_path / "cache"), corpus=corpus, max_clips_per_class=None, tasks=tasks
    )
    spec["baseline"]["probe"].update(tasks=probe, **probe_keys)
    spec["axes"] = {"mask.ratio": [0.5]}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def refused(result, *words: str) -> str:
    """Exit code 2, the error one line (after any progress lines), naming `words`."""
    assert result.exit_code == 2, result.output
    last = result.output.rstrip("\n").splitlines()[-1]
    assert last.startswith("abl: error:") and "Traceback" not in result.output, result.output
    for w in words:
        assert w in last, (w, last)
    return last


def prepare(exp: Path):
    return runner.invoke(app, ["data", "prepare", "-e", str(exp), "--task", "mine"])


def no_trace_of(cache: Path) -> None:
    tasks = cache / "tasks"
    assert not (tasks / "mine" / "task.json").exists()
    assert not list(tasks.glob(".mine.partial-*")) if tasks.is_dir() else True


# -- 1. nothing decodes, or one class is left ---------------------------------------------------


def _all_bad(tmp_path: Path, fmt: str) -> dict:
    root = tmp_path / "mine"
    for label in ("a", "b"):
        bad(root / label / "empty.wav", "empty")
        bad(root / label / "notes.wav", "text")
    if fmt == "csv":
        rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}\n" for p in _wavs(root)]
        (root / "labels.csv").write_text("path,label\n" + "".join(rows))
        return {"format": "csv", "root": str(root / "labels.csv")}
    return {"format": fmt, "root": str(root)}


def _wavs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.wav"))


def _good(root: Path, stems: str = "xyz") -> dict:
    """A labelled task of real tones: 2 classes, a group per stem in each."""
    for label, freq in (("a", 330.0), ("b", 990.0)):
        for i, stem in enumerate(stems):
            tone(root / label / f"{stem}.wav", freq * (1 + 0.05 * i))
    return {"format": "folder", "root": str(root)}


@pytest.mark.parametrize("fmt", ["folder", "csv", "corpus"])
def test_a_data_set_none_of_whose_files_decode_is_refused(tmp_path, fmt):
    tasks = {"mine": _all_bad(tmp_path, fmt)}
    if fmt == "corpus":  # pretraining audio: probe a good task of the user's
        tasks["good"] = _good(tmp_path / "good")
        exp = experiments(tmp_path, tasks, ["good"], ["mine"])
    else:
        exp = experiments(tmp_path, tasks, ["mine"], ["mine"])
    last = refused(prepare(exp), "task 'mine'", "none of its 4 files could be decoded")
    assert "4 unreadable: a/empty.wav, a/notes.wav, b/empty.wav, ..." in last
    assert last.endswith("fix or remove the audio")
    no_trace_of(tmp_path / "cache")
    # `abl run` prepares it before the study: the same line, naming the experiments file.
    last = refused(runner.invoke(app, ["run", "-j", "1", str(exp)]), str(exp), "none of its 4")
    no_trace_of(tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_a_failed_preparation_keeps_the_earlier_good_one(tmp_path):
    root = tmp_path / "mine"
    for label, freq in (("a", 330.0), ("b", 990.0)):
        tone(root / label / "one.wav", freq)
        tone(root / label / "two.wav", freq * 1.1)
    exp = experiments(
        tmp_path, {"mine": {"format": "folder", "root": str(root)}}, ["mine"], ["mine"]
    )
    assert prepare(exp).exit_code == 0
    meta = tmp_path / "cache" / "tasks" / "mine" / "task.json"
    before = meta.read_text()
    for wav in _wavs(root):  # the files go bad: prepared again, and refused
        bad(wav, "empty")
    refused(prepare(exp), "none of its 4 files could be decoded", "4 unreadable")
    assert meta.read_text() == before and json.loads(before)["clips"] == 4
    assert not list((tmp_path / "cache" / "tasks").glob(".mine.partial-*"))
    listed = runner.invoke(app, ["data", "list", "-e", str(exp), "--data", str(tmp_path / "cache")])
    assert "mine: 2 classes, train" in listed.output, listed.output


def test_a_task_left_with_one_class_is_refused_at_preparation(tmp_path):
    root = tmp_path / "mine"
    for i in range(3):
        tone(root / "a" / f"s{i}.wav", 300.0 + 50 * i)
    bad(root / "b" / "empty.wav", "empty")
    bad(root / "b" / "notes.wav", "text")
    exp = experiments(
        tmp_path, {"mine": {"format": "folder", "root": str(root)}}, ["mine"], ["mine"]
    )
    last = refused(prepare(exp), f"task 'mine' ({root})", "only class 'a' is left")
    assert "(2 unreadable: b/empty.wav, b/notes.wav)" in last and "two classes" in last
    no_trace_of(tmp_path / "cache")


def test_a_manifest_of_one_label_is_refused_before_decoding(tmp_path):
    tone(tmp_path / "x.wav", 440.0)
    tone(tmp_path / "y.wav", 880.0)
    (tmp_path / "m.csv").write_text("path,label\nx.wav,dog\ny.wav,dog\n")
    with pytest.raises(AblError, match=r"m\.csv: every clip of task 't' is of class 'dog'"):
        CsvTask("t", tmp_path / "m.csv").clips()


# -- 2. a manifest that is not UTF-8 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("path,label\nclips/a.wav,caf\xe9\n".encode("latin-1"), "byte 26, 0xe9, on line 2"),
        (b"\xef\xbb\xbfpath,label\n\x83\x00\xff", "byte 14, 0x83, on line 2"),
    ],
)
def test_a_manifest_that_is_not_utf8_is_one_line(tmp_path, text, where):
    tone(tmp_path / "clips" / "a.wav", 440.0)
    (tmp_path / "labels.csv").write_bytes(text)
    exp = experiments(
        tmp_path,
        {"mine": {"format": "csv", "root": str(tmp_path / "labels.csv")}},
        ["mine"],
        ["mine"],
    )
    message = f"{tmp_path / 'labels.csv'}: not UTF-8 ({where}); save it as UTF-8"
    refused(prepare(exp), message)
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    refused(result, str(exp), "task 'mine'", message)
    assert result.output.count("\n") == 1
    no_trace_of(tmp_path / "cache")


# -- 3. probe folds (or splits) the tasks cannot fill: refused before any trial pretrains -------


def _small_study(tmp_path: Path, stems: str, **probe_keys) -> Path:
    """Probe task `mine`: 2 classes, a group per stem in each; pretraining audio `field`."""
    for i in range(3):
        tone(tmp_path / "field" / f"rec{i}.wav", 150.0 + 20 * i)
    tasks = {
        "mine": _good(tmp_path / "mine", stems),
        "field": {"format": "corpus", "root": str(tmp_path / "field")},
    }
    return experiments(tmp_path, tasks, ["mine"], ["field"], **probe_keys)


@pytest.mark.parametrize(
    ("stems", "folds", "limit", "fits", "words"),
    [
        ("abcdef", 13, None, 6, ["task 'mine' has 12 groups of clips, too few to fill 13"]),
        ("abcdef", 1000000, None, 6, ["has 12 groups", "lower probe.folds to 6"]),
        ("abc", 5, None, 3, ["task 'mine' has at most 3 clips in a class, too few to fill 5"]),
        ("abcdef", 7, 1, 3, ["groups of clips under data.max_clips_per_class = 1", "raise data"]),
    ],
)
def test_probe_folds_the_tasks_cannot_fill_stop_before_pretraining(
    tmp_path, stems, folds, limit, fits, words
):
    exp = _small_study(tmp_path, stems, protocol="cv", folds=folds)
    if limit:
        spec = yaml.safe_load(exp.read_text())
        spec["baseline"]["data"]["max_clips_per_class"] = limit
        exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    refused(result, str(exp), f"probe.folds = {folds}", *words, "probe.protocol: split")
    assert "study tiny:" not in result.output and not (tmp_path / "out").exists()
    # The data was prepared; the folds the fix names pass the check.
    assert (tmp_path / "cache" / "tasks" / "mine" / "task.json").is_file()
    spec = load_spec(exp)
    fixed = with_value(spec.baseline, "probe.folds", fits)
    check_probes(dataclasses.replace(spec, baseline=fixed), tmp_path / "cache")


def test_a_split_the_probe_needs_but_the_task_lacks_stops_before_pretraining(tmp_path):
    root = tmp_path / "mine"
    tone(root / "a" / "x.wav", 330.0)
    tone(root / "b" / "y.wav", 990.0)
    exp = experiments(
        tmp_path, {"mine": {"format": "folder", "root": str(root)}}, ["mine"], ["mine"]
    )
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    refused(result, str(exp), "task 'mine' has train 2 / val 0 / test 0", "probe.protocol: cv")
    assert "study tiny:" not in result.output and not (tmp_path / "out").exists()


# -- 4. abl data list --data that is not a folder -------------------------------------------------


def test_data_list_refuses_a_data_folder_that_is_not_one(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, why in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "file", "a file")):
        result = runner.invoke(app, ["data", "list", "--data", str(path)])
        refused(result, f"--data {path}: ", why)
        assert result.output.count("\n") == 1
    result = runner.invoke(app, ["data", "list", "--data", str(tmp_path)])
    assert result.exit_code == 0 and "env-sfx: not prepared" in result.output
    # `abl data prepare` makes a missing folder, and refuses a file before writing anything.
    result = runner.invoke(
        app, ["data", "prepare", "--task", "env-sfx", "--data", str(tmp_path / "file")]
    )
    refused(result, f"--data {tmp_path / 'file'}: ", "a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
