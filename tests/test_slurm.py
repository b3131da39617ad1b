"""The Slurm launcher on a real one-node Slurm cluster (tests/slurm.py starts it): `abl run
--launcher slurm` submits a job array of pull workers through submitit; the ledger keeps every
trial done exactly once through throttling, preemption, requeues, lost workers and `abl stop`.

Trials are tiny (a few steps); the ones a test interrupts train long enough to be caught
running, and every wait polls with a generous timeout instead of assuming a speed.
"""

from __future__ import annotations

import dataclasses
import itertools
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
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from model.config import ProbeConfig
from orchestrator.cli import app
from orchestrator.ledger import open_storage
from orchestrator.slurm import batch_script, log_file
from orchestrator.spec import load_spec
from tests.pg import create_database, postgres_url  # noqa: F401
from tests.procs import checkpoint_of, wait_for
from tests.slurm import slurm_cluster  # noqa: F401

ABL = str(Path(sys.executable).with_name("abl"))
runner = CliRunner()
_n = itertools.count()
# Workers beat every 2 s; a silent one is reaped after 60 s (the default), or after 20 s where a
# test kills one. The tests' processes run niced on a shared machine: a shorter grace would reap
# workers that are merely starved of CPU.
BEATS = {"ABL_HEARTBEAT_S": "2", "ABL_GRACE_S": "60", "OMP_NUM_THREADS": "1"}
FAST_BEATS = {**BEATS, "ABL_GRACE_S": "20"}
LONG = {"steps": 800, "checkpoint_every": 10, "eval_every": 0, "log_every": 100}


@pytest.fixture
def tiny(tiny_experiments):
    """conftest's tiny experiments, probed on held-out splits: the tiny study pretrains on the
    task it probes, which a cross-validated probe (where the recipe has one) refuses."""

    def make(**overrides) -> Path:
        exp = tiny_experiments(**overrides)
        if "protocol" in {f.name for f in dataclasses.fields(ProbeConfig)}:
            raw = yaml.safe_load(exp.read_text())
            raw["baseline"]["probe"]["protocol"] = "split"
            exp.write_text(yaml.safe_dump(raw, sort_keys=False))
        return exp

    return make


def _experiments(make, tmp_path: Path, storage: str, request, **overrides) -> Path:
    """A tiny study on the Slurm launcher with the Optuna ledger in a journal file or in a
    fresh PostgreSQL database."""
    if storage == "journal":
        optuna_url = f"journal://{tmp_path / 'shared' / 'optuna.journal'}"
    else:
        server = request.getfixturevalue("postgres_url")
        optuna_url = create_database(server, f"slurm{next(_n)}_{os.getpid()}_optuna")
    launcher = {"name": "slurm", "partition": "debug", "time_min": 30, "signal_s": 60}
    launcher.update(overrides.pop("launcher", {}))
    return make(
        storage={"optuna": optuna_url, "results": None, "mlflow": None},
        launcher=launcher,
        **overrides,
    )


def _long_trials(exp: Path, values: list[str], steps: int = LONG["steps"]) -> None:
    """Make the study's trials train long enough to be interrupted while they run."""
    raw = yaml.safe_load(exp.read_text())
    raw["baseline"]["train"].update({**LONG, "steps": steps})
    raw["axes"] = {"masking": {"path": "mask.strategy", "values": values}}
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))


def _trials(exp: Path) -> list[optuna.trial.FrozenTrial]:
    spec = load_spec(exp)
    study = optuna.load_study(study_name=spec.study, storage=open_storage(spec.optuna_url))
    return [t for t in study.get_trials(deepcopy=False) if "key" in t.user_attrs]


def _complete(exp: Path) -> Counter:
    return Counter(t.user_attrs["key"] for t in _trials(exp) if t.state == TrialState.COMPLETE)


def _rows(exp: Path) -> list[tuple]:
    """(key, status, worker, started, finished) of each trial row (references left out)."""
    path = load_spec(exp).output / "results.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        return db.execute(
            "select key, status, worker, started, finished from trials "
            "where axis != 'reference' order by id"
        ).fetchall()
    except sqlite3.OperationalError:  # the tables are not created yet
        return []
    finally:
        db.close()


def _squeue(env: dict, *args: str) -> list[list[str]]:
    r = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.split()]


def _running_job(exp: Path) -> tuple[str, str]:
    """(key, array task id) of a trial running in a Slurm worker, one that has written a
    checkpoint when any has (with two trials running, only one may have saved yet: the test
    must stop that one to see it resume)."""
    out = load_spec(exp).output
    running = [
        (key, worker.removeprefix("slurm:").split("@")[0])
        for key, status, worker, _, _ in _rows(exp)
        if status == "running" and worker and worker.startswith("slurm:")
    ]
    if not running:
        raise AssertionError("no trial is running")
    saved = [r for r in running if checkpoint_of(out, r[0]).exists()]
    return (saved or running)[0]


def _checkpointed(exp: Path) -> bool:
    """A trial is running and has written a checkpoint."""
    out = load_spec(exp).output
    return any(checkpoint_of(out, k).exists() for k, s, *_ in _rows(exp) if s == "running")


def _start_requeued(env: dict, job: str, timeout: float = 300) -> None:
    """Slurm holds a requeued job about two minutes (Reason=BeginTime) before it may start
    again; lift the hold so the test does not wait it out."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = subprocess.run(
            ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True
        )
        if "Reason=BeginTime" in r.stdout:
            subprocess.run(
                ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, timeout=60
            )
            return
        if r.returncode or "JobState=COMPLETED" in r.stdout:
            return
        time.sleep(0.5)


def _logs(exp: Path) -> str:
    folder = load_spec(exp).output / "slurm"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_log.out")))


def _run(args: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([ABL, *args], env=env, capture_output=True, text=True, timeout=timeout)


# --- options and refusals -------------------------------------------------------------------


def test_options_map_to_the_job_directives(tiny):
    exp = tiny(
        launcher={
            "name": "slurm",
            "partition": "gpu",
            "gpus_per_trial": 2,
            "cpus_per_trial": 8,
            "mem": "32G",
            "time_min": 600,
            "max_parallel": 4,
            "account": "proj-1",
            "qos": "high",
            "signal_s": 180,
            "extra": ["constraint=a100", "exclude=node12"],
        }
    )
    script = batch_script(load_spec(exp), 6)
    directives = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    for want in (
        "--array=0-5%4",
        "--partition=gpu",
        "--gpus-per-node=2",
        "--cpus-per-task=8",
        "--mem=32G",
        "--time=600",
        "--account=proj-1",
        "--qos=high",
        "--signal=USR2@180",
        "--constraint=a100",
        "--exclude=node12",
        "--requeue",
        "--job-name=abl-tiny",
    ):
        assert f"#SBATCH {want}" in directives, script
    # No GPU asked for, no GPU directive; no cap, no throttle below the array's size.
    exp = tiny(launcher={"name": "slurm"})
    script = batch_script(load_spec(exp), 3)
    assert "gpus" not in script and "#SBATCH --array=0-2%3" in script


@pytest.mark.parametrize(
    "launcher, flags, message",
    [
        ({"name": "slurm", "gpus_per_trial": -1}, [], "launcher.gpus_per_trial = -1"),
        ({"name": "slurm"}, ["--gpus-per-trial", "-2"], "launcher.gpus_per_trial = -2"),
        ({"name": "slurm", "mem": "lots"}, [], "launcher.mem"),
        ({"name": "slurm", "extra": ["time=5"]}, [], "use launcher.time_min"),
        ({"name": "slurm", "extra": ["constraint"]}, [], "must be key=value"),
        ({"name": "slurm", "max_parallel": 0}, [], "launcher.max_parallel"),
        ({"name": "pbs"}, [], "launcher.name = 'pbs' is unknown"),
        ({"name": "slurm", "gpu_per_trial": 1}, [], "did you mean 'gpus_per_trial'"),
        ({"name": "slurm", "time_min": 1, "signal_s": 120}, [], "launcher.signal_s"),
        ({"name": "slurm"}, ["--time-min", str(10**20)], "must be from 1 to 525600"),
        ({"name": "slurm", "partition": "gpu\n"}, [], "launcher.partition = 'gpu\\n'"),
        ({"name": "slurm", "mem": "16G\n"}, [], "launcher.mem"),
        ({"name": "slurm", "extra": ["constraint=a100\n"]}, [], "must be key=value"),
    ],
)
def test_bad_launcher_settings_are_one_line(tiny, launcher, flags, message):
    exp = tiny(launcher=launcher)
    result = runner.invoke(app, ["run", str(exp), "--dry-run", *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_refusals_on_the_cluster_submit_nothing(
    tiny,
    tmp_path,
    slurm_cluster,  # noqa: F811
):
    before = _squeue(slurm_cluster.env, "-t", "all")
    # SQLite as the ledger (the default storage).
    exp = tiny(launcher={"name": "slurm"})
    r = runner.invoke(app, ["run", str(exp)])
    assert r.exit_code == 2 and "SQLite" in r.output and "journal" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    # An unknown partition, named on the command line.
    journal = f"journal://{tmp_path / 'optuna.journal'}"
    exp = tiny(
        launcher={"name": "slurm"}, storage={"optuna": journal, "results": None, "mlflow": None}
    )
    r = runner.invoke(app, ["run", str(exp), "--partition", "gpu-nowhere"])
    assert r.exit_code == 2 and "'gpu-nowhere' is not a partition" in r.output, r.output
    assert "debug" in r.output and len(r.output.strip().splitlines()) == 1
    # A negative GPU count.
    r = runner.invoke(app, ["run", str(exp), "--launcher", "slurm", "--gpus-per-trial", "-1"])
    assert r.exit_code == 2 and "gpus_per_trial" in r.output, r.output
    assert _squeue(slurm_cluster.env, "-t", "all") == before
    assert not (tmp_path / "out" / "slurm").exists()
    assert not (tmp_path / "out" / "optuna.journal").exists()


# --- a whole study through Slurm --------------------------------------------------------------


@pytest.mark.parametrize("storage", ["journal", "postgres"])
def test_six_trials_two_at_a_time_then_only_new_cells(
    tiny,
    tmp_path,
    request,
    storage,
    slurm_cluster,  # noqa: F811
):
    exp = _experiments(
        tiny,
        tmp_path,
        storage,
        request,
        seeds=[0, 1],
        axes={
            "masking": {"path": "mask.strategy", "values": ["unstructured", "time", "frequency"]}
        },
        launcher={"max_parallel": 2},
    )
    env = {**slurm_cluster.env, **BEATS}
    t0 = time.time()
    proc = subprocess.Popen(
        [ABL, "run", str(exp), "--wait", "--no-report"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_running = None
    peak = 0
    while proc.poll() is None:
        running = [j for j, state in _squeue(env, "-n", "abl-tiny") if state == "RUNNING"]
        peak = max(peak, len(running))
        if first_running is None and any(t.state == TrialState.RUNNING for t in _safe_trials(exp)):
            first_running = time.time() - t0
        if time.time() - t0 > 900:
            proc.kill()
            raise AssertionError("the study did not finish in 900 s")
        time.sleep(0.5)
    output = proc.stdout.read()
    assert proc.returncode == 0, output + _logs(exp)
    wall = time.time() - t0
    done = _complete(exp)
    assert len(done) == 6 and set(done.values()) == {1}, output + _logs(exp)
    assert "6 to run" in output and "at most 2 at once" in output
    assert peak <= 2
    # Each trial ran in a worker of the submitted array, and never more than 2 at once.
    spec = load_spec(exp)
    arrays = (spec.output / "slurm" / "jobs.txt").read_text().split()[0]
    rows = _rows(exp)
    assert sorted(k for k, *_ in rows) == sorted(done)
    assert all(s == "done" and w.startswith(f"slurm:{arrays}_") for _, s, w, _, _ in rows), rows
    events = sorted([(st, 1) for *_, st, _ in rows] + [(fin, -1) for *_, fin in rows])
    assert max(itertools.accumulate(e for _, e in events)) <= 2
    assert log_file(spec, rows[0][2].removeprefix("slurm:").split("@")[0]).is_file()
    print(
        f"\n[{storage}] first trial running {first_running:.1f} s after `abl run`; 6 trials in "
        f"{wall:.1f} s through Slurm"
    )

    # The grid edited: one more value, so two more cells (one per seed); only they run.
    raw = yaml.safe_load(exp.read_text())
    raw["axes"]["masking"]["values"].append("multiblock")
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    r = _run(["run", str(exp), "--wait", "--no-report"], env)
    assert r.returncode == 0, r.stdout + r.stderr + _logs(exp)
    assert "6 already finished, 2 to run" in r.stdout and "2 worker(s)" in r.stdout, r.stdout
    after = _complete(exp)
    assert len(after) == 8 and set(after.values()) == {1}
    others = [(t.state.name, t.user_attrs) for t in _trials(exp) if t.state != TrialState.COMPLETE]
    assert not others, others


def _safe_trials(exp: Path) -> list:
    try:
        return _trials(exp)
    except Exception:  # the study is not created yet, or the journal is being written
        return []


# --- interruptions --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["preemption-signal", "scontrol-requeue"])
def test_requeued_worker_resumes_its_trial(
    tiny,
    tmp_path,
    request,
    how,
    slurm_cluster,  # noqa: F811
):
    exp = _experiments(tiny, tmp_path, "journal", request)
    _long_trials(exp, ["unstructured"])  # the baseline alone: one trial
    env = {**slurm_cluster.env, **BEATS}
    proc = subprocess.Popen(
        [ABL, "run", str(exp), "--wait", "--no-report"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _checkpointed(exp), timeout=600)
        key, job = _running_job(exp)
        if how == "preemption-signal":  # what Slurm sends signal_s before the time limit
            cmd = ["scancel", "--signal=USR2", job]
        else:
            cmd = ["scontrol", "requeue", job]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        _start_requeued(env, job)
        output = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output + _logs(exp)
    assert _complete(exp) == Counter({key: 1}), _logs(exp)
    attempts = [t for t in _trials(exp) if t.user_attrs["key"] == key]
    released = [t for t in attempts if t.state == TrialState.FAIL]
    assert len(released) == 1 and released[0].user_attrs.get("released"), _logs(exp)
    logs = _logs(exp)
    assert "from its checkpoint at step" in logs, logs
    if how == "preemption-signal":
        assert "warned of the time limit or a preemption" in logs


@pytest.mark.parametrize("how", ["scancel", "sigkill"])
def test_stopped_or_lost_worker_trial_finishes_on_another(
    tiny,
    tmp_path,
    request,
    how,
    slurm_cluster,  # noqa: F811
):
    exp = _experiments(tiny, tmp_path, "journal", request, launcher={"max_parallel": 2})
    _long_trials(exp, ["unstructured", "time"])  # two trials, one per worker
    env = {**slurm_cluster.env, **FAST_BEATS}
    proc = subprocess.Popen(
        [ABL, "run", str(exp), "--wait", "--no-report"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _checkpointed(exp), timeout=600)
        key, job = _running_job(exp)
        if how == "scancel":  # SIGTERM: the worker releases its trial
            r = subprocess.run(["scancel", job], env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        else:  # SIGKILL, as on a lost node: nothing is released; only the heartbeat tells
            worker = next(w for k, s, w, *_ in _rows(exp) if k == key and s == "running")
            os.kill(int(worker.split("@")[1].split(":")[1].split()[0]), signal.SIGKILL)
        output = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output + _logs(exp)
    done = _complete(exp)
    assert len(done) == 2 and set(done.values()) == {1}, _logs(exp)
    stopped = [t for t in _trials(exp) if t.user_attrs["key"] == key and t.state == TrialState.FAIL]
    assert stopped, _logs(exp)
    if how == "scancel":
        assert all(t.user_attrs.get("released") for t in stopped), _logs(exp)
    else:
        assert all("worker lost" in t.user_attrs["error"] for t in stopped), _logs(exp)
    row = next(r for r in _rows(exp) if r[0] == key)
    assert row[1] == "done" and not row[2].startswith(f"slurm:{job}@"), row
    assert "from its checkpoint at step" in _logs(exp)


def test_status_stop_and_resubmit(
    tiny,
    tmp_path,
    request,
    slurm_cluster,  # noqa: F811
):
    exp = _experiments(tiny, tmp_path, "journal", request, launcher={"max_parallel": 2})
    _long_trials(exp, ["unstructured", "time", "frequency"], steps=2000)
    env = {**slurm_cluster.env, **BEATS}
    r = _run(["run", str(exp)], env, timeout=300)
    assert r.returncode == 0 and "submitted job array" in r.stdout, r.stdout + r.stderr
    # Enough workers queued already: a second run submits none.
    r = _run(["run", str(exp)], env, timeout=300)
    assert r.returncode == 0 and "nothing submitted" in r.stdout, r.stdout + r.stderr
    assert len((load_spec(exp).output / "slurm" / "jobs.txt").read_text().splitlines()) == 1

    wait_for(lambda: _checkpointed(exp), timeout=600)
    r = _run(["status", str(exp)], env, timeout=300)
    assert r.returncode == 0 and "slurm: job arrays" in r.stdout and "RUNNING" in r.stdout, (
        r.stdout + r.stderr
    )
    r = _run(["stop", str(exp)], env, timeout=300)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: not _squeue(env, "-n", "abl-tiny"), timeout=300)
    # Every trial a worker had started is finished or released; none is left running.
    trials = _trials(exp)
    assert not [t for t in trials if t.state == TrialState.RUNNING], _logs(exp)
    released = {t.user_attrs["key"] for t in trials if t.user_attrs.get("released")}
    complete = {t.user_attrs["key"] for t in trials if t.state == TrialState.COMPLETE}
    started = {k for k, *_ in _rows(exp)}
    assert released and started <= released | complete, _logs(exp)
    # A released trial's row points to its worker's log.
    r = _run(["status", str(exp)], env, timeout=300)
    assert "log: " in r.stdout, r.stdout
    log = Path(r.stdout.split("log: ", 1)[1].split()[0])
    assert log.is_file() and "released" in log.read_text()

    # Running again submits what the study still needs; every trial finishes once.
    r = _run(["run", str(exp), "--wait", "--no-report"], env)
    assert r.returncode == 0, r.stdout + r.stderr + _logs(exp)
    done = _complete(exp)
    assert len(done) == 3 and set(done.values()) == {1}, _logs(exp)
    assert "from its checkpoint at step" in _logs(exp)
