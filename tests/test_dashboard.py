"""`abl dashboard` (optuna-dashboard on the study's Optuna storage) and where `abl ui` lands.
The servers are started as a user starts them, asked over HTTP on loopback and their sockets
read from /proc; the MLflow UI is loaded in headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.grid import expand
from orchestrator.ledger import Ledger
from orchestrator.spec import StudySpec, load_spec
from orchestrator.tracking import Tracker
from tests.browser import chromium
from tests.pg import PASSWORD_PREFIX, create_database, postgres_url  # noqa: F401
from tests.test_security import _listeners

ABL = str(Path(sys.executable).with_name("abl"))
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ledger(exp: Path) -> StudySpec:
    """The study's Optuna ledger with its trials enqueued, as `abl run` leaves it before the
    first trial trains."""
    spec = load_spec(exp)
    spec.output.mkdir(parents=True, exist_ok=True)
    Ledger(spec.optuna_url, spec.study).sync(expand(spec), spec.max_attempts)
    return spec


@contextmanager
def _started(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """`abl ARGS` in its own process group, its output to `log`; stopped (with whatever it
    started) on the way out."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [ABL, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _get(url: str, proc: subprocess.Popen, log: Path, wait_s: float = 120) -> bytes:
    """The body at `url` once the server answers it."""
    t0 = time.time()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, f"the server stopped: {log.read_text()}"
            assert time.time() - t0 < wait_s, f"{url} never answered: {log.read_text()}"
            time.sleep(0.5)


@pytest.mark.parametrize("backend", ["sqlite", "journal", "postgresql"])
def test_the_dashboard_serves_the_study_ledger_on_loopback(
    tmp_path, tiny_experiments, request, backend
):
    if backend == "sqlite":
        exp = tiny_experiments()  # the default: optuna.db in the output folder
    else:
        url = (
            f"journal://{tmp_path / 'shared' / 'optuna.journal'}"
            if backend == "journal"
            else create_database(
                request.getfixturevalue("postgres_url"), f"dashboard_{os.getpid()}_optuna"
            )
        )
        exp = tiny_experiments(storage={"optuna": url})
    spec = _ledger(exp)
    port = _free_port()
    log = tmp_path / "dashboard.log"
    with _started(["dashboard", str(exp), "--port", str(port)], log) as proc:
        body = _get(f"http://127.0.0.1:{port}/api/studies", proc, log)
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        sid = studies[0]["study_id"]
        study = json.loads(_get(f"http://127.0.0.1:{port}/api/studies/{sid}?after=0", proc, log))
        trials = expand(spec)
        assert len(study["trials"]) == len(trials) == 2
        assert {t["state"] for t in study["trials"]} == {"Waiting"}
        keys = {a["value"] for t in study["trials"] for a in t["user_attrs"] if a["key"] == "key"}
        assert keys == {t.key for t in trials}
        # Loopback only, as `abl ui`: never every interface unless --host says so.
        assert set(_listeners(port)) == {"127.0.0.1"}
        # The line it prints opens the study's page, and names the storage without secrets.
        line = log.read_text().splitlines()[0]
        link = f"http://127.0.0.1:{port}/dashboard/studies/{sid}"
        assert line.startswith(f"Optuna dashboard: {link} "), line
        assert b"<html" in _get(link, proc, log).lower()
        # Read-only unless --writable: the page's delete of the study is refused, and the
        # ledger keeps it.
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies/{sid}", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 403
        studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies", proc, log))
        assert [s["study_name"] for s in studies["study_summaries"]] == ["tiny"]
    assert PASSWORD_PREFIX not in log.read_text()


@pytest.mark.parametrize(
    "storage, words",
    [
        # A server that does not answer: named without its password, at once.
        (
            {"optuna": f"postgresql://abl:{PASSWORD_PREFIX}x@127.0.0.1:1/abl_optuna"},
            ["storage.optuna", "abl:***@127.0.0.1:1", "cannot be reached"],
        ),
        # A study never run: nothing to show, and nothing created.
        (None, ["study tiny has no Optuna ledger yet", "optuna.db does not exist", "abl run"]),
        (
            {"optuna": "journal:///nonexistent-abl/optuna.journal"},
            ["no Optuna ledger yet", "/nonexistent-abl/optuna.journal does not exist"],
        ),
    ],
)
def test_a_storage_the_dashboard_cannot_open_is_one_line_and_exit_2(
    tmp_path, tiny_experiments, storage, words
):
    exp = tiny_experiments(storage=storage) if storage else tiny_experiments()
    res = runner.invoke(app, ["dashboard", str(exp), "--port", str(_free_port())])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("abl: error: "), res.output
    for w in words:
        assert w in res.output
    assert PASSWORD_PREFIX not in res.output
    assert not (tmp_path / "out").exists()
    assert not Path("/nonexistent-abl").exists()


def test_a_study_missing_from_the_storage_or_a_busy_port_is_one_line(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    _ledger(exp)
    other = tmp_path / "other.yaml"
    other.write_text(exp.read_text().replace("study: tiny", "study: other", 1))
    res = runner.invoke(app, ["dashboard", str(other), "--port", str(_free_port())])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "study other is not in the Optuna storage" in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = runner.invoke(app, ["dashboard", str(exp), "--port", str(port)])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"--port {port}: cannot listen there" in res.output


def test_the_study_experiment_is_marked_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "fresh", tmp_path / "mlartifacts")
    client = MlflowClient(uri)
    kind = "mlflow.experimentKind"
    assert client.get_experiment_by_name("fresh").tags[kind] == "custom_model_development"
    # A study created before abl set the kind gets it when abl opens it again.
    client.create_experiment("old", artifact_location=(tmp_path / "old").as_uri())
    assert kind not in client.get_experiment_by_name("old").tags
    Tracker(uri, "old")
    assert client.get_experiment_by_name("old").tags[kind] == "custom_model_development"


def test_abl_ui_opens_the_study_on_its_trials_and_their_accuracies(tmp_path, tiny_experiments):
    """MLflow 3.17 opens an experiment on its GenAI overview (traces) unless the link says
    otherwise: the link `abl ui` prints opens the runs table, with the probe accuracy and the
    trials' settings as columns, in a real browser."""
    exp = tiny_experiments()
    spec = load_spec(exp)
    spec.output.mkdir(parents=True)
    # The MLflow records of a study as the runner writes them: a parent run, nested trials.
    tracker = Tracker(spec.mlflow_uri, spec.study, spec.output / "mlartifacts")
    parent = tracker.study_run(spec.study)
    for i, t in enumerate(expand(spec)):
        tags = {"abl.role": "trial", "abl.axis": t.axis, "abl.setting": t.setting}
        run = tracker.start_run(t.label, parent, {**tags, "abl.seed": str(t.seed)}, {})
        tracker.log_metrics(run, [("env-sfx.accuracy", 0.3 + 0.1 * i, 0)])
        tracker.end_run(run, ok=True)
    port = _free_port()
    log = tmp_path / "ui.log"
    with _started(["ui", str(exp), "--port", str(port)], log) as proc:
        _get(f"http://127.0.0.1:{port}/health", proc, log)
        line = log.read_text().splitlines()[0]
        link = line.removeprefix("MLflow UI: ").split()[0]
        eid = tracker.experiment_id
        assert link == (
            f"http://127.0.0.1:{port}/#/experiments/{eid}/runs"
            "?workflowType=machine_learning&viewStateShareKey=abl-trials"
        )
        dom = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=15000",
                "--window-size=1600,1200",
                "--dump-dom",
                link,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        ).stdout
    assert f"<title>Runs - Experiment {eid} - MLflow</title>" in dom, dom[:2000]
    for column in ("env-sfx.accuracy", "abl.axis", "abl.setting", "abl.seed"):
        assert f">{column}<" in dom, column
    tags = MlflowClient(spec.mlflow_uri).get_experiment(eid).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.abl-trials"])
    assert "metrics.`env-sfx.accuracy`" in view["selectedColumns"]
