"""Several workers on one study: every key finishes exactly once, a killed worker's trial runs
again, Ctrl-C releases. Real processes, real Optuna storage, MLflow and SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.procs import checkpoint_of, wait_for

runner = CliRunner()
ABL = [str(Path(sys.executable).with_name("abl"))]


def _ledger(out):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def _axes(values):
    return {"masking": {"path": "mask.strategy", "values": values}}


@pytest.mark.parametrize("seeds", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_references_split_evenly_and_each_runs_once(seeds, parts):
    from orchestrator.references import reference_jobs

    shares = [reference_jobs(tuple(range(seeds)), i, parts) for i in range(parts)]
    every = [job for share in shares for job in share]
    assert sorted(every) == sorted(
        [(-1, "logmel-stats"), *((s, "random-init") for s in range(seeds))]
    )
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1, shares


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
    _long(exp, 400)  # the run cannot finish between seeing a trial run and the Ctrl-C
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
        assert "refused" in lines[0]  # the server's own reason, not only the error's type
        assert "s3cret" not in res.output
    # No partial study: not the other stores, not even the output folder.
    assert not results.exists() and not (tmp_path / "out").exists()


def _long(exp: Path, steps: int) -> None:
    """Long enough to be stopped mid-training (a checkpoint every 5 steps), cheap per step
    (no collapse measurement at every step) so the run that resumes ends soon."""
    import yaml

    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["train"].update(steps=steps, checkpoint_every=5, eval_every=0, log_every=steps)
    exp.write_text(yaml.safe_dump(spec))


def _training(out: Path) -> set[str]:
    """Keys mid-training: the row says running and the checkpoint is on disk."""
    try:
        db = sqlite3.connect(out / "results.db", timeout=1)
        rows = db.execute("select key from trials where status = 'running'").fetchall()
    except sqlite3.Error:
        return set()
    return {k for (k,) in rows if checkpoint_of(out, k).exists()}


def _released(out: Path) -> set[str]:
    return {
        t.user_attrs["key"]
        for t in _ledger(out)
        if t.user_attrs.get("released") and "released" in t.user_attrs.get("error", "")
    }


def test_sigterm_releases_the_trial_with_exit_130(tmp_path, tiny_experiments):
    # What `kill`, a scheduler's stop or a shutdown sends: handled like Ctrl-C.
    exp = tiny_experiments(axes=_axes(["time"]), max_attempts=1)
    out = tmp_path / "out"
    _long(exp, 400)
    w = subprocess.Popen([*ABL, "run", "-j", "1", str(exp), "--no-report"], stdout=subprocess.PIPE)
    wait_for(lambda: _training(out))
    running = _training(out)
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=120) == 130
    assert b"released" in w.stdout.read()
    assert _released(out) == running
    db = sqlite3.connect(out / "results.db")
    assert db.execute("select count(*) from trials where status = 'running'").fetchone() == (0,)
    res = subprocess.run(
        [*ABL, "run", "-j", "1", str(exp), "--no-report"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed 0" in res.stdout and "resumed" in res.stdout


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_a_run_with_two_workers_releases_both_trials(tmp_path, tiny_experiments, how):
    """Under -j 2, Ctrl-C reaches the coordinator and its workers (one process group);
    SIGTERM reaches the coordinator, which passes it on. Either way: exit 130, every running
    trial released (not counted: max_attempts is 1) and resumed by the next run."""
    exp = tiny_experiments(axes=_axes(["time"]), max_attempts=1)
    out = tmp_path / "out"
    _long(exp, 400)
    coord = subprocess.Popen(
        [*ABL, "run", "-j", "2", str(exp), "--no-report"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(lambda: _training(out), 300)
        try:  # both workers inside a trial, most often; one is enough for what is checked
            wait_for(lambda: len(_training(out)) == 2, 20)
        except AssertionError:
            pass
        running = _training(out)
        if how == "ctrl-c":
            os.killpg(coord.pid, signal.SIGINT)
        else:
            coord.send_signal(signal.SIGTERM)
        assert coord.wait(timeout=400) == 130  # a bound for a loaded machine, not a timing
    finally:
        if coord.poll() is None:
            os.killpg(coord.pid, signal.SIGKILL)
    assert _released(out) == running
    db = sqlite3.connect(out / "results.db")
    assert db.execute("select count(*) from trials where status = 'running'").fetchone() == (0,)
    res = subprocess.run(
        [*ABL, "run", "-j", "2", str(exp), "--no-report"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed 0" in res.stdout
    assert sum("resumed" in line for line in res.stdout.splitlines()) == len(running)
    done = Counter(
        t.user_attrs["key"] for t in _ledger(out) if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert running <= set(done) and len(done) == 2 and set(done.values()) == {1}


def test_a_failed_trial_is_retried_until_max_attempts(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes={"lr": {"path": "train.lr", "values": [1000.0]}}, max_attempts=3)
    out = tmp_path / "out"
    failed_runs = 0
    for _ in range(5):  # retried within a run or on the next one: never past the limit
        res = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
        assert res.exit_code == 0, res.output
        if "ran 0, failed 0" in res.output:
            break
        failed_runs += 1
    attempts = [t for t in _ledger(out) if t.state == optuna.trial.TrialState.FAIL]
    assert len(attempts) == 3 and len({t.user_attrs["key"] for t in attempts}) == 1
    errors = [t.user_attrs["error"] for t in attempts]
    assert all("non-finite" in e or "diverged" in e for e in errors), errors
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp_id], "tags.`abl.role` = 'trial'")
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 3 + ["FINISHED"]
    assert 1 <= failed_runs <= 3
    # One attempt fewer allowed is one attempt fewer made: the limit is what stops it.
    exp2 = tiny_experiments(
        axes={"lr": {"path": "train.lr", "values": [1000.0]}}, max_attempts=2, study="tiny2"
    )
    for _ in range(4):
        res = runner.invoke(app, ["run", "-j", "1", str(exp2), "--no-report"])
        assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="tiny2", storage=f"sqlite:///{out / 'optuna.db'}")
    fails = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(fails) == 2


def test_two_workers_syncing_at_once_run_each_key_once(tmp_path, tiny_experiments):
    """Two coordinators (or workers) that sync at the same moment both enqueue every key; the
    claim drops the younger copy of a key that is running or done, without counting it as an
    attempt. Made to happen, not waited for: the second sync sees the ledger as it was."""
    from orchestrator.grid import expand
    from orchestrator.ledger import Ledger
    from orchestrator.spec import load_spec

    spec = load_spec(tiny_experiments(axes=_axes(["time", "frequency"]), max_attempts=1))
    trials = expand(spec)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    a, b = Ledger(url, "tiny"), Ledger(url, "tiny")
    before = b.states()  # b reads the ledger...
    a.sync(trials, spec.max_attempts)  # ...a enqueues every key...
    b.states = lambda: before  # ...and b enqueues from what it read
    b.sync(trials, spec.max_attempts)
    keys = Counter(t.user_attrs["key"] for t in a.study.get_trials())
    assert set(keys.values()) == {2} and len(keys) == len(trials)  # every key twice
    ran: list[str] = []
    first = a.claim()  # a runs one key; b, claiming meanwhile, must not get its copy
    ran.append(first.key)
    while (claim := b.claim()) is not None:
        ran.append(claim.key)
        b.complete(claim, 0.5)
    a.complete(first, 0.5)
    assert a.claim() is None and b.claim() is None
    assert sorted(ran) == sorted(t.key for t in trials)  # each key once
    dropped = [t for t in a.study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(dropped) == len(trials)
    assert all(t.user_attrs.get("released") for t in dropped)  # not counted as attempts
    assert all("duplicate" in t.user_attrs["error"] for t in dropped)
    # max_attempts is 1, yet nothing is left to run and nothing is enqueued again.
    assert a.sync(trials, spec.max_attempts) == []


def _claim_and_stop(exp: Path, beat: bool) -> str:
    """Claim a trial as a worker does and stop before it starts (no results row, no MLflow
    run); with `beat`, after its first heartbeat, which is then aged past the grace period."""
    from sqlalchemy import text

    from orchestrator.grid import expand
    from orchestrator.ledger import Ledger
    from orchestrator.spec import load_spec
    from orchestrator.study import open_study

    spec = load_spec(exp)
    open_study(spec)  # the databases and the MLflow experiment, as `abl run` makes them
    ledger = Ledger(spec.optuna_url, spec.study)
    ledger.sync(expand(spec), spec.max_attempts)
    claim = ledger.claim()
    if beat:
        ledger.storage.record_heartbeat(claim.trial_id)
    with ledger.storage.engine.begin() as conn:
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'"))
        conn.execute(
            text("UPDATE trials SET datetime_start = '2000-01-01 00:00:00' WHERE trial_id = :t"),
            {"t": claim.trial_id},
        )
    ledger.storage.engine.dispose()
    return claim.key


def _run_reaps(exp: Path, out: Path, key: str) -> None:
    res = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "ran 2, failed 0" in res.output
    attempts = [t for t in _ledger(out) if t.user_attrs.get("key") == key]
    states = sorted(t.state.name for t in attempts)
    assert states == ["COMPLETE", "FAIL"]
    (lost,) = [t for t in attempts if t.state == optuna.trial.TrialState.FAIL]
    assert "worker lost" in lost.user_attrs["error"]
    db = sqlite3.connect(out / "results.db")
    rows = db.execute(
        "select status from trials where key = ? and axis != 'reference'", (key,)
    ).fetchall()
    assert rows == [("done",)]  # the lost attempt never started: no row of its own


def test_a_worker_stopped_between_claim_and_start_is_reaped(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes=_axes(["time"]))
    key = _claim_and_stop(exp, beat=True)
    _run_reaps(exp, tmp_path / "out", key)


def test_a_worker_stopped_before_its_heartbeat_thread_is_reaped(tmp_path, tiny_experiments):
    # The claim itself records the first beat: a RUNNING trial with no beat at all would never
    # be stale to Optuna, so it would never be reaped or run again.
    exp = tiny_experiments(axes=_axes(["time"]))
    key = _claim_and_stop(exp, beat=False)
    _run_reaps(exp, tmp_path / "out", key)


def test_time_left_counts_this_workers_part_of_the_queue():
    """Two workers share six waiting trials: each has its own trial and three more left, not
    all seven (the log line said twice the real time)."""
    from orchestrator.workers import time_left

    assert time_left(300.0, 6, 2) == "about 20 min left for this worker's share"
    assert time_left(300.0, 6, 1) == "about 35 min left for this worker's share"
    assert time_left(300.0, 0, 2) == "about 5 min left for this worker's share"
