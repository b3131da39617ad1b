"""Local workers: 2 processes x 1 thread against 1 process x 2 threads, on the default study.

Runs the same trials of the experiments file (by default its first two, on its first seed, at
the file's own recipe and budget: two trials keep both workers busy from start to end) once per
layout, each into a fresh output folder with SQLite
storage, and prints trials per hour for each. The references (random-init and log-mel, run once
per study) are timed apart and left out of the rate. The faster layout is what `abl run` uses
when no `-j` is given.

    .venv/bin/python -m bench.workers                # about 18 min on a 2-core machine
    .venv/bin/python -m bench.workers --steps 100    # a quicker look (not the kept figure)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import Figure, default_out, keep
from db import queries
from db.engine import make_engine
from orchestrator.grid import expand
from orchestrator.spec import load_spec, setting_text
from orchestrator.workers import run_study

ROOT = Path(__file__).resolve().parents[1]


def run_layout(spec_doc: dict, jobs: int, folder: Path) -> dict[str, float]:
    spec_doc = dict(spec_doc, output=str(folder / "out"))
    exp = folder / "experiments.yaml"
    exp.write_text(yaml.safe_dump(spec_doc))
    t0 = time.perf_counter()
    summary = run_study(load_spec(exp), log=lambda _m: None, jobs=jobs)
    total = time.perf_counter() - t0
    engine = make_engine(f"sqlite:///{folder / 'out' / 'results.db'}")
    df = queries.results_frame(engine)
    engine.dispose()
    refs = df[df["axis"] == "reference"].groupby("key")["wall_s"].first()
    # References run first (split between the workers when there are two): their share of
    # the wall clock is their summed time over the workers that ran them.
    ref_wall = float(refs.sum()) / jobs
    trials_s = total - ref_wall
    return {
        "trials": summary.ran,
        "failed": summary.failed,
        "total_s": round(total, 1),
        "references_s": round(ref_wall, 1),
        "trials_s": round(trials_s, 1),
        "trials_per_hour": round(summary.ran / trials_s * 3600, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the first")
    ap.add_argument("--steps", type=int, default=None, help="default: the file's budget")
    ap.add_argument("--trials", type=int, default=2, help="the study's first N cells")
    ap.add_argument("--out", default=str(default_out("workers")), help="'' to keep nothing")
    args = ap.parse_args()
    doc = yaml.safe_load(Path(args.experiments).read_text())
    doc["seeds"] = args.seeds or doc["seeds"][:1]
    if args.steps:
        doc["baseline"]["train"]["steps"] = args.steps
    # The first N cells: each axis keeps the values those cells use.
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "experiments.yaml"
        f.write_text(yaml.safe_dump(doc))
        first = [t for t in expand(load_spec(f)) if t.seed == doc["seeds"][0]][: args.trials]
    spec = load_spec(args.experiments)
    for axis in spec.axes:
        used = {t.settings[axis.name] for t in first}
        body = doc["axes"][axis.name]
        values = [v for v in (body["values"] if isinstance(body, dict) else body)]
        kept = [v for v, a in zip(values, axis.values, strict=True) if setting_text(a) in used]
        if isinstance(body, dict):
            body["values"] = kept
        else:
            doc["axes"][axis.name] = kept
    cores = os.cpu_count() or 1
    layouts = {f"1 worker x {cores} threads": 1, f"{cores} workers x 1 thread": cores}
    details: dict[str, object] = {
        "seeds": doc["seeds"],
        "steps": doc["baseline"]["train"]["steps"],
        "cells": [t.setting for t in first],
    }
    for name, jobs in layouts.items():
        with tempfile.TemporaryDirectory() as tmp:
            details[name] = r = run_layout(doc, jobs, Path(tmp))
        print(
            f"{name}: {r['trials']} trials in {r['trials_s']:.0f} s "
            f"({r['trials_per_hour']:.2f} trials/hour; references {r['references_s']:.0f} s)"
        )
    single, multi = (details[n]["trials_per_hour"] for n in layouts)
    faster = max(layouts, key=lambda n: details[n]["trials_per_hour"])
    details["faster"] = faster
    figures = [
        Figure(
            f"trials/hour, {cores} workers x 1 thread over 1 worker x {cores} threads",
            multi / single,
            1.0,
            "",
            False,
            f"faster: {faster}",
        )
    ]
    keep("workers", figures, details, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
