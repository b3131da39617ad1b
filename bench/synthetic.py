"""A generated results database: a study of any size written through db.queries, as the
runner writes one, with scores from a known model (effects per axis value plus seed noise).

For the report's speed benchmark and for tests of the report pages; never a real result.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine

from db import queries
from db.engine import init_db

TASKS = ("env-sfx", "music-family", "speech-speaker", "speech-digits")


@dataclass
class Synthetic:
    """A study to generate. `axes`: name -> values, the first value being the baseline's."""

    study: str = "synthetic"
    design: str = "ofat"  # ofat | factorial
    axes: dict[str, list[str]] = field(
        default_factory=lambda: {"masking": ["unstructured", "time", "multiblock"]}
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = TASKS
    noise: float = 1.5  # points, per seed and task
    steps: int = 1000
    curve_points: int = 200
    effect_seed: int = 0
    # Known effects instead of random ones: (axis, value) -> points on every task, and
    # (axis, value, axis, value) -> points added when a cell holds both values.
    effects: dict[tuple[str, str], float] | None = None
    interaction: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    # Trials by (config index, seed) to leave out ("not started"), fail or leave running.
    fail: tuple[tuple[int, int], ...] = ()
    running: tuple[tuple[int, int], ...] = ()
    skip: tuple[tuple[int, int], ...] = ()

    def configs(self) -> list[tuple[str, str, dict[str, str]]]:
        """(axis, setting, settings) per configuration, the baseline first (as the grid)."""
        base = {a: v[0] for a, v in self.axes.items()}
        if self.design == "factorial":
            names = list(self.axes)
            out = []
            for combo in itertools.product(*self.axes.values()):
                settings = dict(zip(names, combo, strict=True))
                text = ",".join(f"{a}={v}" for a, v in settings.items())
                out.append(("factorial", text, settings))
            return out
        out = [("baseline", "baseline", base)]
        for a, values in self.axes.items():
            out += [(a, v, {**base, a: v}) for v in values[1:]]
        return out

    def expected(self) -> list[dict]:
        return [
            {"key": key(self, i, seed), "seed": seed, "axis": a, "setting": s, "settings": st}
            for seed in self.seeds
            for i, (a, s, st) in enumerate(self.configs())
        ]


def key(syn: Synthetic, config: int, seed: int) -> str:
    return f"{config:05d}{seed:03d}{syn.study}".ljust(20, "0")[:20]


def generate(engine: Engine, syn: Synthetic) -> None:
    """Write the study, its references and its trials (metrics and curves) to `engine`."""
    init_db(engine)
    rng = np.random.default_rng(syn.effect_seed)
    base_score = {t: 40 + 10 * i for i, t in enumerate(syn.tasks)}
    if syn.effects is None:
        effect = {
            (a, v): (0.0 if j == 0 else rng.normal(0, 3), rng.normal(0, 1.5, len(syn.tasks)))
            for a, values in syn.axes.items()
            for j, v in enumerate(values)
        }
    else:
        zero = np.zeros(len(syn.tasks))
        effect = {
            (a, v): (syn.effects.get((a, v), 0.0), zero) for a, vs in syn.axes.items() for v in vs
        }
    spec = {
        "study": syn.study,
        "design": syn.design,
        "seeds": list(syn.seeds),
        "axes": [{"name": a, "path": f"x.{a}", "values": v} for a, v in syn.axes.items()],
        "crossed": list(syn.axes) if syn.design == "factorial" else [],
        "configs": [],
        "baseline": {"probe": {"tasks": list(syn.tasks)}},
        "baseline_settings": {a: v[0] for a, v in syn.axes.items()},
    }
    sid = queries.ensure_study(engine, syn.study, json.dumps(spec))
    for ref, level in (("random-init", -8.0), ("logmel-stats", -10.0)):
        for seed in syn.seeds[:2]:
            tid = queries.start_trial(
                engine, sid, f"ref-{ref}-{seed}", seed, "reference", ref, {}, {}, "synthetic"
            )
            m = {(t, "accuracy"): (base_score[t] + level) / 100 for t in syn.tasks}
            queries.finish_trial(engine, tid, m, 1.0, None)
    noise = np.random.default_rng(syn.effect_seed + 1)
    for seed in syn.seeds:
        seed_shift = noise.normal(0, syn.noise, len(syn.tasks))
        for i, (axis, setting, settings) in enumerate(syn.configs()):
            if (i, seed) in syn.skip:
                continue
            k = key(syn, i, seed)
            tid = queries.start_trial(
                engine, sid, k, seed, axis, setting, settings, {}, "synthetic"
            )
            if (i, seed) in syn.running:
                continue
            if (i, seed) in syn.fail:
                queries.finish_trial(engine, tid, {}, 5.0, None, error="loss diverged at step 40")
                continue
            shift = (
                sum(effect[(a, v)][0] + effect[(a, v)][1] for a, v in settings.items()) + seed_shift
            )
            shift = shift + sum(
                pts
                for (a, va, b, vb), pts in syn.interaction.items()
                if settings.get(a) == va and settings.get(b) == vb
            )
            acc = [
                base_score[t] + shift[j] + noise.normal(0, syn.noise)
                for j, t in enumerate(syn.tasks)
            ]
            metrics = {}
            for t, a in zip(syn.tasks, acc, strict=True):
                metrics[(t, "accuracy")] = float(np.clip(a, 0, 100)) / 100
                metrics[(t, "macro_f1")] = float(np.clip(a - 3, 0, 100)) / 100
            wall = 240 + noise.normal(0, 10)
            metrics.update(
                {
                    ("train", "train_s"): wall - 30,
                    ("train", "probe_s"): 26.0,
                    ("train", "data_s"): 1.5,
                    ("train", "flops_per_step"): 17.7e9,
                    ("train", "gflops_per_s"): 85.0,
                }
            )
            steps = np.linspace(1, syn.steps, syn.curve_points).astype(int)
            loss = 1.0 / np.sqrt(steps) + 0.01 * noise.random(len(steps))
            curves = [("loss", int(s), float(v)) for s, v in zip(steps, loss, strict=True)]
            curves += [
                (f"eval.{syn.tasks[0]}.knn", int(s), float(acc[0] / 100 * s / syn.steps))
                for s in steps[:: max(1, len(steps) // 4)]
            ]
            queries.finish_trial(engine, tid, metrics, wall, None, curves=curves)
