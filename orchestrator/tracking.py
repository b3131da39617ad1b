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
from mlflow.tracking import MlflowClient

PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

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
                experiment, artifact_location=location
            )
        else:
            self.experiment_id = exp.experiment_id

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
