"""The `corpus` bring-your-own format: a researcher's own unlabelled recordings (a folder, or a
list file) as pretraining audio, prepared like the other layouts and usable in `data.corpus`,
never in `probe.tasks`.

The recordings are real: Battle for Wesnoth's music (Debian package wesnoth-1.16-music, read
where it is installed; one track runs 44 s, longer than the 30 s the labelled tasks keep) and
0 A.D.'s effects as the env-sfx task prepares them.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from model.config import TaskDef
from model.data.byo import FORMATS, CorpusTask, byo_source
from model.data.corpus import WesnothMusic
from model.data.datasets import MAX_SECONDS, PreparedTask, load_task, prepare_task
from model.errors import AblError
from orchestrator.cli import app
from orchestrator.grid import expand
from orchestrator.prepare import check_data
from orchestrator.spec import load_spec
from orchestrator.study import check_no_leak

runner = CliRunner()
MUSIC = WesnothMusic.root
# (file, seconds): short cues and one track longer than the labelled tasks' 30 s cut.
TRACKS = {"victory.ogg": 5.5, "defeat.ogg": 8.5, "defeat2.ogg": 14.2, "sad.ogg": 44.4}


@pytest.fixture(scope="module")
def music() -> Path:
    if not all((MUSIC / f).is_file() for f in TRACKS):
        pytest.fail(f"{MUSIC}: Wesnoth music not found; install wesnoth-1.16-music (setup.sh)")
    return MUSIC


def recordings(folder: Path, music: Path) -> Path:
    """A user's folder of recordings: three tracks at the top, one in a sub-folder, and the
    things such folders also hold (notes, a macOS resource fork) that are not audio."""
    (folder / "session2").mkdir(parents=True)
    for f in ("victory.ogg", "defeat.ogg", "sad.ogg"):
        shutil.copy(music / f, folder / f)
    shutil.copy(music / "defeat2.ogg", folder / "session2" / "defeat2.ogg")
    (folder / "notes.txt").write_text("recorded in the garden\n")
    (folder / "._sad.ogg").write_bytes(b"\0\5\26\7")
    return folder


def prepared(name: str, root: Path, cache: Path, **options) -> PreparedTask:
    task = TaskDef(name, "corpus", str(root), json.dumps(options))
    return prepare_task(name, cache, log=lambda _m: None, custom=(task,))


def test_corpus_is_a_registered_format_of_unlabelled_audio(tmp_path: Path) -> None:
    assert FORMATS["corpus"] is CorpusTask
    src = byo_source("Corpus", "mine", tmp_path)
    assert isinstance(src, CorpusTask) and src.unlabelled and src.max_seconds == 600.0
    with pytest.raises(AblError, match=r"data\.tasks\.mine\.max_seconds = 0.0 must be positive"):
        byo_source("corpus", "mine", tmp_path, max_seconds=0.0)


def test_a_folder_corpus_prepares_every_recording_and_keeps_long_ones_whole(
    tmp_path: Path, music: Path
) -> None:
    root = recordings(tmp_path / "rec", music)
    task = prepared("mine", root, tmp_path / "cache")
    by_file = {c.file: c for c in task.clips}
    assert sorted(by_file) == [
        "audio/defeat.flac",
        "audio/sad.flac",
        "audio/session2_defeat2.flac",
        "audio/victory.flac",
    ]
    assert {(c.label, c.split) for c in task.clips} == {("unlabelled", "train")}
    assert by_file["audio/session2_defeat2.flac"].group == "session2/defeat2.ogg"
    assert len({c.group for c in task.clips}) == 4  # each recording its own group
    # The 44 s track is kept whole, as the built-in long corpora keep theirs (not cut at 30 s).
    assert by_file["audio/sad.flac"].duration == pytest.approx(TRACKS["sad.ogg"], abs=0.1)
    assert by_file["audio/sad.flac"].duration > MAX_SECONDS
    assert task.meta["skipped"] == {} and "pretraining only" in task.meta["description"]
    assert sum(c.duration for c in task.clips) == pytest.approx(sum(TRACKS.values()), abs=0.5)


def test_a_list_file_corpus_reads_the_paths_it_names(tmp_path: Path, music: Path) -> None:
    root = recordings(tmp_path / "rec", music)
    listing = tmp_path / "lists" / "pretrain.txt"
    listing.parent.mkdir()
    listing.write_text(
        "# my pretraining audio\n"
        "\n"
        "../rec/sad.ogg\n"  # relative to the list file's folder
        f"  {root / 'session2' / 'defeat2.ogg'}  \n"  # absolute, spaces around it
        "   # an indented comment\n"
        "../rec/victory.ogg\n"
    )
    task = prepared("listed", listing, tmp_path / "cache", max_seconds=30.0)
    assert len(task.clips) == 3 and {c.label for c in task.clips} == {"unlabelled"}
    # Named by where they are: no "..", so no prepared file is hidden or outside audio/.
    assert all(c.file.startswith("audio/") and ".." not in c.file for c in task.clips)
    durations = {c.file.rsplit("_", 1)[-1]: c.duration for c in task.clips}
    assert sorted(durations) == ["defeat2.flac", "sad.flac", "victory.flac"]
    # max_seconds is the option that sets how much of a recording is kept.
    assert durations["sad.flac"] == 30.0
    assert durations["victory.flac"] == pytest.approx(TRACKS["victory.ogg"], abs=0.1)


def test_a_list_line_naming_a_missing_file_is_one_line_naming_it(tmp_path: Path, music) -> None:
    root = recordings(tmp_path / "rec", music)
    listing = tmp_path / "list.txt"
    listing.write_text("rec/sad.ogg\n# comment\nrec/gone.ogg\n")
    with pytest.raises(AblError) as err:
        byo_source("corpus", "mine", listing).clips()
    msg = str(err.value)
    assert msg.startswith(f"{listing}:3: audio file {tmp_path / 'rec' / 'gone.ogg'} not found")
    assert "restore it or remove the entry" in msg and "\n" not in msg
    listing.write_text("rec/sad.ogg\nrec/sad.ogg\n")
    with pytest.raises(AblError, match=r"list\.txt:2: rec/sad\.ogg is already listed on line 1"):
        byo_source("corpus", "mine", listing).clips()
    with pytest.raises(AblError, match=r"sad\.ogg: data\.tasks\.mine\.root is one audio file"):
        byo_source("corpus", "mine", root / "sad.ogg").clips()


def experiments(tiny_experiments, tmp_path: Path, root: Path, env_sfx: PreparedTask) -> Path:
    """The tiny study pretraining on the user's corpus `mine` at `root` and probing env-sfx
    (cross-validated), one trial, with a data cache of its own (env-sfx linked into it)."""
    cache = tmp_path / "cache"
    (cache / "tasks").mkdir(parents=True, exist_ok=True)
    if not (cache / "tasks" / "env-sfx").exists():
        (cache / "tasks" / "env-sfx").symlink_to(env_sfx.root)
    path = tiny_experiments(axes={"masking": {"path": "mask.strategy", "values": ["unstructured"]}})
    spec = yaml.safe_load(path.read_text())
    data = spec["baseline"]["data"]
    data.update(cache=str(cache), corpus=["mine"])
    data["tasks"] = {"mine": {"format": "corpus", "root": str(root)}}
    spec["baseline"]["probe"].update(tasks=["env-sfx"], protocol="cv")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def one_line(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("abl: error:")
    for w in words:
        assert w in result.output, (w, result.output)


def test_probing_a_corpus_task_is_refused_when_the_file_is_loaded(
    tiny_experiments, tmp_path: Path, env_sfx: PreparedTask
) -> None:
    (tmp_path / "rec").mkdir()
    exp = experiments(tiny_experiments, tmp_path, tmp_path / "rec", env_sfx)
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["probe"]["tasks"] = ["env-sfx", "mine"]
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(AblError, match=re.escape(f"{exp}: baseline.probe.tasks lists 'mine'")):
        load_spec(exp)
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), "probe.tasks", "'mine'", "format corpus", "data.corpus")
    assert not (tmp_path / "out").exists()


def test_a_corpus_task_is_a_value_of_a_data_corpus_axis(
    tiny_experiments, tmp_path: Path, env_sfx: PreparedTask
) -> None:
    (tmp_path / "rec").mkdir()
    exp = experiments(tiny_experiments, tmp_path, tmp_path / "rec", env_sfx)
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["data"]["corpus"] = ["env-sfx"]
    spec["baseline"]["probe"]["protocol"] = "split"
    spec["axes"] = {"data.corpus": [["mine"], ["mine", "env-sfx"]]}
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    corpora = [t.recipe.data.corpus for t in expand(load_spec(exp))]
    assert corpora == [("env-sfx",), ("mine",), ("mine", "env-sfx")]


def test_an_empty_folder_or_list_is_one_line_before_anything_is_written(
    tiny_experiments, tmp_path: Path, env_sfx: PreparedTask
) -> None:
    empty = tmp_path / "rec"
    (empty / "sub").mkdir(parents=True)
    (empty / "README").write_text("audio goes here\n")
    exp = experiments(tiny_experiments, tmp_path, empty, env_sfx)
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), "task 'mine' is not prepared", f"{empty}: ", "no audio clips")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "tasks" / "mine").exists()

    listing = tmp_path / "list.txt"
    listing.write_text("# nothing yet\n\n")
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["data"]["tasks"]["mine"]["root"] = str(listing)
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(AblError, match=f"{re.escape(str(listing))}: lists no audio files"):
        check_data(load_spec(exp), tmp_path / "cache")
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), "task 'mine'", f"{listing}: lists no audio files")

    spec["baseline"]["data"]["tasks"]["mine"]["root"] = str(tmp_path / "nowhere")
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, "baseline.data.tasks.mine.root", "does not exist", "your recordings")
    assert not (tmp_path / "out").exists()


def test_a_corpus_holding_copies_of_probe_clips_is_caught_by_the_leak_check(
    tiny_experiments, tmp_path: Path, env_sfx: PreparedTask, music: Path
) -> None:
    root = recordings(tmp_path / "rec", music)
    for c in env_sfx.split("test")[:2]:
        shutil.copy(env_sfx.path(c), root / Path(c.file).name)
    spec = load_spec(experiments(tiny_experiments, tmp_path, root, env_sfx))
    prepare_task("mine", tmp_path / "cache", log=lambda _m: None, custom=spec.baseline.data.tasks)
    with pytest.raises(AblError, match="data.corpus entry 'mine' holds 2 clip"):
        check_no_leak(spec, expand(spec))


def test_a_study_pretrains_on_a_corpus_folder_end_to_end(
    tiny_experiments, tmp_path: Path, env_sfx: PreparedTask, music: Path
) -> None:
    root = recordings(tmp_path / "rec", music)
    exp = experiments(tiny_experiments, tmp_path, root, env_sfx)
    # Seconds, not minutes: the probes and the precision timing are not what is tested here.
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["probe"]["protocol"] = "split"
    spec["baseline"]["train"].update(precision="fp32", eval_every=0)
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "mine: preparing 0/4" in result.output and "mine: 4 clips ready" in result.output
    assert "pretraining corpus: 0.02 h from mine" in result.output
    assert "ran 1, failed 0" in result.output

    cache, out = tmp_path / "cache", tmp_path / "out"
    corpus = (cache / "corpus.csv").read_text().splitlines()
    assert len(corpus) == 5 and all(",mine," in line for line in corpus[1:])
    assert load_task("mine", cache, load_spec(exp).baseline.data.tasks).meta["clips"] == 4

    db = sqlite3.connect(out / "results.db")
    rows = db.execute("select axis, status from trials where axis != 'reference'").fetchall()
    assert rows == [("baseline", "done")]
    (acc,) = db.execute(
        "select m.value from metrics m join trials t on t.id = m.trial_id "
        "where t.axis = 'baseline' and m.task = 'env-sfx' and m.metric = 'accuracy'"
    ).fetchone()
    assert 0.0 <= acc <= 1.0

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`abl.role` = 'trial'")
    assert run.info.status == "FINISHED"
    assert "mine" in run.data.params["data.corpus"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
