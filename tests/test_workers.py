"""Several workers on one study: every key finishes exactly once, a killed worker's trial runs
again, Ctrl-C releases. Real processes, real Optuna storage, MLflow and SQLite."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.procs import wait_for

runner = CliRunner()
ABL = [str(Path(sys.executable).with_name("abl"))]


def _ledger(out):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def _axes(values):
    return {"masking": {"path": "mask.strategy", "values": values}}


def test_two_local_workers_finish_every_key_exactly_once(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes=_axes(["unstructured", "time", "frequency", "multiblock"]))
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(exp), "-j", "2", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "on 2 workers" in res.output and "ran 4, failed 0" in res.output
    trials = _ledger(out)
    done = Counter(
        t.user_attrs["key"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert len(done) == 4 and set(done.values()) == {1}
    db = sqlite3.connect(out / "results.db")
    rows = db.execute("select key, status from trials where axis != 'reference'").fetchall()
    assert sorted(k for k, _ in rows) == sorted(done) and {s for _, s in rows} == {"done"}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp_id], "tags.`abl.role` = 'trial'")
    assert sorted(r.data.tags["abl.key"] for r in runs) == sorted(done)
    assert len(client.search_runs([exp_id], "tags.`abl.role` = 'study'")) == 1
    assert len({r.data.tags["abl.host"] for r in runs}) == 1
    # The trials ran in two separate worker processes (host:pid).
    workers = {w for (w,) in db.execute("select worker from trials where axis != 'reference'")}
    assert len(workers) == 2


def _running(out) -> bool:
    try:
        db = sqlite3.connect(out / "results.db", timeout=1)
        n = db.execute("select count(*) from trials where status = 'running'").fetchone()[0]
        return n > 0 and any((out / "checkpoints").glob("*.pt"))
    except sqlite3.Error:
        return False


def test_ctrl_c_releases_the_trial_without_using_an_attempt(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes=_axes(["time"]), max_attempts=1)
    out = tmp_path / "out"
    import yaml

    spec = yaml.safe_load(exp.read_text())
    # Long enough that the run cannot finish between seeing a trial run and the Ctrl-C.
    spec["baseline"]["train"].update(steps=2000, checkpoint_every=5, eval_every=0)
    exp.write_text(yaml.safe_dump(spec))
    # A shell that starts the tests in the background ignores SIGINT, and a child inherits
    # that; restore the default so `abl` gets Ctrl-C the way a terminal delivers it.
    w = subprocess.Popen(
        [*ABL, "run", "-j", "1", str(exp), "--no-report"],
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(lambda: _running(out))
    time.sleep(1)  # well inside training
    w.send_signal(signal.SIGINT)
    assert w.wait(timeout=120) == 130
    trials = _ledger(out)
    released = [t for t in trials if t.user_attrs.get("released")]
    assert len(released) == 1 and "released" in released[0].user_attrs["error"]
    db = sqlite3.connect(out / "results.db")
    assert db.execute("select count(*) from trials where status = 'running'").fetchone() == (0,)
    # max_attempts is 1, yet the released trial runs again (and resumes).
    res = subprocess.run(
        [*ABL, "run", "-j", "1", str(exp), "--no-report"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed 0" in res.stdout and "resumed" in res.stdout


def test_median_pruning_stops_trailing_trials_when_asked(tmp_path, tiny_experiments):
    # Six seeds of one cell: after two finished trials, a later one whose k-NN accuracy at
    # a step falls below the median of the others at that step is stopped and recorded as
    # pruned; pruned keys never run again.
    import yaml

    exp = tiny_experiments(
        axes=_axes(["time"]), seeds=[0, 1, 2, 3, 4, 5], pruning="median", max_attempts=1
    )
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["train"].update(steps=6, eval_every=2)
    exp.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert res.exit_code == 0, res.output
    trials = _ledger(out)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 12 and len(complete) >= 2 and pruned
    db = sqlite3.connect(out / "results.db")
    statuses = Counter(
        s for (s,) in db.execute("select status from trials where axis != 'reference'")
    )
    assert statuses["pruned"] == len(pruned) and statuses["done"] == len(complete)
    for t in pruned:
        assert max(t.intermediate_values) == t.user_attrs["pruned_at"] < 6
    again = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert "ran 0, failed 0" in again.output


def test_pruning_is_off_by_default(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes=_axes(["time"]), seeds=[0, 1, 2])
    res = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert res.exit_code == 0, res.output
    trials = _ledger(tmp_path / "out")
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in trials)


def test_an_unreachable_storage_is_one_line_with_the_password_hidden(tmp_path, tiny_experiments):
    results = tmp_path / "results.db"
    exp = tiny_experiments(
        storage={
            "optuna": "postgresql+psycopg://abl:s3cret@127.0.0.1:1/optuna",
            "results": f"sqlite:///{results}",
            "mlflow": None,
        }
    )
    for cmd in (["run", str(exp)], ["worker", str(exp)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "storage.optuna" in lines[0] and "***" in lines[0]
        assert "s3cret" not in res.output
    # No partial study: not the other stores, not even the output folder.
    assert not results.exists() and not (tmp_path / "out").exists()
