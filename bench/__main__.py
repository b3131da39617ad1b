"""Every benchmark, one after the other, then every figure against its target.

    .venv/bin/python -m bench                       # all of them: about 75 min on 2 cores
    .venv/bin/python -m bench --skip study workers  # the quick ones: about 5 min
    .venv/bin/python -m bench --summary             # the kept figures only; runs nothing

Each benchmark appends its record to bench/results/<name>.jsonl; the summary prints the latest
record of each, with the machine and the date it was measured on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import RESULTS

# In order: quick ones first; the two that run real studies last.
BENCHES = {
    "throughput": "training step against the matmul peak, JEPA overhead, input pipeline",
    "overhead": "orchestration a trial",
    "probe_cost": "probes against pretraining",
    "report_render": "rendering a 500-trial study",
    "workers": "2 workers x 1 thread against 1 worker x 2 threads",
    "study": "the default study end to end",
}


def latest(name: str) -> dict | None:
    path = RESULTS / f"{name}.jsonl"
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        rec = json.loads(line)
        if "figures" in rec:
            return rec
    return None


def summary() -> int:
    """Print the kept figures; the number not met (or missing)."""
    missing = 0
    for name in BENCHES:
        rec = latest(name)
        if rec is None:
            print(f"{name}: no record yet (run: python -m bench.{name})")
            missing += 1
            continue
        m = rec["machine"]
        where = f"{m['cpu']}, {m['threads']} threads" + (f", {m['gpu']}" if m.get("gpu") else "")
        print(f"{name} ({rec['when']} UTC on {where}):")
        for f in rec["figures"]:
            bound = "<=" if f["at_most"] else ">="
            ratio = f"; ratio {f['ratio']:.2f}" if f["ratio"] is not None else ""
            note = f" [{f['note']}]" if f["note"] else ""
            verdict = "met" if f["met"] else "NOT MET"
            print(
                f"  {f['name']}: {f['value']:.4g} {f['unit']} (target {bound} {f['target']:.4g}"
                f"{ratio}) {verdict}{note}"
            )
            missing += not f["met"]
    return missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these")
    ap.add_argument(
        "--skip", nargs="+", choices=list(BENCHES), default=[], help="run all but these"
    )
    ap.add_argument("--summary", action="store_true", help="print the kept figures; run nothing")
    args = ap.parse_args()
    if not args.summary:
        for name in args.only or [b for b in BENCHES if b not in args.skip]:
            print(f"== {name}: {BENCHES[name]}", flush=True)
            subprocess.run([sys.executable, "-m", f"bench.{name}"], check=True)
    print("\n== kept figures")
    sys.exit(1 if summary() else 0)


if __name__ == "__main__":
    main()
