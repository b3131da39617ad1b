"""Time to render a study's reports from its results database, against the 10 s target.

Generates (not timed) a 500-trial, 4-task results database in SQLite, written through
db.queries as the runner writes one, with training curves, then times `render_reports`: every
axis page and the overview, from the query to the last file written. Two shapes of study:

- factorial: 5 x 5 x 4 cells x 5 seeds (three interaction maps, importance over 100 configs);
- ofat: 11 axes of 10 values around a baseline, x 5 seeds (100 configurations, 11 pages).

    .venv/bin/python -m bench.report_render
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import Figure, default_out, keep
from bench.synthetic import Synthetic, generate
from db.engine import make_engine
from reports.study import render_reports

TARGET_S = 10.0


def studies() -> dict[str, Synthetic]:
    seeds = (0, 1, 2, 3, 4)
    factorial = Synthetic(
        study="factorial-500",
        design="factorial",
        axes={
            "masking": ["unstructured", "time", "frequency", "multiblock", "curriculum"],
            "mask.ratio": ["0.6", "0.4", "0.5", "0.7", "0.8"],
            "target.norm": ["layer", "none", "instance", "batch"],
        },
        seeds=seeds,
    )
    ofat = Synthetic(
        study="ofat-500",
        design="ofat",
        axes={f"axis{i:02d}": [f"v{j}" for j in range(10)] for i in range(11)},
        seeds=seeds,
    )
    return {"factorial": factorial, "ofat": ofat}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(default_out("report_render")), help="'' to keep nothing")
    args = ap.parse_args()
    rec: dict[str, object] = {"target_s": TARGET_S}
    with tempfile.TemporaryDirectory() as tmp:
        for name, syn in studies().items():
            engine = make_engine(f"sqlite:///{Path(tmp) / f'{name}.db'}")
            t0 = time.perf_counter()
            generate(engine, syn)
            gen = time.perf_counter() - t0
            trials = len(syn.configs()) * len(syn.seeds)
            t0 = time.perf_counter()
            paths = render_reports(engine, syn.study, Path(tmp) / name)
            render = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in paths) / 1e6
            rec[name] = {
                "trials": trials,
                "tasks": len(syn.tasks),
                "pages": len(paths),
                "render_s": round(render, 2),
                "ratio_to_target": round(render / TARGET_S, 3),
                "mb_written": round(size, 1),
                "generate_s": round(gen, 1),
            }
            print(
                f"{name}: {trials} trials x {len(syn.tasks)} tasks -> {len(paths)} pages "
                f"({size:.0f} MB) in {render:.2f} s = {render / TARGET_S:.2f} of the "
                f"{TARGET_S:.0f} s target"
            )
    figures = [
        Figure(f"render {name}, 500 trials", rec[name]["render_s"], TARGET_S, "s", True)
        for name in ("factorial", "ofat")
    ]
    keep("report_render", figures, rec, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
