"""`abl run --dry-run --estimate`: each cell's training time, timed on this machine, and the
study's over its workers. Real tiny models are timed; only the size past which a cell is not
timed, and where bf16 is native, are set by the tests."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from model.config import EncoderConfig, FrontendConfig, PredictorConfig, RecipeConfig, TrainConfig
from orchestrator import estimate
from orchestrator.cli import app
from orchestrator.estimate import estimate_lines, makespan, time_cells
from orchestrator.spec import with_value

runner = CliRunner()
CPU = torch.device("cpu")
TINY = RecipeConfig(
    frontend=FrontendConfig(frames=64),
    encoder=EncoderConfig(depth=1, width=32, heads=2),
    predictor=PredictorConfig(depth=1, width=16, heads=2),
    train=TrainConfig(steps=100, batch_size=4, warmup_steps=1, precision="fp32"),
)
WIDE = with_value(TINY, "encoder.width", 64)


def test_makespan_hands_each_trial_to_the_first_free_worker():
    assert makespan([3, 3, 3], 2) == 6
    assert makespan([5, 1, 1, 1], 2) == 5  # the three short ones share the other worker
    assert makespan([2, 2], 8) == 2 and makespan([], 2) == 0


def test_each_cell_is_timed_and_a_large_one_is_estimated_at_the_timed_rate(monkeypatch):
    small, wide = time_cells([TINY, WIDE], CPU, threads=1)
    assert small.timed and wide.timed and small.step_s > 0 and wide.step_s > 0
    assert small.train_s == pytest.approx(100 * small.step_s)
    assert wide.flops > small.flops and small.precision.startswith("fp32/")
    # Past the size limit the wide cell is not run: its FLOPs at the small cell's rate.
    monkeypatch.setattr(estimate, "MAX_TIMED_FLOPS", (small.flops + wide.flops) / 2)
    small, wide = time_cells([TINY, WIDE], CPU, threads=1)
    assert small.timed and not wide.timed
    assert wide.step_s == pytest.approx(small.step_s * wide.flops / small.flops)
    lines = estimate_lines([("baseline", TINY), ("w=64", WIDE)], [0, 1, 0, 1], CPU, 2, 1)
    assert "w=64:" in lines[2] and "not timed: at the timed cells' rate" in lines[2]
    assert lines[-1].startswith("  4 trials on 2 worker(s): about")
    # Nothing timed, nothing to take a rate from: no estimate, and no total.
    monkeypatch.setattr(estimate, "MAX_TIMED_FLOPS", 1.0)
    lines = estimate_lines([("baseline", TINY)], [0], CPU, 1, 1)
    assert "too large to time here" in lines[1] and len(lines) == 2


def test_bf16_where_it_is_emulated_is_not_timed(monkeypatch):
    monkeypatch.setattr(estimate, "native_bf16", lambda device: False)
    (cell,) = time_cells([with_value(TINY, "train.precision", "bf16")], CPU, threads=1)
    assert cell.emulated and cell.step_s is None
    lines = estimate_lines(
        [("baseline", with_value(TINY, "train.precision", "bf16"))], [0], CPU, 1, 1
    )
    assert "bf16 emulated here" in lines[1] and len(lines) == 2


def test_abl_run_dry_run_estimate_prints_the_study_time(tiny_experiments):
    exp = tiny_experiments()
    out = exp.parent / "out"
    res = runner.invoke(app, ["run", str(exp), "--dry-run", "--estimate", "-j", "2"])
    assert res.exit_code == 0, res.output
    assert "training time on this machine (" in res.output  # the GPU, or a worker's threads
    assert "  baseline: " in res.output and "  masking=time: " in res.output
    assert "2 trials on 2 worker(s): about" in res.output
    assert not out.exists()  # a dry run writes nothing
    plain = runner.invoke(app, ["run", str(exp), "--dry-run"])
    assert plain.exit_code == 0 and "training time" not in plain.output
    alone = runner.invoke(app, ["run", str(exp), "--estimate"])
    assert alone.exit_code == 2 and alone.output.count("\n") == 1
    assert "--estimate" in alone.output and "add --dry-run" in alone.output
    assert not out.exists()
