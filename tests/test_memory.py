"""A recipe too large for the machine is refused in one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from model.errors import AblError
from model.jepa import JEPA
from model.memory import check_fits, machine_bytes, training_floor
from orchestrator.cli import app
from orchestrator.spec import load_spec, with_value

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CPU = torch.device("cpu")


def _file(tmp_path: Path, **encoder) -> Path:
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    spec["baseline"]["encoder"].update(encoder)
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_the_floor_counts_the_models_parameters_exactly():
    recipe = load_spec(ROOT / "experiments.yaml").baseline
    model = JEPA(recipe)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trained > frozen > 0  # the EMA copy of the encoder; the predictor trains too
    assert training_floor(recipe) == 16 * trained + 4 * frozen
    # A wider encoder costs more.
    assert training_floor(with_value(recipe, "encoder.width", 384)) > training_floor(recipe)


def test_a_model_that_cannot_fit_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    # 64 blocks of width 8192 (the largest the file allows): about a terabyte of weights,
    # gradients and AdamW state.
    path = _file(tmp_path, width=8192, depth=64, heads=64)
    recipe = load_spec(path).baseline
    assert training_floor(recipe) > machine_bytes(CPU)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        result = runner.invoke(app, ["run", str(path), "--output", str(out), *extra])
        assert result.exit_code == 2, result.output
        line = result.output
        assert line.count("\n") == 1 and line.startswith("abl: error:")
        assert str(path) in line and "the baseline" in line
        assert "GiB" in line and "encoder.width" in line
        assert not out.exists()


def test_workers_that_fit_one_at_a_time_are_told_to_run_fewer(tmp_path):
    have = machine_bytes(CPU)
    recipe = load_spec(ROOT / "experiments.yaml").baseline
    # The narrowest 12-block encoder whose floor is between 55 % and 100 % of this machine.
    width = None
    for w in range(192, 8193, 192):
        r = with_value(with_value(recipe, "encoder.depth", 12), "encoder.width", w)
        if 0.55 * have < training_floor(r) < have:
            width = w
            break
    assert width is not None, "no width lands between 55 % and 100 % of this machine"
    path = _file(tmp_path, width=width, depth=12, heads=3)
    result = runner.invoke(app, ["run", str(path), "-j", "2", "--dry-run", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "2 workers training at once" in result.output and "fewer --jobs" in result.output
    result = runner.invoke(app, ["run", str(path), "-j", "1", "--dry-run", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output


def test_check_fits_names_what_it_was_given():
    recipe = load_spec(ROOT / "experiments.yaml").baseline
    check_fits(recipe, "x", CPU)  # the default recipe needs about 0.1 GiB
    big = with_value(with_value(recipe, "encoder.depth", 64), "encoder.width", 8192)
    big = with_value(big, "encoder.heads", 64)
    with pytest.raises(AblError, match="^masking=time seed=0: training needs at least"):
        check_fits(big, "masking=time seed=0", CPU)


def test_a_worker_too_small_for_a_trial_hands_it_back(tmp_path, tiny_experiments, monkeypatch):
    """A study enqueued where its cells fit, met by a worker that cannot hold them (a smaller
    machine): the worker refuses in one line and releases the trial, not counting an
    attempt, and nothing is recorded as run; a worker that can hold it runs it."""
    import sqlite3

    import optuna

    import model.memory
    import orchestrator.cli

    exp = tiny_experiments(axes={"masking": {"path": "mask.strategy", "values": ["time"]}})
    out = tmp_path / "out"
    # The coordinator's machine holds the study (its check passes); this worker's holds
    # nothing: the machine's memory is the one thing faked.
    monkeypatch.setattr(orchestrator.cli, "_check_memory", lambda *a: None)
    monkeypatch.setattr(model.memory, "machine_bytes", lambda device: 1)
    res = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("abl: error:") and "training needs at least" in last
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    tried = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(tried) == 1 and tried[0].user_attrs.get("released")
    assert "training needs at least" in tried[0].user_attrs["error"]
    db = sqlite3.connect(out / "results.db")
    rows = db.execute("select axis, setting from trials").fetchall()
    assert rows and ("masking", "time") not in rows, rows  # the references ran, not the trial
    monkeypatch.undo()
    res = runner.invoke(app, ["run", "-j", "1", str(exp), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "failed 0" in res.output
    rows = db.execute("select axis, setting, status from trials").fetchall()
    assert ("masking", "time", "done") in rows, rows
