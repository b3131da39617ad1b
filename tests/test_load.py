"""Load: four local workers through 100 short trials, on SQLite files and on PostgreSQL. Every
key finishes exactly once in the ledger, the results table and MLflow, and no worker meets a
locked database or a refused connection."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from db.engine import make_engine
from orchestrator.spec import load_spec
from tests.pg import postgres_url, storage  # noqa: F401

ABL = str(Path(sys.executable).with_name("abl"))
TRIALS = 100


def test_four_workers_run_100_trials_each_exactly_once(tmp_path, tiny_experiments, storage):  # noqa: F811
    # One cell (the baseline) over 100 seeds: 100 trials of one training step each.
    exp = tiny_experiments(
        axes={"masking": {"path": "mask.strategy", "values": ["unstructured"]}},
        seeds=list(range(TRIALS)),
        **storage,
    )
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["train"].update(steps=1, warmup_steps=0, eval_every=0, checkpoint_every=0)
    exp.write_text(yaml.safe_dump(spec))
    res = subprocess.run(
        [ABL, "run", "-j", "4", str(exp), "--no-report"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=1200,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert f"ran {TRIALS}, failed 0" in res.stdout, log[-5000:]
    for trouble in ("database is locked", "OperationalError", "Traceback", "connection", "FAILED"):
        assert trouble not in log, trouble

    s = load_spec(exp)
    study = optuna.load_study(study_name=s.study, storage=s.optuna_url)
    trials = study.get_trials(deepcopy=False)
    done = Counter(
        t.user_attrs["key"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert len(done) == TRIALS and set(done.values()) == {1}
    assert len(trials) == TRIALS  # no attempt failed and ran again

    engine = make_engine(s.results_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("select key, status, worker from trials where axis != 'reference'")
        ).all()
        refs = conn.execute(text("select count(*) from trials where axis = 'reference'")).scalar()
    engine.dispose()
    assert sorted(k for k, _, _ in rows) == sorted(done)
    assert {st for _, st, _ in rows} == {"done"}
    assert len({w for _, _, w in rows}) == 4  # every worker took part
    assert refs == TRIALS + 1  # random-init once per seed (split between workers), log-mel once

    client = MlflowClient(s.mlflow_uri)
    exp_id = client.get_experiment_by_name(s.study).experiment_id
    runs = client.search_runs([exp_id], "tags.`abl.role` = 'trial'", max_results=1000)
    assert Counter(r.data.tags["abl.key"] for r in runs) == done
    assert {r.info.status for r in runs} == {"FINISHED"}

    # With PostgreSQL: its password is nowhere, not in the logs, not in MLflow's params and
    # tags, not in a report or any other file of the output folder.
    if storage:
        password = make_url(s.optuna_url).password
        assert password and password not in log
        rep = subprocess.run([ABL, "report", str(exp)], capture_output=True, text=True)
        assert rep.returncode == 0 and password not in rep.stdout + rep.stderr
        for r in runs:
            assert all(password not in v for v in (*r.data.params.values(), *r.data.tags.values()))
        files = [p for p in s.output.rglob("*") if p.is_file()]
        assert any(p.suffix == ".html" for p in files)
        assert not [p for p in files if password.encode() in p.read_bytes()]
