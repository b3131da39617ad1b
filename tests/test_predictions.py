"""Cross-validated probes and per-clip predictions, through a real tiny study and the results
database: every labelled clip is tested exactly once per trial, and the predictions the
database gives back are the ones the probe made (the accuracy recomputes from them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
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
    q = TaskPredictions(  # repeated cross-validation: each clip once per draw of the folds
        clips=np.array([0, 1, 0, 1]),
        groups=np.array([0, 1, 0, 1]),
        folds=np.array([0, 1, 1, 0]),
        truth=np.array(["cat", "dog", "cat", "dog"]),
        pred=np.array(["cat", "cat", "cat", "dog"]),
        repeats=np.array([0, 0, 1, 1]),
    )
    queries.finish_trial(
        engine, tid, {("t", "accuracy"): 0.5}, 1.0, None, predictions={"t": p, "u": q}
    )
    df = queries.predictions_frame(engine, "s")
    assert list(df.columns) == queries.PREDICTION_COLUMNS
    du = df[df["task"] == "u"]
    assert du["repeat"].tolist() == [0, 0, 1, 1] and du["fold"].tolist() == [0, 1, 1, 0]
    assert du["pred"].tolist() == q.pred.tolist()
    df = df[df["task"] == "t"]
    assert (df["repeat"] == 0).all()  # one draw: stored as NULL, read as draw 0
    assert df["clip"].tolist() == [4, 0, 2, 1] and df["group"].tolist() == [1, 0, 1, 2]
    assert df["fold"].tolist() == [0, 1, 1, 0] and set(df["key"]) == {"k1"}
    assert df["truth"].tolist() == p.truth.tolist() and df["pred"].tolist() == p.pred.tolist()
    assert (df["seed"] == 3).all() and (df["task"] == "t").all()
    # A new attempt of the trial replaces them.
    queries.start_trial(engine, sid, "k1", 3, "masking", "time", {}, {}, "w")
    assert queries.predictions_frame(engine, "s").empty


def test_a_cross_validated_study_tests_every_clip_once_per_draw(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    spec = yaml.safe_load(exp.read_text())
    # The corpus (env-sfx) is not probed: cross-validation may then use every labelled clip.
    # Two draws of the folds (repeated cross-validation).
    spec["baseline"]["probe"].update(tasks=["speech-digits"], protocol="cv", folds=3, repeats=2)
    exp.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["run", str(exp)])
    assert result.exit_code == 0, result.output

    s = load_spec(exp)
    engine = make_engine(s.results_url)
    df = queries.predictions_frame(engine, s.study)
    bank = DataBank(resolve_data_root())
    limit = s.baseline.data.max_clips_per_class
    clips = bank.clips("speech-digits", "all", limit)
    draws = task_folds(bank, "speech-digits", limit, 3, draws=2)
    assert not np.array_equal(draws[0], draws[1])  # another partition, not the same twice
    results = queries.results_frame(engine, s.study)
    # Two trials and the two references, each with one prediction per labelled clip and draw.
    assert df.groupby("key").size().tolist() == [2 * len(clips)] * 4
    for key, g in df.groupby("key"):
        for d, folds in enumerate(draws):
            gd = g[g["repeat"] == d].sort_values("clip")
            assert gd["clip"].tolist() == list(range(len(clips)))  # each clip tested once
            assert gd["truth"].tolist() == [c.label for c in clips]
            assert gd["fold"].tolist() == folds.tolist()
            for grp, members in gd.groupby("group"):  # a group never straddles two folds
                assert members["fold"].nunique() == 1, grp
        acc = results[
            (results["key"] == key)
            & (results["task"] == "speech-digits")
            & (results["metric"] == "accuracy")
        ]["value"]
        # The score is the draws' mean accuracy: every entry of both draws counted once.
        assert float(acc.iloc[0]) == pytest.approx(np.mean(g["truth"] == g["pred"]))
    # The reports read each clip's share of draws that scored it right.
    from reports.data import load_results

    res = load_results(engine, s.study)
    p = res.predictions
    assert len(p) == 2 * len(clips)  # two trials, one row per clip
    assert set(np.unique(p["correct"])) <= {0.0, 0.5, 1.0}
    assert isinstance(df, pd.DataFrame)
