"""The whole thin path through the real CLI: real audio, real Optuna, MLflow and SQLite."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from mlflow.tracking import MlflowClient
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()


def test_run_then_report_records_every_trial(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    out = tmp_path / "out"

    result = runner.invoke(app, ["run", str(exp)])
    assert result.exit_code == 0, result.output
    assert "ran 2, failed 0" in result.output

    # SQL results: one row per trial, done, with probe scores in range.
    db = sqlite3.connect(out / "results.db")
    trials = db.execute(
        "select key, axis, setting, status, mlflow_run_id from trials "
        "where axis != 'reference' order by id"
    ).fetchall()
    assert [(a, s, st) for _, a, s, st, _ in trials] == [
        ("baseline", "baseline", "done"),
        ("masking", "time", "done"),
    ]
    accs = db.execute(
        "select t.setting, m.value from metrics m join trials t on t.id = m.trial_id "
        "where m.task = 'env-sfx' and m.metric = 'accuracy'"
    ).fetchall()
    assert len(accs) == 4  # two trials + two references
    assert all(0.0 <= v <= 1.0 for _, v in accs)
    # Ten classes: a score far above chance would be suspicious at 3 steps; far below is a bug.
    assert {s for s, _ in accs} == {"baseline", "time", "random-init", "logmel-stats"}

    # MLflow: an experiment named after the study, one child run per trial with its values.
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp_obj = client.get_experiment_by_name("tiny")
    assert exp_obj is not None
    runs = client.search_runs([exp_obj.experiment_id], "tags.`abl.role` = 'trial'")
    assert len(runs) == 2
    by_key = {r.data.tags["abl.key"]: r for r in runs}
    for key, _axis, setting, _status, run_id in trials:
        run = by_key[key]
        assert run.info.run_id == run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["mask.strategy"] == ("time" if setting == "time" else "unstructured")
        assert 0.0 <= run.data.metrics["env-sfx.accuracy"] <= 1.0
        assert run.data.tags["mlflow.parentRunId"]
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2]

    # Optuna ledger: both keys complete, with the axis recorded as a parameter.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["masking"] for t in done) == ["time", "unstructured"]

    # A second run finds everything finished and trains nothing.
    again = runner.invoke(app, ["run", str(exp), "--no-report"])
    assert again.exit_code == 0, again.output
    assert "ran 0, failed 0, already finished 2" in again.output

    # The report: one self-contained page carrying the trials' settings and scores.
    rep = runner.invoke(app, ["report", str(exp), "--axis", "masking"])
    assert rep.exit_code == 0, rep.output
    page = out / "reports" / "tiny" / "masking.html"
    text = page.read_text()
    assert get_plotlyjs()[:2000] in text
    assert 'src="http' not in text
    for word in (
        "unstructured (baseline)",
        "time",
        "random-init",
        "logmel-stats",
        trials[0][0][:10],
    ):
        assert word in text
    base_acc = dict(accs)["baseline"]
    assert f"{base_acc:.4g}"[:4] in text  # the score itself is in the figure data

    # Status and the stable export read the same rows.
    st = runner.invoke(app, ["status", str(exp)])
    assert st.exit_code == 0 and "2 trials: 2 done, 0 running, 0 failed, 0 pending" in st.output
    csv_path = tmp_path / "results.csv"
    ex = runner.invoke(app, ["export", str(exp), "--out", str(csv_path)])
    assert ex.exit_code == 0, ex.output
    import pandas as pd

    table = pd.read_csv(csv_path)
    assert list(table.columns[:9]) == [
        "study",
        "key",
        "seed",
        "axis",
        "setting",
        "status",
        "task",
        "metric",
        "value",
    ]
    got = table.query("metric == 'accuracy' and task == 'env-sfx'").set_index("setting")["value"]
    assert got.to_dict() == pytest.approx(dict(accs))
