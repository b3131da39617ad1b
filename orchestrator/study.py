"""A study opened for work: its databases, ledger, MLflow experiment and data, checked and created
once; lost workers' trials reaped; the leak check of a cross-validated study.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from db import queries
from db.engine import init_db, make_engine
from model.data.datasets import resolve_data_root
from model.errors import AblError
from orchestrator.bank import DataBank
from orchestrator.grid import TrialSpec, baseline_settings, study_tasks
from orchestrator.ledger import LOST, Ledger
from orchestrator.prepare import check_storage
from orchestrator.spec import StudySpec
from orchestrator.tracking import Tracker

Log = Callable[[str], None]


@dataclass
class Study:
    """Everything a worker needs to run trials of one study."""

    spec: StudySpec
    engine: Engine
    ledger: Ledger
    tracker: Tracker
    study_id: int
    parent_run: str
    bank: DataBank
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def checkpoints(self) -> Path:
        return self.spec.output / "checkpoints"


MIN_FREE_MB = 200  # room a study needs to start (ABL_MIN_FREE_MB overrides)


def data_summary(spec: StudySpec, bank: DataBank) -> dict[str, dict]:
    """Per task of the study: its clips, and the clips preparation skipped, by reason
    (unreadable: corrupt, empty or truncated files; silent). A task not prepared yet is
    left out: its first trial stops with the fix."""
    out = {}
    for name in study_tasks(spec):
        try:
            task = bank.task(name)
        except AblError:
            continue
        skipped = {k: int(v) for k, v in (task.meta.get("skipped") or {}).items() if v}
        out[name] = {"clips": len(task.clips), "skipped": skipped}
    return out


def skipped_line(summary: dict[str, dict]) -> str | None:
    """'3 clips skipped in 1 task: mine 2 unreadable, 1 silent', or None when none was."""
    parts = []
    total = 0
    for name, d in sorted(summary.items()):
        if d["skipped"]:
            total += sum(d["skipped"].values())
            parts.append(
                name + " " + ", ".join(f"{n} {why}" for why, n in sorted(d["skipped"].items()))
            )
    if not total:
        return None
    return (
        f"{total} clip{'s' * (total != 1)} skipped in {len(parts)} "
        f"task{'s' * (len(parts) != 1)} when prepared: " + "; ".join(parts)
    )


def open_study(spec: StudySpec) -> Study:
    """Create (once) or reopen the study's output folder, databases and MLflow experiment.
    Database servers are reached first: one that cannot be leaves nothing behind."""
    check_storage(spec)
    created = not spec.output.exists()
    try:
        spec.output.mkdir(parents=True, exist_ok=True)
        probe = spec.output / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise AblError(
            f"{spec.source}: output folder {spec.output} is not writable ({e.strerror}); "
            "choose another with `output:` or --output"
        ) from None
    need_mb = float(os.environ.get("ABL_MIN_FREE_MB", MIN_FREE_MB))
    free_mb = shutil.disk_usage(spec.output).free / 2**20
    if free_mb < need_mb:
        if created:
            spec.output.rmdir()  # leave nothing behind
        raise AblError(
            f"{spec.source}: output folder {spec.output} has {free_mb:.0f} MB free, less than "
            f"the {need_mb:.0f} MB a study needs (databases, checkpoints, reports); free some "
            "space or choose another folder with `output:` or --output"
        )
    ledger = Ledger(spec.optuna_url, spec.study)
    engine = make_engine(spec.results_url)
    init_db(engine)
    bank = DataBank(resolve_data_root(spec.baseline.data.cache), spec.baseline.data.tasks)
    spec_json = json.dumps(
        {
            "study": spec.study,
            "design": spec.design,
            "seeds": list(spec.seeds),
            "axes": [dataclasses.asdict(a) for a in spec.axes],
            "configs": [dataclasses.asdict(c) for c in spec.configs],
            "crossed": list(spec.crossed),
            "baseline": dataclasses.asdict(spec.baseline),
            "baseline_settings": baseline_settings(spec),  # each axis' baseline value, as text
            "data": data_summary(spec, bank),  # clips per task, and those preparation skipped
        },
        sort_keys=True,
        default=str,
    )
    study_id = queries.ensure_study(engine, spec.study, spec_json)
    tracker = Tracker(spec.mlflow_uri, spec.study, spec.output / "mlartifacts")
    parent = tracker.study_run(spec.study)
    resolved = spec.output / f"{spec.study}.resolved.json"
    changed = not resolved.is_file() or resolved.read_text() != spec_json
    if changed or not tracker.has_artifact(parent, resolved.name):
        # Once per version of the study, not once per worker that opens it.
        resolved.write_text(spec_json)
        tracker.log_artifact(parent, resolved)  # the validated study, storage URLs left out
    return Study(spec, engine, ledger, tracker, study_id, parent, bank)


def reap_lost(st: Study) -> list[str]:
    """Fail the attempts of workers that stopped beating (killed, machine gone) everywhere
    they are recorded: the Optuna ledger, the results row and the MLflow run. Returns their
    keys (the ledger enqueues them again on the next sync)."""
    lost = st.ledger.reap()
    for run_id in queries.fail_lost(st.engine, st.study_id, [n for _, n in lost], LOST):
        st.tracker.fail_run(run_id, LOST)
    return [k for k, _ in lost]


def check_no_leak(spec: StudySpec, trials: list[TrialSpec]) -> None:
    """Refuse, before anything is written, a cross-validated study whose pretraining corpus
    holds audio of one of its probe tasks: under `probe.protocol: cv` every labelled clip is a
    test clip once. The names are checked when the file is loaded; this compares the prepared
    audio itself (by content hash), so a user's corpus folder that holds a copy of a probe
    task's files is caught too. Tasks not prepared yet are checked once they are."""
    bank = DataBank(resolve_data_root(spec.baseline.data.cache), spec.baseline.data.tasks)
    pairs = {
        (tuple(t.recipe.data.corpus), tuple(t.recipe.probe.tasks))
        for t in trials
        if t.recipe.probe.protocol == "cv"
    }
    digests: dict[str, set[str]] = {}

    def sha1s(name: str) -> set[str]:
        if name not in digests:
            try:
                digests[name] = {c.sha1 for c in bank.task(name).clips}
            except AblError:
                digests[name] = set()
        return digests[name]

    for corpus, probes in sorted(pairs):
        for c in corpus:
            for p in probes:
                shared = sha1s(c) & sha1s(p)
                if shared:
                    raise AblError(
                        f"{spec.source}: data.corpus entry {c!r} holds {len(shared)} clip(s) "
                        f"of probe task {p!r}; under probe.protocol: cv every labelled clip is "
                        "a test clip once, so remove them from the corpus or use "
                        "probe.protocol: split"
                    )
