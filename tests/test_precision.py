"""The precision and attention kernel of training: chosen by timing, kept per machine and shape,
and `train.bf16` from earlier files and checkpoints read as `train.precision`."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import yaml

from model.config import EncoderConfig, RecipeConfig, recipe_from_dict
from model.errors import AblError
from model.precision import Choice, candidates, choose, fastest, use_attention
from model.vit import ViT
from orchestrator.spec import load_spec, with_value
from tests.conftest import ROOT

CPU = torch.device("cpu")
RECIPE = RecipeConfig()


def fake_timer(seconds: dict[tuple[str, str], float], calls: list | None = None):
    """A step timer that answers from a table instead of timing anything."""

    def time_step(c: Choice) -> float:
        if calls is not None:
            calls.append(c)
        return seconds[(c.precision, c.attention)]

    return time_step


BF16_FASTER = {
    ("fp32", "explicit"): 0.30,
    ("fp32", "sdpa"): 0.28,
    ("bf16", "explicit"): 0.17,
    ("bf16", "sdpa"): 0.35,
}
FP32_FASTER = {**BF16_FASTER, ("bf16", "explicit"): 0.29}


@pytest.mark.parametrize(
    ("seconds", "want"),
    [(BF16_FASTER, Choice("bf16", "explicit")), (FP32_FASTER, Choice("fp32", "sdpa"))],
)
def test_auto_picks_the_faster_of_the_timed_candidates(tmp_path, seconds, want):
    calls: list[Choice] = []
    got = choose("auto", RECIPE, CPU, fake_timer(seconds, calls), tmp_path, native=True)
    assert got == want
    assert {c.precision for c in calls} == {"fp32", "bf16"}


def test_rounds_alternate_and_each_candidate_keeps_its_best_round():
    a, b = Choice("fp32", "sdpa"), Choice("bf16", "explicit")
    # b is slower in its first round (a load that came and went), faster in the others.
    answers = iter([0.20, 0.50, 0.21, 0.15, 0.22, 0.16])
    calls: list[Choice] = []

    def time_step(c: Choice) -> float:
        calls.append(c)
        return next(answers)

    best, times = fastest([a, b], time_step, rounds=3)
    assert calls == [a, b, a, b, a, b]
    assert best == b and times == {a: 0.20, b: 0.15}


def test_a_choice_is_measured_once_per_machine_and_shape(tmp_path):
    first = choose("auto", RECIPE, CPU, fake_timer(BF16_FASTER), tmp_path, native=True)

    def must_not_time(c: Choice) -> float:
        raise AssertionError("timed again although the choice was kept")

    assert choose("auto", RECIPE, CPU, must_not_time, tmp_path, native=True) == first
    # Another shape is measured on its own.
    wider = with_value(with_value(RECIPE, "encoder.width", 384), "encoder.heads", 6)
    assert choose("auto", wider, CPU, fake_timer(FP32_FASTER), tmp_path, native=True) == Choice(
        "fp32", "sdpa"
    )
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_choice_kept_by_another_process_meanwhile_wins(tmp_path):
    """Two workers timing the same shape at once: both train with the first one kept."""
    other: list[Choice] = []

    def slow_timer(c: Choice) -> float:
        if not other:  # another worker finishes its measurement while this one times
            other.append(choose("auto", RECIPE, CPU, fake_timer(FP32_FASTER), tmp_path, True))
        return BF16_FASTER[(c.precision, c.attention)]

    assert choose("auto", RECIPE, CPU, slow_timer, tmp_path, native=True) == other[0]
    assert other[0] == Choice("fp32", "sdpa")
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("*.json")]


def test_without_native_bf16_auto_is_fp32_and_times_no_bf16(tmp_path):
    calls: list[Choice] = []
    got = choose("auto", RECIPE, CPU, fake_timer(BF16_FASTER, calls), tmp_path, native=False)
    assert got.precision == "fp32"
    assert calls and all(c.precision == "fp32" for c in calls)  # only the kernel is timed
    assert candidates("auto", native=False) == [Choice("fp32", "explicit"), Choice("fp32", "sdpa")]


def test_a_fixed_precision_is_kept_and_emulated_bf16_is_not_timed(tmp_path):
    calls: list[Choice] = []
    got = choose("fp32", RECIPE, CPU, fake_timer(BF16_FASTER, calls), tmp_path, native=True)
    assert got == Choice("fp32", "sdpa") and {c.precision for c in calls} == {"fp32"}

    def must_not_time(c: Choice) -> float:
        raise AssertionError("emulated bf16 was timed")

    assert choose("bf16", RECIPE, CPU, must_not_time, tmp_path, native=False).precision == "bf16"


def test_a_resumed_trial_keeps_its_precision_where_the_machine_runs_it(tmp_path):
    calls: list[Choice] = []
    timer = fake_timer(BF16_FASTER, calls)
    assert choose("auto", RECIPE, CPU, timer, tmp_path, native=True, keep="fp32").precision == (
        "fp32"
    )
    assert {c.precision for c in calls} == {"fp32"}
    # A bf16 trial resumed where bf16 is emulated goes on in fp32 (the caller records both).
    assert choose("auto", RECIPE, CPU, timer, tmp_path, native=False, keep="bf16").precision == (
        "fp32"
    )


def test_an_unreadable_kept_choice_is_measured_again(tmp_path):
    choose("auto", RECIPE, CPU, fake_timer(BF16_FASTER), tmp_path, native=True)
    (kept,) = tmp_path.glob("*.json")
    kept.write_text("{not json")
    got = choose("auto", RECIPE, CPU, fake_timer(FP32_FASTER), tmp_path, native=True)
    assert got == Choice("fp32", "sdpa")


def test_both_attention_kernels_compute_the_same_function():
    vit = ViT(EncoderConfig(depth=2, width=32, heads=2), 80, 64).eval()
    x = torch.randn(3, 1, 80, 64)
    use_attention(vit, "sdpa")
    fused = vit(x)
    use_attention(vit, "explicit")
    torch.testing.assert_close(vit(x), fused, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        use_attention(vit, "flash")


def _experiments(tmp_path, train: dict):
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    spec["output"] = str(tmp_path / "out")
    spec["baseline"]["train"].pop("precision", None)
    spec["baseline"]["train"].update(train)
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(("old", "new"), [(True, "auto"), (False, "fp32")])
def test_train_bf16_in_an_experiments_file_is_migrated_and_said(tmp_path, old, new):
    path = _experiments(tmp_path, {"bf16": old})
    with pytest.warns(FutureWarning, match=f"train.bf16: {str(old).lower()} is read as .*{new}"):
        spec = load_spec(path)
    assert spec.baseline.train.precision == new


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"bf16": "yes"}, "bf16 must be true or false"),
        ({"bf16": True, "precision": "fp32"}, "both set"),
        ({"precision": "fp16"}, "train.precision = 'fp16'; use one of auto, fp32, bf16"),
    ],
)
def test_bad_precision_settings_are_refused(tmp_path, train, message):
    with warnings.catch_warnings(), pytest.raises(AblError, match=message):
        warnings.simplefilter("ignore", FutureWarning)
        load_spec(_experiments(tmp_path, train))


@pytest.mark.parametrize(("old", "new"), [(True, "auto"), (False, "fp32")])
def test_a_stored_config_with_train_bf16_is_migrated(old, new):
    stored = dataclasses.asdict(RECIPE)
    stored["train"].pop("precision")
    stored["train"]["bf16"] = old
    with pytest.warns(FutureWarning, match=f"read as train.precision: {new}"):
        recipe = recipe_from_dict(stored)
    assert recipe == with_value(RECIPE, "train.precision", new)
