"""What every benchmark shares: the machine it ran on, a figure against its target, and the
kept record (one JSON line per run, appended to bench/results/<name>.jsonl)."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.precision import cpu_has_bf16

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "native_bf16": cpu_has_bf16(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


@dataclass(frozen=True)
class Figure:
    """A measured value against its target. `at_most`: the target is a ceiling, else a floor.
    The ratio is value / target, so at most 1 meets a ceiling and at least 1 meets a floor."""

    name: str
    value: float
    target: float
    unit: str
    at_most: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.target if self.target else float("nan")

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    def line(self) -> str:
        bound = "<=" if self.at_most else ">="
        verdict = "met" if self.met else "NOT MET"
        ratio = f"; ratio {self.ratio:.2f}" if self.target else ""
        text = (
            f"{self.name}: {self.value:.4g} {self.unit} (target {bound} {self.target:.4g}"
            f"{ratio}) {verdict}"
        )
        return text + (f" [{self.note}]" if self.note else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": round(float(self.value), 4),
            "target": self.target,
            "unit": self.unit,
            "at_most": self.at_most,
            "ratio": round(float(self.ratio), 3) if self.target else None,
            "met": bool(self.met),
            "note": self.note,
        }


def keep(name: str, figures: list[Figure], details: dict[str, object], out: Path | None) -> None:
    """Print every figure and append the run's record to `out` (bench/results/<name>.jsonl
    unless told otherwise; nothing when out is None)."""
    for f in figures:
        print(f.line())
    if out is None:
        return
    rec = {
        "bench": name,
        "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": machine(),
        "figures": [f.as_dict() for f in figures],
        "details": details,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(rec, default=float) + "\n")


def default_out(name: str) -> Path:
    return RESULTS / f"{name}.jsonl"
