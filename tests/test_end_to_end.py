"""The whole thin path through the real CLI: real audio, real Optuna, MLflow and SQLite."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from mlflow.tracking import MlflowClient
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.browser import load
from tests.pages import own_text

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
    # Marked as model training: MLflow 3 UIs that read the kind open it on its runs.
    assert exp_obj.tags["mlflow.experimentKind"] == "custom_model_development"
    study_run = client.search_runs([exp_obj.experiment_id], "tags.`abl.role` = 'study'")[0]
    runs = client.search_runs([exp_obj.experiment_id], "tags.`abl.role` = 'trial'")
    assert len(runs) == 2
    by_key = {r.data.tags["abl.key"]: r for r in runs}
    for key, _axis, setting, _status, run_id in trials:
        run = by_key[key]
        assert run.info.run_id == run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["mask.strategy"] == ("time" if setting == "time" else "unstructured")
        assert 0.0 <= run.data.metrics["env-sfx.accuracy"] <= 1.0
        assert run.data.tags["mlflow.parentRunId"] == study_run.info.run_id  # nested under it
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2]
        # The intermediate k-NN signal at every evaluation step, and the probe's own costs.
        knn = client.get_metric_history(run_id, "eval.env-sfx.knn")
        assert [m.step for m in knn] == [1, 2, 3] and all(0 <= m.value <= 1 for m in knn)
        assert 0 <= run.data.metrics["env-sfx.val_accuracy"] <= 1
        assert run.data.metrics["train.probe_share"] > 0
        # What the crops held: padding and digital silence, each a share of the frames drawn.
        assert 0 <= run.data.metrics["train.padding_share"] < 1
        assert 0 <= run.data.metrics["train.silence_share"] < 1
        # Embeddings are cached per trial (checkpoint), task and split.
        cached = sorted(p.name.split("-")[2] for p in (out / "embeddings" / key).glob("*.npy"))
        assert cached == ["test", "train", "val"]

    # The parent run carries the resolved study and, after the run, the report pages.
    parent = client.search_runs([exp_obj.experiment_id], "tags.`abl.role` = 'study'")[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "tiny.resolved.json" in names and "reports" in names
    pages = {a.path for a in client.list_artifacts(parent.info.run_id, "reports")}
    assert "reports/masking.html" in pages

    # Optuna ledger: both keys complete, with the axis recorded as a parameter.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["masking"] for t in done) == ["time", "unstructured"]
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in done)

    # A second run finds everything finished and trains nothing.
    again = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert again.exit_code == 0, again.output
    assert "ran 0, failed 0, already finished 2" in again.output

    # The report: one self-contained page carrying the trials' settings and scores.
    rep = runner.invoke(app, ["report", str(exp), "--axis", "masking"])
    assert rep.exit_code == 0, rep.output
    page = out / "reports" / "tiny" / "masking.html"
    text = own_text(page)  # the page without the inlined plotly.js bundle
    assert get_plotlyjs()[:2000] in page.read_text()
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
    assert f'<td class="num">{100 * base_acc:.2f}</td>' in text  # the score, in percent
    # The overview and the axis page, from real results, in a real browser.
    index = out / "reports" / "tiny" / "index.html"
    assert "Ablation map" in own_text(index) and "Seeds too few to tell" in own_text(index)
    assert "padded input %" in own_text(index) and "silent input %" in own_text(index)
    for p, titles in (
        (index, ["Ablation map — study tiny", "Cost per trial"]),
        (page, ["Probe accuracy by masking", "Training curves by masking"]),
    ):
        loaded = load(p, tmp_path / "browser")
        # Not blank: a short page leaves white below its content in the 3000-pixel shot.
        assert loaded.console == [] and loaded.ink() > 0.02
        assert set(titles) <= set(loaded.figure_titles), loaded.figure_titles

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
    # Parquet: the same rows and columns.
    pq_path = tmp_path / "results.parquet"
    ex = runner.invoke(app, ["export", str(exp), "--format", "parquet", "--out", str(pq_path)])
    assert ex.exit_code == 0, ex.output
    assert f"{len(table)} rows -> {pq_path}" in ex.output
    frame = pd.read_parquet(pq_path)
    assert list(frame.columns) == list(table.columns)
    cols = ["key", "seed", "setting", "task", "metric"]
    a = frame.sort_values(cols).reset_index(drop=True)
    b = table.sort_values(cols).reset_index(drop=True)
    assert a[cols].astype(str).equals(b[cols].astype(str))
    assert a["value"].to_numpy() == pytest.approx(b["value"].to_numpy(), nan_ok=True)
    bad = runner.invoke(app, ["export", str(exp), "--format", "xlsx"])
    assert bad.exit_code == 2 and "csv or parquet" in bad.output


def test_export_best_then_embed_real_audio(tmp_path, tiny_experiments, env_sfx):
    exp = tiny_experiments()
    out = tmp_path / "out"
    assert runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"]).exit_code == 0

    # Validation and test rankings that disagree: the baseline leads on validation, `time`
    # on test. The choice must follow validation, and follow it when it flips.
    db = sqlite3.connect(out / "results.db")
    ids = dict(db.execute("select setting, id from trials where axis != 'reference'").fetchall())
    keys = dict(db.execute("select setting, key from trials where axis != 'reference'").fetchall())

    def scores(setting: str, val: float, test: float) -> None:
        for metric, value in (("val_accuracy", val), ("accuracy", test)):
            db.execute(
                "update metrics set value = ? where trial_id = ? and metric = ?",
                (value, ids[setting], metric),
            )
        db.commit()

    import torch

    def provenance(path):  # noqa: ANN001, ANN202
        import json

        return json.loads(torch.load(path, weights_only=True)["provenance"])

    scores("baseline", val=0.9, test=0.1)
    scores("time", val=0.3, test=0.95)
    best = tmp_path / "best.pt"
    res = runner.invoke(app, ["export-best", str(exp), "--out", str(best)])
    assert res.exit_code == 0, res.output
    assert "best: baseline=baseline" in res.output
    assert "mean validation accuracy 0.900" in res.output and "env-sfx 0.100" in res.output
    assert provenance(best)["key"] == keys["baseline"]
    scores("baseline", val=0.2, test=0.99)
    scores("time", val=0.8, test=0.05)
    other = tmp_path / "other.pt"
    res = runner.invoke(app, ["export-best", str(exp), "--out", str(other)])
    assert res.exit_code == 0, res.output
    assert "best: masking=time" in res.output and "mean validation accuracy 0.800" in res.output
    assert provenance(other)["key"] == keys["time"]
    assert best.is_file()

    # A folder of real files: three clips of the task and one that is not audio.
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    clips = env_sfx.split("test", 1)[:3]
    for i, c in enumerate(clips):
        (folder / "sub" / f"clip{i}.flac").write_bytes(env_sfx.path(c).read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF but not really a wave file")

    target = tmp_path / "emb.parquet"
    bad = runner.invoke(app, ["embed", str(best), str(folder), "--out", str(target)])
    assert bad.exit_code == 2
    assert "broken.wav" in bad.output and "--skip-bad" in bad.output
    assert not target.exists()  # nothing half-written

    ok = runner.invoke(app, ["embed", str(best), str(folder), "--out", str(target), "--skip-bad"])
    assert ok.exit_code == 0, ok.output
    import pyarrow.parquet as pq

    table = pq.read_table(target)
    assert table.column("file").to_pylist() == [f"sub/clip{i}.flac" for i in range(3)]
    emb = table.column("embedding").to_pylist()
    assert len(emb) == 3 and len(emb[0]) == 5 * 32  # 5 frequency tokens x width 32

    npz = tmp_path / "emb.npz"
    ok = runner.invoke(app, ["embed", str(best), str(folder), "--out", str(npz), "--skip-bad"])
    assert ok.exit_code == 0, ok.output
    import numpy as np

    z = np.load(npz)
    assert np.allclose(z["embeddings"], np.array(emb, np.float32), atol=1e-6)


def test_factorial_and_list_designs_reach_the_reports(tmp_path, tiny_experiments):
    axes = {
        "masking": {"path": "mask.strategy", "values": ["unstructured", "time"]},
        "mask.ratio": [0.4, 0.6],
    }
    exp = tiny_experiments(design="factorial", axes=axes)
    res = runner.invoke(app, ["run", "-j", "1", str(exp)])
    assert res.exit_code == 0, res.output
    assert "ran 4, failed 0" in res.output
    reports = tmp_path / "out" / "reports" / "tiny"
    masking = own_text(reports / "masking.html")
    ratio = own_text(reports / "mask.ratio.html")
    # Each page groups the four cells by its own axis' value: two settings, two trials each.
    assert "time" in masking and "unstructured" in masking
    assert "0.4" in ratio and "0.6" in ratio
    assert "4 trials: 4 done" in masking and "4 trials: 4 done" in ratio

    lst = tmp_path / "list"
    lst.mkdir()
    import yaml

    spec = yaml.safe_load(exp.read_text())
    spec.pop("axes")
    spec.pop("crossed", None)
    spec.update(
        design="list",
        output=str(lst / "out"),
        configs=[
            {"name": "ijepa-like", "mask.strategy": "multiblock", "target.branch": "full-input"},
            {"name": "frames-96", "frontend.frames": 96},
        ],
    )
    f = lst / "experiments.yaml"
    f.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", "-j", "1", str(f)])
    assert res.exit_code == 0, res.output
    page = own_text(lst / "out" / "reports" / "tiny" / "config.html")
    assert "ijepa-like" in page and "frames-96" in page
    rep = runner.invoke(app, ["report", str(f)])
    assert rep.exit_code == 0 and "config.html" in rep.output
