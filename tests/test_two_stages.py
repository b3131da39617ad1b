"""Pretraining and probing are two stages: a finished study probed on a task added to
probe.tasks retrains nothing (same checkpoints, same keys) and the new task's scores reach the
results table, MLflow and the report; trials that differ only in probe settings share one
pretraining. Real `abl run`, real audio, MLflow, SQLite and Optuna storage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from db.engine import make_engine
from db.queries import results_frame
from model.data.datasets import PreparedTask
from orchestrator.spec import load_spec

ABL = str(Path(sys.executable).with_name("abl"))


def _abl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ABL, *args], capture_output=True, text=True, env=os.environ)


def _folder_task(root: Path, env_sfx: PreparedTask, classes: int = 2, per_class: int = 5) -> Path:
    """A bring-your-own `folder` task: real prepared clips of `classes` env-sfx classes, one
    folder per class."""
    for label in env_sfx.classes[:classes]:
        clips = [c for c in env_sfx.clips if c.label == label][:per_class]
        for c in clips:
            dst = root / label / Path(c.file).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(env_sfx.root / c.file, dst)
    return root


def _esc50_task(root: Path, env_sfx: PreparedTask, classes: int = 3, per_class: int = 10) -> Path:
    """A bring-your-own data set in ESC-50's layout (meta/esc50.csv, audio/*.wav, five folds),
    made of real prepared env-sfx clips."""
    import csv

    import soundfile as sf

    rows = []
    for target, label in enumerate(env_sfx.classes[:classes]):
        clips = [c for c in env_sfx.clips if c.label == label][:per_class]
        for i, c in enumerate(clips):
            fold, src = i % 5 + 1, f"{target}{i:03d}"
            name = f"{fold}-{src}-A-{target}.wav"
            audio, rate = sf.read(env_sfx.root / c.file)
            (root / "audio").mkdir(parents=True, exist_ok=True)
            sf.write(root / "audio" / name, audio, rate)
            rows.append([name, fold, target, label, "False", src, "A"])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def _checkpoints(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (out / "checkpoints").glob("*.pt")}


def test_a_task_added_to_a_finished_study_is_probed_without_retraining(
    tmp_path, tiny_experiments, env_sfx
):
    exp = tiny_experiments()
    first = _abl("run", "-j", "1", str(exp))
    assert first.returncode == 0, first.stdout + first.stderr
    spec = load_spec(exp)
    engine = make_engine(spec.results_url)
    before = results_frame(engine, spec.study)
    keys = set(before["key"])
    ckpts = _checkpoints(spec.output)
    assert len(ckpts) == 2  # the two masking cells

    # The researcher declares their own data set and adds it to probe.tasks.
    mine = _folder_task(tmp_path / "mine", env_sfx)
    raw = yaml.safe_load(exp.read_text())
    raw["baseline"]["data"]["tasks"] = {"mine": {"format": "folder", "root": str(mine)}}
    raw["baseline"]["probe"]["tasks"] = ["env-sfx", "mine"]
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    again = _abl("run", "-j", "1", str(exp))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ran 0, failed 0, already finished 2" in again.stdout  # no trial trained
    assert "probed" in again.stdout
    assert _checkpoints(spec.output) == ckpts  # not one checkpoint rewritten
    after = results_frame(engine, spec.study)
    assert set(after["key"]) == keys  # same keys
    acc = after[after["metric"] == "accuracy"]
    # Every trial and reference now has a score on the new task, and kept the old one.
    for task in ("env-sfx", "mine"):
        assert set(acc.loc[acc["task"] == task, "key"]) == keys, task
    old = before[before["metric"] == "accuracy"].set_index(["key", "task"])["value"]
    new = acc.set_index(["key", "task"])["value"]
    assert (new.loc[old.index] == old).all()  # the earlier scores are untouched
    # MLflow: each trial's run carries the new task's accuracy.
    client = MlflowClient(spec.mlflow_uri)
    exp_id = client.get_experiment_by_name(spec.study).experiment_id
    runs = client.search_runs([exp_id], "tags.`abl.role` = 'trial'")
    assert runs and all("mine.accuracy" in r.data.metrics for r in runs)
    # The report shows the new task.
    page = spec.output / "reports"
    html = "".join(p.read_text() for p in page.rglob("*.html"))
    assert '"mine"' in html  # a task name in the figures' data

    # Run once more: nothing left to do.
    third = _abl("run", "-j", "1", str(exp), "--no-report")
    assert third.returncode == 0 and "probed" not in third.stdout


def test_trials_that_differ_only_in_the_probe_share_one_pretraining(tmp_path, tiny_experiments):
    exp = tiny_experiments(
        axes={"probed": {"path": "probe.encoder", "values": ["context", "target"]}}
    )
    res = _abl("run", "-j", "1", str(exp), "--no-report")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ran 2, failed 0" in res.stdout
    assert "its pretraining" in res.stdout and "is done; probing it" in res.stdout
    spec = load_spec(exp)
    assert len(_checkpoints(spec.output)) == 1  # one pretraining for two trials
    df = results_frame(make_engine(spec.results_url), spec.study)
    trials = df[(df["axis"] != "reference") & (df["metric"] == "accuracy")]
    assert trials["key"].nunique() == 2 and trials["pretrain"].nunique() == 1


def test_probe_tasks_cannot_be_an_axis(tiny_experiments):
    for path, values in (("probe.tasks", [["env-sfx"]]),):
        exp = tiny_experiments(axes={"tasks": {"path": path, "values": values}})
        res = _abl("run", str(exp))
        assert res.returncode == 2, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and str(exp) in lines[0] and "baseline.probe.tasks" in lines[0]
        assert not load_spec_output(exp).exists()  # nothing written


def load_spec_output(exp: Path) -> Path:
    return Path(yaml.safe_load(exp.read_text())["output"])


def test_abl_probe_scores_a_study_a_checkpoint_and_an_export_on_an_esc50_layout_folder(
    tmp_path, tiny_experiments, env_sfx
):
    exp = tiny_experiments()
    assert _abl("run", "-j", "1", str(exp), "--no-report").returncode == 0
    mine = _esc50_task(tmp_path / "ESC-50-master", env_sfx)
    raw = yaml.safe_load(exp.read_text())
    raw["baseline"]["data"]["tasks"] = {"mine": {"format": "esc50", "root": str(mine)}}
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(exp)

    # The study: every finished trial (two) and reference (two), on the new task.
    table = tmp_path / "study.csv"
    res = _abl("probe", str(exp), "--task", "mine", "--out", str(table))
    assert res.returncode == 0, res.stdout + res.stderr
    import pandas as pd

    df = pd.read_csv(table)
    assert len(df) == 4 and set(df["task"]) == {"mine"}
    assert df["accuracy"].between(0, 1).all()
    again = _abl("probe", str(exp), "--task", "mine")  # read back, not probed again
    assert again.returncode == 0 and "probed" not in again.stdout
    assert _checkpoints(spec.output)  # nothing was trained: the study's own checkpoints only

    # One checkpoint, and an export, with the task declared by the experiments file.
    ckpt = next((spec.output / "checkpoints").glob("*.pt"))
    best = _abl("export-best", str(exp))
    assert best.returncode == 0, best.stdout + best.stderr
    export = spec.output / f"best-{spec.study}.pt"
    for path in (ckpt, export):
        out = tmp_path / f"{path.stem}.parquet"
        res = _abl(
            "probe", str(path), "--task", "mine", "--experiments", str(exp), "--out", str(out)
        )
        assert res.returncode == 0, res.stdout + res.stderr
        one = pd.read_parquet(out)
        assert list(one["task"]) == ["mine"] and 0 <= one["accuracy"].iloc[0] <= 1

    # Bad input: one line, exit 2.
    for args in (("--task", "no-such-task"), ("--task", "corpus-0ad"), ()):
        res = _abl("probe", str(exp), *args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
