"""`abl run` prepares the tasks its recipe names, and checks storage, output and each declared
data set before it writes anything (orchestrator/prepare.py)."""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from model.config import TaskDef
from model.data import datasets
from model.data.byo import FORMATS
from model.data.datasets import prepare_task, task_source
from model.errors import AblError
from model.filelock import exclusive
from orchestrator.cli import app
from orchestrator.prepare import check_data, prepare_study
from orchestrator.spec import load_spec
from tests.conftest import _tiny_experiments

runner = CliRunner()
CLASSES = {"low": 330.0, "mid": 660.0, "high": 1320.0}


def make_folder_task(root: Path) -> Path:
    """Three classes of six 2.2 s tones (distinct stems: six groups per class)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(2.2 * 16000)) / 16000
    for label, freq in CLASSES.items():
        for i, stem in enumerate("abcdef"):
            wave = 0.4 * np.sin(2 * np.pi * freq * (1 + 0.01 * i) * t)
            wave += 0.01 * rng.standard_normal(len(t))
            (root / label).mkdir(parents=True, exist_ok=True)
            sf.write(root / label / f"take-{stem}.wav", wave, 16000)
    return root


def experiments(tmp_path: Path, root: str | None = "mine", **data) -> Path:
    """The tiny study, probing and pretraining on the user's task `mine` at `root`, with a
    data cache of its own under tmp_path."""
    path = _tiny_experiments(tmp_path)
    spec = yaml.safe_load(path.read_text())
    d = spec["baseline"]["data"]
    d.update(cache=str(tmp_path / "cache"), corpus=["mine"], max_clips_per_class=None)
    if root is not None:
        d["tasks"] = {"mine": {"format": "folder", "root": root}}
    d.update(data)
    # Pretrained and probed on one task: only the fixed split keeps test clips out of
    # pretraining.
    spec["baseline"]["probe"].update(tasks=["mine"], protocol="split")
    spec["seeds"] = [0]
    spec["axes"] = {"mask.ratio": [0.5]}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache").exists()


def one_line(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("abl: error:")
    for w in words:
        assert w in result.output, (w, result.output)


def test_run_prepares_an_unprepared_task_then_runs(tmp_path):
    make_folder_task(tmp_path / "mine")
    exp = experiments(tmp_path)
    result = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Progress as `abl data prepare` prints it, before the study starts.
    first = lines.index("mine: preparing 0/18")
    ready = next(i for i, line in enumerate(lines) if line.startswith("mine: 18 clips ready"))
    started = next(i for i, line in enumerate(lines) if line.startswith("study tiny:"))
    assert first < ready < started
    assert "ran 2, failed 0" in result.output
    assert (tmp_path / "cache" / "tasks" / "mine" / "task.json").is_file()
    assert (tmp_path / "cache" / "corpus.csv").is_file()
    db = sqlite3.connect(tmp_path / "out" / "results.db")
    rows = db.execute("select status from trials where axis != 'reference'").fetchall()
    assert rows == [("done",), ("done",)]
    # Prepared once: the next run goes straight to the study.
    again = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert again.exit_code == 0 and "preparing" not in again.output, again.output


def test_a_missing_root_is_one_line_before_anything_is_written(tmp_path):
    exp = experiments(tmp_path, root="nowhere")
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), "baseline.data.tasks.mine.root", "does not exist", "sub-folder")
    nothing_written(tmp_path)


def test_every_declared_root_is_checked_even_one_no_trial_reads(tmp_path):
    make_folder_task(tmp_path / "mine")
    exp = experiments(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["data"]["tasks"]["spare"] = {"format": "esc50", "root": "gone"}
    exp.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), "baseline.data.tasks.spare.root", "meta/esc50.csv")
    nothing_written(tmp_path)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_root_without_its_formats_layout_is_refused_before_writing(tmp_path, fmt):
    (tmp_path / "empty").mkdir()
    exp = experiments(tmp_path, root="empty")
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["data"]["tasks"]["mine"]["format"] = fmt
    if getattr(FORMATS[fmt], "unlabelled", False):  # pretraining audio only: probe another
        spec["baseline"]["probe"]["tasks"] = ["env-sfx"]
    exp.write_text(yaml.safe_dump(spec))
    with pytest.raises(AblError) as err:
        check_data(load_spec(exp), tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{exp}: task 'mine' is not prepared, and cannot be:") and "\n" not in msg
    assert str(tmp_path / "empty") in msg
    nothing_written(tmp_path)


def test_a_manifest_naming_a_missing_file_is_refused_before_writing(tmp_path):
    make_folder_task(tmp_path / "mine")
    (tmp_path / "labels.csv").write_text(
        "path,label\nmine/low/take-a.wav,low\nmine/low/gone.wav,low\nmine/high/take-a.wav,high\n"
    )
    exp = experiments(tmp_path, root=None, tasks={"mine": {"format": "csv", "root": "labels.csv"}})
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), "task 'mine'", "labels.csv:3", "gone.wav not found")
    nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("storage", "words"),
    [
        ({"optuna": "postgresql://abl@127.0.0.1:1/abl"}, ["storage.optuna", "127.0.0.1"]),
        ({"results": "postgresql://abl:secret@127.0.0.1:1/abl"}, ["storage.results", "***"]),
        (  # libpq also takes the password as a query parameter
            {"results": "postgresql://abl@127.0.0.1:1/abl?password=secret"},
            ["storage.results", "abl?password=***", "cannot be reached"],
        ),
        ({"mlflow": "http://127.0.0.1:1"}, ["storage.mlflow", "cannot be reached"]),
        ({"optuna": "sqlite:////nonexistent-abl/optuna.db"}, ["storage.optuna", "does not exist"]),
        ({"mlflow": "sqlite:////nonexistent-abl/m.db"}, ["storage.mlflow", "does not exist"]),
        # A journal folder that cannot be made (mkdir fails under /proc, even for root).
        (
            {"optuna": "journal:///proc/abl-none/x.log"},
            ["storage.optuna = journal:///proc/abl-none/x.log", "cannot be written"],
        ),
    ],
)
def test_storage_errors_name_the_experiments_file(tmp_path, storage, words):
    make_folder_task(tmp_path / "mine")
    exp = experiments(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    spec["storage"] = storage
    exp.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["run", "-j", "1", str(exp)])
    one_line(result, str(exp), *words)
    assert "secret" not in result.output
    nothing_written(tmp_path)
    # `abl worker` checks the same, --storage included.
    worker = runner.invoke(
        app, ["worker", str(exp), "--storage", "postgresql://abl@127.0.0.1:1/abl"]
    )
    one_line(worker, str(exp), "storage.optuna")
    nothing_written(tmp_path)


def test_a_journal_the_ledger_cannot_open_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a relative journal path would go
    make_folder_task(tmp_path / "mine")
    exp = experiments(tmp_path)
    (tmp_path / "taken").write_text("a file")
    for url, words in [
        (f"journal://{tmp_path}/taken/x.log", ["is a file, not a folder"]),
        (f"journal://{tmp_path}", ["is a folder; name a file in it"]),
    ]:
        spec = yaml.safe_load(exp.read_text())
        spec["storage"] = {"optuna": url}
        exp.write_text(yaml.safe_dump(spec))
        one_line(runner.invoke(app, ["run", "-j", "1", str(exp)]), str(exp), url, *words)
        nothing_written(tmp_path)
    # `abl worker --storage` is not checked when the file loads: the pre-flight check says it.
    del spec["storage"]
    exp.write_text(yaml.safe_dump(spec))
    worker = runner.invoke(app, ["worker", str(exp), "--storage", "journal://rel.log"])
    one_line(worker, str(exp), "storage.optuna = journal://rel.log", "absolute path")
    nothing_written(tmp_path)
    assert not (tmp_path / "rel.log").exists()


@pytest.mark.parametrize("key", ["optuna", "results", "mlflow"])
def test_dry_run_names_a_missing_database_driver(tmp_path, key):
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here")
    exp = experiments(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    spec["storage"] = {key: "mysql://abl:secret@localhost/abl"}
    exp.write_text(yaml.safe_dump(spec))
    for args in (["--dry-run"], ["-j", "1"]):  # the dry run says what the run would
        result = runner.invoke(app, ["run", str(exp), *args])
        one_line(result, str(exp), f"storage.{key}", "needs the Python driver MySQLdb")
        assert "secret" not in result.output
        nothing_written(tmp_path)


def test_an_output_that_cannot_be_a_folder_stops_before_preparing(tmp_path):
    make_folder_task(tmp_path / "mine")
    exp = experiments(tmp_path)
    (tmp_path / "taken").write_text("a file")
    result = runner.invoke(app, ["run", "-j", "1", str(exp), "--output", str(tmp_path / "taken")])
    one_line(result, str(exp), "output folder", "is a file")
    nothing_written(tmp_path)


def test_prepare_study_reports_what_it_prepared(tmp_path):
    make_folder_task(tmp_path / "mine")
    spec = load_spec(experiments(tmp_path))
    said: list[str] = []
    first = prepare_study(spec, said.append)
    assert first.prepared == ("mine",) and first.data_root == tmp_path / "cache"
    assert any(s.startswith("mine: not prepared yet") for s in said)
    assert prepare_study(spec, said.append).prepared == ()


@pytest.mark.parametrize("command", ["status", "export", "report", "export-best"])
def test_commands_reading_results_name_the_file_when_storage_is_unreachable(tmp_path, command):
    exp = experiments(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    spec["storage"] = {"results": "postgresql://abl:secret@127.0.0.1:1/abl"}
    exp.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, [command, str(exp)])
    one_line(result, str(exp), "storage.results", "cannot be reached")
    assert "secret" not in result.output
    nothing_written(tmp_path)


def test_preparations_of_one_task_take_turns_and_the_second_reuses_the_first(tmp_path):
    """Two workers starting on a shared cache must not both write the task (the second's
    rename would meet the first's folder): the second waits on the task's lock file, then
    finds it prepared and prepares nothing."""
    make_folder_task(tmp_path / "mine")
    custom = (TaskDef("mine", "folder", str(tmp_path / "mine")),)
    cache = tmp_path / "cache"
    lines: list[str] = []
    got: list = []

    def second() -> None:
        got.append(prepare_task("mine", cache, log=lines.append, custom=custom, again=True))

    with exclusive(cache / "tasks" / ".mine.lock"):  # the first worker, mid-preparation
        worker = threading.Thread(target=second)
        worker.start()
        deadline = time.monotonic() + 60
        while not any("another process is preparing it" in line for line in lines):
            assert worker.is_alive() and time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert not (cache / "tasks" / "mine").exists()  # it waits: nothing written
        first = datasets._prepare("mine", task_source("mine", custom), cache, print, custom)
    worker.join(60)
    assert not worker.is_alive()
    assert got[0].meta == first.meta  # the first's preparation, read back
    assert not [line for line in lines if "preparing 0/" in line]
    assert [p.name for p in (cache / "tasks").iterdir() if "partial" in p.name] == []
