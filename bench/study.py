"""The default study, end to end: `abl run experiments.yaml` as a researcher runs it.

Runs the experiments file (by default the repository's) into a fresh output folder with the
default worker layout and a warm feature cache, then renders its reports, and prints the wall
time against the 30-minute target with its split: opening data and waiting for batches,
training, probes, the references, the report, and orchestration (everything else: process
starts, claims, MLflow, SQL and any worker idle at the end; worker-seconds are divided by the
number of workers). It also prints whether the run shows real learning: the baseline cell's
task-averaged accuracy against the random-init encoder of the same seeds.

    .venv/bin/python -m bench.study                  # about 30 min on a 2-core machine
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import Figure, default_out, keep
from db import queries
from db.engine import make_engine
from orchestrator.grid import baseline_settings, expand
from orchestrator.spec import load_spec
from orchestrator.workers import default_jobs

ROOT = Path(__file__).resolve().parents[1]
TARGET_MIN = 30.0


def abl(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("abl")), *args], check=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--out", default=str(default_out("study")), help="'' to keep nothing")
    args = ap.parse_args()
    spec = load_spec(args.experiments)
    jobs = default_jobs()
    with tempfile.TemporaryDirectory() as tmp:
        doc = yaml.safe_load(Path(args.experiments).read_text())
        doc["output"] = str(Path(tmp) / "out")
        exp = Path(tmp) / "experiments.yaml"
        exp.write_text(yaml.safe_dump(doc))
        run_s = abl("run", str(exp), "--no-report")
        report_s = abl("report", str(exp))
        engine = make_engine(f"sqlite:///{Path(tmp) / 'out' / 'results.db'}")
        df = queries.results_frame(engine, spec.study)
        engine.dispose()
    wall = run_s + report_s
    refs = df[df["axis"] == "reference"]
    trials = df[df["axis"] != "reference"]
    per = trials[trials["task"] == "train"].pivot_table(
        index="key", columns="metric", values="value"
    )
    split = {
        "data": float(per["data_s"].sum()) / jobs,
        "training": float(per["train_s"].sum()) / jobs,
        "probes": float(per["probe_s"].sum()) / jobs,
        "references": float(refs.groupby("key")["wall_s"].first().sum()) / jobs,
    }
    split["report"] = report_s
    split["orchestration"] = wall - sum(split.values())
    # Real learning: the baseline cell against the random-init encoder, seed by seed.
    base = baseline_settings(spec)
    base_keys = {t.key for t in expand(spec) if t.settings == base}
    acc = df[df["metric"] == "accuracy"]
    trained = acc[acc["key"].isin(base_keys)].groupby("seed")["value"].mean()
    random = acc[acc["setting"] == "random-init"].groupby("seed")["value"].mean()
    margin = float((trained - random).mean() * 100)
    details = {
        "jobs": jobs,
        "trials": int(per.shape[0]),
        "wall_min": round(wall / 60, 2),
        "split_s": {k: round(v, 1) for k, v in split.items()},
        "samples_per_s": round(float(per["samples_per_s"].mean()), 1),
        "baseline_over_random_points": round(margin, 2),
        "by_seed_points": {int(s): round(float(v) * 100, 2) for s, v in (trained - random).items()},
    }
    shares = ", ".join(f"{k} {v / 60:.1f} min ({v / wall:.0%})" for k, v in split.items())
    print(f"default study: {details['trials']} trials on {jobs} worker(s) in {wall / 60:.1f} min")
    print(f"  split: {shares}")
    print(f"  baseline over random-init: {margin:+.2f} points (task average, mean over seeds)")
    figures = [
        Figure("default study wall time", wall / 60, TARGET_MIN, "min", True),
        Figure("baseline over random-init", margin, 0.0, "points", False, "real learning"),
    ]
    keep("study", figures, details, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
