"""MLflow tracking through one client object: an experiment per study, a parent run per study
and a child run per trial. Only `log_batch` is used for metrics and params (far faster than one
call per value)."""

from __future__ import annotations

import logging
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

# The experiment's kind ("Machine learning" in the UI): MLflow 3 UIs before the global GenAI /
# model-training switch open a "custom_model_development" experiment on its runs, not on its
# GenAI traces. MLflow 3.17's UI goes by the link's `workflowType` instead (ui_landing).
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING = "custom_model_development"
# A view of the runs table kept as an experiment tag, as the UI's "Share" button keeps one, and
# opened by a link with `viewStateShareKey`: the axis, setting, seed and probe accuracies as
# columns (MLflow's runs table shows no metric or tag column until one is chosen). A shared
# view cannot expand a parent run: the trials stay nested, one click away, under the study's.
VIEW_TAG = "mlflow.sharedViewState."
VIEW_KEY = "abl-trials"

logging.getLogger("alembic").setLevel(logging.WARNING)
logging.getLogger("mlflow").setLevel(logging.WARNING)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = str(v)[:6000]
    return out


def git_state() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"abl.git_commit": commit or "unknown", "abl.git_dirty": str(bool(dirty)).lower()}


def environment_tags() -> dict[str, str]:
    import mlflow
    import optuna
    import torch

    return {
        **git_state(),
        "abl.host": socket.gethostname(),
        "abl.python": platform.python_version(),
        "abl.torch": torch.__version__,
        "abl.optuna": optuna.__version__,
        "abl.mlflow": mlflow.__version__,
    }


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifacts: Path | None = None):
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # Without an explicit location MLflow puts artifacts under the current directory.
            location = artifacts.resolve().as_uri() if artifacts is not None else None
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND: TRAINING}
            )
        else:
            self.experiment_id = exp.experiment_id
            mark_training(self.client, exp)  # a study created before abl set the kind

    def study_run(self, study: str) -> str:
        """The parent run of a study, created once and found again on resume."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string="tags.`abl.role` = 'study'", max_results=1
        )
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(
            self.experiment_id, run_name=study, tags={"abl.role": "study", "abl.study": study}
        )
        return run.info.run_id

    def start_run(
        self, name: str, parent: str | None, tags: dict[str, str], params: dict[str, str]
    ) -> str:
        all_tags = {**environment_tags(), **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=items[i : i + PARAMS_PER_BATCH])
        return run.info.run_id

    def log_metrics(self, run_id: str, records: list[tuple[str, float, int]]) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v, step in records]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def has_artifact(self, run_id: str, name: str) -> bool:
        return any(a.path == name for a in self.client.list_artifacts(run_id))

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def end_run(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def fail_run(self, run_id: str, reason: str) -> None:
        """Close a run its worker could not close (it was killed): FAILED, with the reason."""
        self.set_tags(run_id, {"abl.error": reason})
        self.end_run(run_id, ok=False)


def mark_training(client: MlflowClient, exp: Any) -> None:
    """Tag an experiment as model training, for the MLflow UI to open on its runs."""
    if exp.tags.get(EXPERIMENT_KIND) != TRAINING:
        try:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING)
        except MlflowException:
            pass  # workers opening an old study at once: another one wrote it first


def trials_view(tasks: list[str]) -> dict[str, Any]:
    """The runs table as `abl ui` opens it: the trials' axis, setting and seed and each task's
    probe accuracy as columns (keys as the MLflow UI writes them: TYPE.`NAME`)."""
    columns = ["tags.`abl.axis`", "tags.`abl.setting`", "tags.`abl.seed`"]
    return {"selectedColumns": columns + [f"metrics.`{task}.accuracy`" for task in tasks]}


def ui_landing(tracking_uri: str, study: str, tasks: list[str]) -> str:
    """The part of the MLflow UI's URL after the host that opens the study's runs (empty when
    the study has no experiment yet); marks the experiment as model training and keeps the
    trials' view on it. MLflow 3.17's UI chooses between its GenAI view (traces) and its
    model-training view (runs) by the `workflowType` of the link, else by the browser's last
    choice, GenAI at first; earlier MLflow 3 UIs by the experiment's kind tag: the link and the
    tag cover both."""
    import json

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return ""
    mark_training(client, exp)
    view = json.dumps(trials_view(tasks))
    if exp.tags.get(VIEW_TAG + VIEW_KEY) != view:
        client.set_experiment_tag(exp.experiment_id, VIEW_TAG + VIEW_KEY, view)
    return (
        f"#/experiments/{exp.experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def ui_command(tracking_uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The MLflow UI on loopback unless the user asks otherwise; an argument list, no shell."""
    return [
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
