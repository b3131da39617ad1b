"""Cross-validated probes and per-clip predictions, through a real tiny study and the results
database: every labelled clip is tested exactly once per trial, and the predictions the
database gives back are the ones the probe made (the accuracy recomputes from them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from db import queries
from db.engine import init_db, make_engine
from model.data.datasets import resolve_data_root
from orchestrator.bank import DataBank
from orchestrator.cli import app
from orchestrator.probing import TaskPredictions, task_folds
from orchestrator.spec import load_spec

runner = CliRunner()


def test_predictions_round_trip_through_the_database(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    init_db(engine)
    sid = queries.ensure_study(engine, "s", "{}")
    tid = queries.start_trial(engine, sid, "k1", 3, "masking", "time", {}, {}, "w")
    p = TaskPredictions(
        clips=np.array([4, 0, 2, 1]),
        groups=np.array([1, 0, 1, 2]),
        folds=np.array([0, 1, 1, 0]),
        truth=np.array(["dog", "cat", "dog", "bird"]),
        pred=np.array(["dog", "dog", "cat", "bird"]),
    )
    queries.finish_trial(engine, tid, {("t", "accuracy"): 0.5}, 1.0, None, predictions={"t": p})
    df = queries.predictions_frame(engine, "s")
    assert list(df.columns) == queries.PREDICTION_COLUMNS
    assert df["clip"].tolist() == [4, 0, 2, 1] and df["group"].tolist() == [1, 0, 1, 2]
    assert df["fold"].tolist() == [0, 1, 1, 0] and set(df["key"]) == {"k1"}
    assert df["truth"].tolist() == p.truth.tolist() and df["pred"].tolist() == p.pred.tolist()
    assert (df["seed"] == 3).all() and (df["task"] == "t").all()
    # A new attempt of the trial replaces them.
    queries.start_trial(engine, sid, "k1", 3, "masking", "time", {}, {}, "w")
    assert queries.predictions_frame(engine, "s").empty


def test_a_cross_validated_study_tests_every_clip_once(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    spec = yaml.safe_load(exp.read_text())
    # The corpus (env-sfx) is not probed: cross-validation may then use every labelled clip.
    spec["baseline"]["probe"].update(tasks=["speech-digits"], protocol="cv", folds=3)
    exp.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["run", str(exp)])
    assert result.exit_code == 0, result.output

    s = load_spec(exp)
    engine = make_engine(s.results_url)
    df = queries.predictions_frame(engine, s.study)
    bank = DataBank(resolve_data_root())
    limit = s.baseline.data.max_clips_per_class
    clips = bank.clips("speech-digits", "all", limit)
    folds = task_folds(bank, "speech-digits", limit, 3)
    results = queries.results_frame(engine, s.study)
    # Two trials and the two references, each with one prediction per labelled clip.
    assert df.groupby("key").size().tolist() == [len(clips)] * 4
    for key, g in df.groupby("key"):
        g = g.sort_values("clip")
        assert g["clip"].tolist() == list(range(len(clips)))  # each clip tested exactly once
        assert g["truth"].tolist() == [c.label for c in clips]
        assert g["fold"].tolist() == folds.tolist()
        for grp, members in g.groupby("group"):  # a group never straddles two folds
            assert members["fold"].nunique() == 1, grp
        acc = results[
            (results["key"] == key)
            & (results["task"] == "speech-digits")
            & (results["metric"] == "accuracy")
        ]["value"]
        assert float(acc.iloc[0]) == np.mean(g["truth"] == g["pred"])
    assert isinstance(df, pd.DataFrame)
