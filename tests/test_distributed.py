"""Two workers, as separate processes, on one study in PostgreSQL (a real server on
127.0.0.1): every key finishes exactly once, with its MLflow run and its results rows."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestrator.spec import load_spec
from orchestrator.study import open_study
from tests.pg import create_database, postgres_url  # noqa: F401

ABL = str(Path(sys.executable).with_name("abl"))
_n = itertools.count()


def test_two_workers_share_a_postgres_study(tmp_path, tiny_experiments, postgres_url):  # noqa: F811
    tag = f"dist{next(_n)}_{os.getpid()}"
    optuna_url = create_database(postgres_url, f"{tag}_optuna")
    results_url = create_database(postgres_url, f"{tag}_results")
    exp = tiny_experiments(
        axes={"masking": {"path": "mask.strategy", "values": ["time", "frequency", "multiblock"]}},
        storage={"optuna": optuna_url, "results": results_url, "mlflow": None},
    )
    spec = load_spec(exp)
    open_study(spec)  # databases, MLflow experiment and parent run: once, before the workers

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [ABL, "worker", str(exp)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    # Both workers took part.
    ran = [int(o.rsplit("ran ", 1)[1].split(",")[0]) for o in outputs]
    assert sum(ran) == 4 and all(r >= 1 for r in ran), outputs

    study = optuna.load_study(study_name="tiny", storage=optuna_url)
    done = Counter(
        t.user_attrs["key"]
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert len(done) == 4 and set(done.values()) == {1}

    with create_engine(results_url).connect() as conn:
        rows = conn.execute(
            text(
                "select t.key, t.status, count(m.id) from trials t "
                "left join metrics m on m.trial_id = t.id "
                "where t.axis != 'reference' group by t.key, t.status"
            )
        ).all()
    assert sorted(k for k, _, _ in rows) == sorted(done)
    assert all(status == "done" and n > 0 for _, status, n in rows)

    client = MlflowClient(spec.mlflow_uri)
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp_id], "tags.`abl.role` = 'trial'")
    assert Counter(r.data.tags["abl.key"] for r in runs) == done
    assert all(r.info.status == "FINISHED" for r in runs)
    # The credentials of the storage URLs reach neither the MLflow params nor the tags.
    password = make_url(optuna_url).password
    assert password
    for r in runs:
        assert all(password not in v for v in (*r.data.params.values(), *r.data.tags.values()))
    assert password not in "".join(outputs)
