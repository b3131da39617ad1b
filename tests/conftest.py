"""Shared fixtures: the real prepared data cache and small experiments files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model.data.datasets import PreparedTask, prepare_task, resolve_data_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data cache ($ABL_DATA or ~/.cache/abl), as the README's set-up fills it."""
    return resolve_data_root()


@pytest.fixture(scope="session")
def env_sfx(data_root: Path) -> PreparedTask:
    """0 A.D. effects, prepared on first use (seconds) from the installed Debian package."""
    return prepare_task("env-sfx", data_root, log=lambda _msg: None)


@pytest.fixture
def tiny_experiments(tmp_path: Path, env_sfx: PreparedTask):
    """A factory: the repo's experiments.yaml shrunk to seconds (tiny model, few steps, a
    real slice of the prepared audio), written to tmp_path."""
    return lambda **overrides: _tiny_experiments(tmp_path, **overrides)


def _tiny_experiments(tmp_path: Path, **overrides) -> Path:
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    spec["study"] = "tiny"
    spec["output"] = str(tmp_path / "out")
    # One axis, one seed, one factor at a time, whatever the repo's default study is.
    spec["design"] = "ofat"
    spec["seeds"] = [0]
    spec["axes"] = {"masking": {"path": "mask.strategy", "values": ["unstructured", "time"]}}
    spec.pop("crossed", None)
    b = spec["baseline"]
    b["data"]["max_clips_per_class"] = 4
    b["data"]["corpus"] = ["env-sfx"]
    b["probe"]["tasks"] = ["env-sfx"]
    b["encoder"].update(depth=1, width=32, heads=2)
    b["predictor"].update(depth=1, width=16, heads=2)
    b["train"].update(steps=3, batch_size=4, warmup_steps=1, log_every=1, eval_every=1)
    b["probe"]["c_grid"] = [1.0]
    # Pretraining on a probe task's clips is allowed only with its fixed test split (under
    # cross-validation every clip is a test clip once): the tiny study probes what it trains on.
    b["probe"]["protocol"] = "split"
    for k, v in overrides.items():
        spec[k] = v
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
