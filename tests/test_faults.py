"""Faults cost at most the trial they hit: a worker or the coordinator killed with -9 mid-trial,
a study run again, a trial whose loss diverges. Real processes, real databases (SQLite files and
a PostgreSQL server on 127.0.0.1), real Optuna storage and MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import text

from db.engine import make_engine
from orchestrator.spec import load_spec
from tests.pages import own_text
from tests.pg import postgres_url, storage  # noqa: F401
from tests.procs import alive, checkpoint_of, children, wait_for

ABL = str(Path(sys.executable).with_name("abl"))
FAST_REAP = {"ABL_HEARTBEAT_S": "1", "ABL_GRACE_S": "3"}  # a lost worker is noticed in 3 s


def _long(exp: Path, steps: int) -> None:
    """Long enough to be killed mid-training; a checkpoint every 5 steps."""
    spec = yaml.safe_load(exp.read_text())
    # No collapse measurement at every step: the runs that resume end sooner.
    spec["baseline"]["train"].update(steps=steps, checkpoint_every=5, eval_every=0, log_every=steps)
    exp.write_text(yaml.safe_dump(spec))


def _rows(exp: Path) -> list[tuple]:
    engine = make_engine(load_spec(exp).results_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text(
                    "select key, status, error, mlflow_run_id from trials "
                    "where axis != 'reference' order by key"
                )
            ).all()
    finally:
        engine.dispose()


def _running(exp: Path) -> bool:
    """A trial is mid-training: its row says running and a checkpoint is on disk."""
    try:
        rows = _rows(exp)
    except Exception:  # the database is not there yet
        return False
    out = load_spec(exp).output
    return any(s == "running" for _, s, _, _ in rows) and any((out / "checkpoints").glob("*.pt"))


def _abl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ABL, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def _runs(exp: Path) -> list:
    spec = load_spec(exp)
    client = MlflowClient(spec.mlflow_uri)
    exp_id = client.get_experiment_by_name(spec.study).experiment_id
    return client.search_runs([exp_id], "tags.`abl.role` = 'trial'")


def _exactly_once(exp: Path, keys: int) -> Counter:
    """Every key finished exactly once, in the ledger, the results table and MLflow."""
    spec = load_spec(exp)
    study = optuna.load_study(study_name=spec.study, storage=spec.optuna_url)
    done = Counter(
        t.user_attrs["key"]
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert len(done) == keys and set(done.values()) == {1}
    rows = _rows(exp)
    assert sorted(k for k, *_ in rows) == sorted(done)
    assert {s for _, s, _, _ in rows} == {"done"}
    finished = Counter(r.data.tags["abl.key"] for r in _runs(exp) if r.info.status == "FINISHED")
    assert finished == done
    return done


def test_a_worker_killed_mid_trial_runs_again_exactly_once(tmp_path, tiny_experiments, storage):  # noqa: F811
    exp = tiny_experiments(**storage)
    _long(exp, steps=300)
    w = subprocess.Popen(
        [ABL, "worker", str(exp)], env={**os.environ, **FAST_REAP}, stdout=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _running(exp))
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait()
    (killed,) = [k for k, s, _, _ in _rows(exp) if s == "running"]
    time.sleep(4)  # past the grace period: the killed worker's heartbeat is stale
    res = _abl("run", "-j", "1", str(exp), "--no-report", env=FAST_REAP)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed" in res.stdout  # from the killed attempt's checkpoint
    _exactly_once(exp, keys=2)
    # The killed attempt's MLflow run is closed as failed, with the reason.
    runs = [r for r in _runs(exp) if r.data.tags["abl.key"] == killed]
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    (lost,) = [r for r in runs if r.info.status == "FAILED"]
    assert "worker lost" in lost.data.tags["abl.error"]
    # A finished study run again runs nothing.
    again = _abl("run", "-j", "1", str(exp), "--no-report")
    assert again.returncode == 0 and "ran 0, failed 0, already finished 2" in again.stdout


def _worker_pids(coordinator: int) -> list[int]:
    """The coordinator's worker processes, told apart from multiprocessing's resource tracker
    (also its child) by their command line."""
    pids = []
    for pid in children(coordinator):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            pids.append(pid)
    return pids


def _training(exp: Path) -> set[str]:
    """Keys mid-training: their row says running and their checkpoint is on disk."""
    try:
        rows = _rows(exp)
    except Exception:  # the database is not there yet
        return set()
    out = load_spec(exp).output
    return {k for k, s, _, _ in rows if s == "running" and checkpoint_of(out, k).exists()}


def test_a_coordinator_killed_mid_study_takes_its_workers_down_and_resumes(
    tmp_path, tiny_experiments
):
    """kill -9 of `abl run -j 2` while both workers train: both stop too (they would otherwise
    train on unwatched), each releasing its trial (SIGTERM from the kernel); the next run
    resumes both from their checkpoints and finishes every key once."""
    exp = tiny_experiments(
        axes={"masking": {"path": "mask.strategy", "values": ["time", "frequency", "multiblock"]}}
    )
    _long(exp, steps=400)
    coord = subprocess.Popen(
        [ABL, "run", "-j", "2", str(exp), "--no-report"],
        env={**os.environ, **FAST_REAP},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(_training(exp)) == 2, 300)  # each worker inside a trial
        workers = _worker_pids(coord.pid)
        assert len(workers) == 2, workers  # two workers, not a worker and the tracker
        killed = _training(exp)
    finally:
        coord.send_signal(signal.SIGKILL)
        coord.wait()
    # Each worker gets SIGTERM from the kernel, releases its trial and exits.
    wait_for(lambda: not any(alive(pid) for pid in workers), 240)  # a loaded machine is slow
    rows = {k: (s, e) for k, s, e, _ in _rows(exp)}
    released = {k for k, (s, e) in rows.items() if e and e.startswith("released")}
    assert released == killed, rows
    assert not any(s == "running" for s, _ in rows.values())
    stopped = [r for r in _runs(exp) if r.info.status == "FAILED"]
    assert sorted(r.data.tags["abl.key"] for r in stopped) == sorted(killed)
    assert all(r.data.tags["abl.error"].startswith("released") for r in stopped)
    # Released attempts do not count and are not reaped: the next run resumes them at once.
    res = _abl("run", "-j", "2", str(exp), "--no-report", env=FAST_REAP)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed 0" in res.stdout
    resumed = [line for line in res.stdout.splitlines() if "resumed" in line]
    assert len(resumed) == 2, res.stdout  # both killed trials, from their checkpoints
    assert "worker lost" not in res.stdout
    _exactly_once(exp, keys=4)
    runs = _runs(exp)
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    assert sorted(r.data.tags["abl.key"] for r in runs if r.info.status == "FAILED") == sorted(
        killed
    )


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes={"lr": {"path": "train.lr", "values": [1000.0]}}, max_attempts=1)
    res = _abl("run", "-j", "1", str(exp))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ran 1, failed 1" in res.stdout
    rows = {k: (s, e) for k, s, e, _ in _rows(exp)}
    (reason,) = [e for s, e in rows.values() if s == "failed"]
    assert "non-finite" in reason or "diverged" in reason
    assert sorted(s for s, _ in rows.values()) == ["done", "failed"]
    (failed,) = [r for r in _runs(exp) if r.info.status == "FAILED"]
    assert failed.data.tags["abl.error"] == reason
    # The report shows the failure and its reason on the axis page.
    page = own_text(load_spec(exp).output / "reports" / "tiny" / "lr.html")
    assert "failed" in page and reason.split(" (")[0] in page
    # A second run leaves it: its attempts are spent.
    again = _abl("run", "-j", "1", str(exp), "--no-report")
    assert again.returncode == 0 and "ran 0, failed 0" in again.stdout


def test_an_output_folder_without_room_is_refused_before_anything_is_written(
    tmp_path, tiny_experiments
):
    exp = tiny_experiments()
    res = _abl("run", "-j", "1", str(exp), env={"ABL_MIN_FREE_MB": str(10**12)})
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("abl: error:")
    assert "MB free, less than" in res.stderr and "--output" in res.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, tiny_experiments):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    exp = tiny_experiments(output=str(blocker / "out"))
    res = _abl("run", "-j", "1", str(exp))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "is not writable" in res.stderr and str(blocker / "out") in res.stderr


def _file_size_limit(limit: int):
    """For subprocess: writes past `limit` bytes fail with EFBIG ("File too large"), as on a
    disk that filled up; the signal that would kill the process is ignored."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_up_mid_run_is_one_line_and_loses_nothing(tmp_path, tiny_experiments):
    """Room for the databases and checkpoints, not for the report (plotly.js alone is 4 MB):
    the trials are recorded, the error is one line, the next run only renders the report."""
    exp = tiny_experiments()
    res = subprocess.run(
        [ABL, "run", "-j", "1", str(exp)],
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(3 * 2**20),
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert "File too large writing" in res.stderr and "free some space" in res.stderr
    assert "ran 2, failed 0" in res.stdout
    assert {s for _, s, _, _ in _rows(exp)} == {"done"}
    again = _abl("run", "-j", "1", str(exp))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ran 0, failed 0, already finished 2" in again.stdout
    assert (load_spec(exp).output / "reports" / "tiny" / "index.html").is_file()
