"""The JEPA and its training loop: every axis of the recipe reaches the computation.

Each test trains the tiny model for a few steps on real prepared audio (a slice of env-sfx) and
compares what came out, so a setting that is read but never used fails here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from model.config import (
    EncoderConfig,
    FrontendConfig,
    PredictorConfig,
    RecipeConfig,
    TrainConfig,
)
from model.data.datasets import PreparedTask
from model.data.features import CropSampler, corpus_normalizer, load_features, silence_floor
from model.jepa import JEPA
from model.masks import Masks, sample_masks
from model.train import Batches, train
from model.vit import ViT
from orchestrator.spec import with_value

TINY = RecipeConfig(
    frontend=FrontendConfig(frames=64),  # 5 x 4 = 20 tokens of 16 x 16
    encoder=EncoderConfig(depth=2, width=32, heads=2),
    predictor=PredictorConfig(depth=1, width=16, heads=2),
    train=TrainConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1),
)


@pytest.fixture(scope="module")
def run(env_sfx: PreparedTask, data_root):
    """train(recipe) on crops of real env-sfx clips -> (model, result); features cached."""
    cache: dict = {}

    def sampler(recipe: RecipeConfig) -> CropSampler:
        fe = recipe.frontend
        if fe not in cache:
            clips = env_sfx.split("train", 3)
            cache[fe] = load_features(env_sfx, clips, fe, data_root)
        fs = cache[fe]
        return CropSampler(
            [fs],
            fe.frames,
            corpus_normalizer([fs]),
            seed=0,
            sampling=recipe.data.sampling,
            max_silence=recipe.data.max_silence,
            floor=silence_floor(fe),
        )

    done: dict = {}

    def go(recipe: RecipeConfig, **kwargs):
        if kwargs:
            return train(recipe, sampler(recipe), seed=0, **kwargs)
        if recipe not in done:  # the shared baselines of the axis tests train once
            done[recipe] = train(recipe, sampler(recipe), seed=0)
        return done[recipe]

    go.sampler = sampler
    return go


def fingerprint(model: JEPA, result) -> torch.Tensor:
    """Everything a trial produces: the trained encoders and the loss curve."""
    weights = [p.detach().float().flatten() for p in model.parameters()]
    losses = torch.tensor([r["loss"] for r in result.history])
    return torch.cat([*weights, losses])


# (path, baseline value, other value, baseline overrides that make the axis active)
AXES = [
    ("mask.strategy", "unstructured", "multiblock", {}),
    ("mask.strategy", "unstructured", "time", {}),
    ("mask.strategy", "unstructured", "frequency", {}),
    ("mask.ratio", 0.6, 0.4, {}),
    ("mask.target_blocks", 1, 2, {"mask.strategy": "time"}),
    ("mask.target_blocks", 4, 2, {"mask.strategy": "multiblock"}),
    ("mask.block_scale", (0.15, 0.2), (0.3, 0.4), {"mask.strategy": "multiblock"}),
    ("mask.block_aspect", (0.75, 1.5), (2.0, 3.0), {"mask.strategy": "multiblock"}),
    ("mask.context_scale", (0.85, 1.0), (0.5, 0.6), {"mask.strategy": "multiblock"}),
    ("mask.overlap", "disjoint", "allow", {"mask.strategy": "multiblock"}),
    ("mask.curriculum", "none", "time", {"mask.curriculum_end": 1.0, "train.steps": 6}),
    ("mask.curriculum_end", 0.0, 1.0, {"mask.curriculum": "time", "train.steps": 6}),
    ("target.branch", "targets-only", "full-input", {}),
    ("data.sampling", "time", "clip", {}),
    ("data.sampling", "clip", "source", {}),  # one corpus entry: source draws by time
    ("mask.per_crop", 1, 2, {}),
    ("mask.per_crop", 1, 2, {"target.branch": "full-input"}),
    ("loss.var_weight", 0.0, 1.0, {}),
    ("loss.cov_weight", 0.0, 1.0, {}),
    ("loss.sigreg_weight", 0.0, 0.1, {}),
    ("loss.sigreg_slices", 256, 16, {"loss.sigreg_weight": 0.1}),
    ("target.norm", "layer", "none", {}),
    ("target.norm", "layer", "instance", {}),
    ("target.norm", "layer", "batch", {}),
    ("target.norm", "layer", "position", {}),
    ("target.norm", "layer", "position", {"target.branch": "full-input"}),
    ("target.top_k", 1, 2, {}),
    ("target.source", "latent", "input", {}),
    ("loss.global_weight", 0.0, 1.0, {}),
    ("loss.token_weight", 1.0, 0.5, {}),
    ("loss.token_weight", 1.0, 0.0, {"loss.global_weight": 1.0}),
    ("loss.global_weight", 0.0, 1.0, {"target.branch": "full-input"}),
    ("loss.global_view", "same", "other", {"loss.global_weight": 1.0}),
    ("loss.global_view", "same", "other", {"loss.global_weight": 1.0, "mask.per_crop": 2}),
    ("loss.global_pool", "clip", "band", {"loss.global_weight": 1.0}),
    ("loss.global_pool", "clip", "band", {"loss.global_weight": 1.0, "mask.strategy": "time"}),
    ("loss.global_loss", "l2", "nce", {"loss.global_weight": 1.0}),
    ("loss.global_temperature", 0.1, 0.5, {"loss.global_weight": 1.0, "loss.global_loss": "nce"}),
    ("train.crop_frames", 0, 32, {}),
    ("train.crop_frames", 0, 32, {"target.branch": "full-input", "loss.global_weight": 1.0}),
    ("data.mix", 0.0, 0.4, {}),
    # The fifth step's crops are the first of this slice to hold a silent frame.
    ("data.max_silence", 1.0, 0.0, {"train.steps": 6}),
    ("data.mix", 0.0, 0.4, {"mask.per_crop": 2, "loss.global_weight": 1.0}),
    ("data.gain_db", 0.0, 6.0, {}),
    ("data.gain_db", 0.0, 6.0, {"data.mix": 0.4}),
    ("loss.kind", "l2", "smooth_l1", {}),
    ("loss.kind", "l2", "cosine", {}),
    ("encoder.depth", 2, 3, {}),
    ("encoder.width", 32, 48, {}),
    ("encoder.heads", 2, 4, {}),
    ("encoder.mlp_ratio", 4.0, 2.0, {}),
    ("encoder.patch", (16, 16), (16, 8), {}),
    ("encoder.stem", "linear", "hmlp", {}),
    ("predictor.depth", 1, 2, {}),
    ("predictor.width", 16, 24, {}),
    ("predictor.heads", 2, 4, {}),
    ("predictor.mlp_ratio", 4.0, 2.0, {}),
    ("train.lr", 1e-3, 3e-3, {}),
    ("train.weight_decay", 0.05, 0.5, {}),
    ("train.warmup_steps", 1, 2, {}),
    ("train.grad_clip", 0.0, 0.01, {}),
    ("train.steps", 3, 4, {}),
    ("train.batch_size", 4, 6, {}),
    ("train.ema_start", 0.996, 0.9, {}),
    ("train.ema_end", 1.0, 0.95, {}),
    ("frontend.frames", 64, 48, {}),
    ("frontend.n_mels", 80, 64, {}),
    ("frontend.hop", 160, 200, {}),
]


def _recipe(overrides: dict) -> RecipeConfig:
    r = TINY
    for path, value in overrides.items():
        r = with_value(r, path, value)
    return r


@pytest.mark.parametrize(
    ("path", "a", "b", "context"), AXES, ids=[f"{p}={b}" for p, _, b, _ in AXES]
)
def test_every_axis_changes_what_is_trained(run, path, a, b, context):
    base = _recipe(context)
    ma, ra = run(with_value(base, path, a))
    mb, rb = run(with_value(base, path, b))
    assert ra.failed is None and rb.failed is None
    fa, fb = fingerprint(ma, ra), fingerprint(mb, rb)
    assert fa.shape != fb.shape or not torch.equal(fa, fb), f"{path} did not reach training"


@pytest.mark.parametrize("overrides", [{}, {"mask.strategy": "multiblock"}])
def test_the_same_recipe_and_seed_train_the_same_model(env_sfx, data_root, run, overrides):
    # The axis tests compare two runs: the difference must be the axis, not noise.
    r = _recipe(overrides)
    fa = fingerprint(*train(r, run.sampler(r), seed=0))
    assert torch.equal(fa, fingerprint(*train(r, run.sampler(r), seed=0)))
    assert not torch.equal(fa, fingerprint(*train(r, run.sampler(r), seed=1)))


def test_bf16_autocast_changes_the_arithmetic(run):
    # Runs on every machine: where bf16 is emulated, two tiny steps are still quick.
    r = with_value(TINY, "train.steps", 2)
    ma, ra = run(with_value(r, "train.precision", "bf16"))
    mb, rb = run(with_value(r, "train.precision", "fp32"))
    assert (ra.precision, rb.precision) == ("bf16", "fp32")
    assert ra.failed is None and ra.steps == 2 and math.isfinite(ra.history[-1]["loss"])
    assert not torch.equal(fingerprint(ma, ra), fingerprint(mb, rb))


def test_a_trial_resumed_in_another_precision_records_both(run, tmp_path):
    r = dataclasses.replace(
        TINY,
        train=dataclasses.replace(
            TINY.train, steps=4, precision="fp32", checkpoint_every=2, eval_every=2
        ),
    )
    ckpt = tmp_path / "trial.pt"
    _, first = run(r, checkpoint=ckpt, on_eval=lambda step, model: step == 2)
    assert first.steps == 2 and first.precision == "fp32"
    assert first.attention in ("explicit", "sdpa")
    _, res = run(with_value(r, "train.precision", "bf16"), checkpoint=ckpt)
    assert res.resumed_from == 2 and res.steps == 4 and res.precision == "fp32+bf16"


@pytest.mark.parametrize(
    ("path", "value", "evals"),
    [
        ("train.log_every", 2, []),
        ("train.eval_every", 1, [1, 2, 3]),
        ("train.eval_every", 2, [2]),
        ("train.checkpoint_every", 1, []),
    ],
)
def test_bookkeeping_settings_do_not_change_the_model(run, tmp_path, path, value, evals):
    # Both runs get an evaluation hook and a checkpoint file, so the setting is read: the hook
    # runs (every `eval_every` steps) the frozen encoder as the intermediate probe does, and
    # checkpoints are written every `checkpoint_every` steps. None of it may move the weights
    # or the loss curve: that is why these settings are left out of the trial key.
    calls: list[int] = []
    clip = torch.linspace(-1.0, 1.0, 80 * 64).reshape(1, 1, 80, 64)

    def on_eval(step: int, model) -> None:  # noqa: ANN001
        calls.append(step)
        model.eval()
        with torch.no_grad():
            model.encoder(clip)
        model.train()

    ma, ra = run(TINY, on_eval=on_eval, checkpoint=tmp_path / "a.pt")
    assert calls == []  # TINY evaluates never (eval_every 0)
    mb, rb = run(with_value(TINY, path, value), on_eval=on_eval, checkpoint=tmp_path / "b.pt")
    assert calls == evals
    assert ra.failed is None and rb.failed is None
    assert torch.equal(fingerprint(ma, ra), fingerprint(mb, rb))


@pytest.mark.parametrize("patch", [(16, 16), (16, 8), (80, 2), (8, 16)])
def test_patch_shapes_tile_the_input(patch):
    fe = FrontendConfig()  # 80 x 208
    enc = ViT(EncoderConfig(patch=patch, depth=1, width=32, heads=2), fe.n_mels, fe.frames)
    x = torch.randn(2, 1, fe.n_mels, fe.frames)
    f, t = fe.n_mels // patch[0], fe.frames // patch[1]
    assert enc.grid == (f, t)
    assert enc(x).shape == (2, f * t, 32)
    assert enc.frame_embeddings(x).shape == (2, t, f * 32)
    # The unfolded matrix product is the convolution whose weights it holds.
    conv = enc.patch(x).flatten(2).transpose(1, 2) + enc.pos
    torch.testing.assert_close(enc.tokens(x), conv, rtol=1e-4, atol=1e-5)
    # Token i sits at frequency row i // t and time column i % t (the masks' layout).
    probe = torch.zeros(1, 1, fe.n_mels, fe.frames)
    probe[..., : patch[0], patch[1] : 2 * patch[1]] = 1.0
    tokens = enc.patch(probe).flatten(2).transpose(1, 2)[0]
    changed = (tokens - enc.patch(torch.zeros_like(probe)).flatten(2).transpose(1, 2)[0]).abs()
    assert changed.sum(1).nonzero().flatten().tolist() == [1]


@pytest.mark.parametrize("patch", [(16, 16), (16, 8)])
def test_the_hmlp_stem_reads_each_patch_alone_in_square_sub_patches(patch):
    """encoder.stem: hmlp. A token depends on its own patch only (masking after the stem hides
    a patch completely), and its first stage reads contiguous (pf/4) x (pt/4) sub-patches."""
    fe = FrontendConfig()
    cfg = EncoderConfig(patch=patch, stem="hmlp", depth=1, width=32, heads=2)
    enc = ViT(cfg, fe.n_mels, fe.frames)
    f, t = enc.grid
    x = torch.randn(2, 1, fe.n_mels, fe.frames, generator=torch.Generator().manual_seed(0))
    assert enc(x).shape == (2, f * t, 32)
    y = x.clone()
    y[0, 0, patch[0] : 2 * patch[0], 2 * patch[1] : 3 * patch[1]] += 1.0  # row 1, column 2
    changed = (enc.tokens(y) - enc.tokens(x)).abs().sum(-1)
    assert changed[0].nonzero().flatten().tolist() == [t + 2]
    assert changed[1].abs().max() == 0
    # The first stage's inputs, in order, are the sub-patches of a 4 x 4 split whose 2 x 2
    # quarters come first, then the sub-patches inside each quarter.
    seen = []
    enc.stem.stages[0].register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    enc.tokens(x)
    kf, kt = patch[0] // 4, patch[1] // 4
    first = x[0, 0, : patch[0], : patch[1]]  # token 0's patch
    subs = seen[0].reshape(2, -1, 2, 2, 2, 2, kf * kt)[0, 0]  # (i2, j2, i1, j1, values)
    for i2, j2, i1, j1 in itertools.product(range(2), repeat=4):
        r, c = (2 * i2 + i1) * kf, (2 * j2 + j1) * kt
        want = first[r : r + kf, c : c + kt].reshape(-1)
        assert torch.equal(subs[i2, j2, i1, j1], want)


def test_a_short_crop_is_encoded_at_its_offset_as_those_columns_of_a_full_input():
    """train.crop_frames: a crop shorter than the input gets the positions of the grid columns
    it is placed at, so its patch tokens are the full input's at those columns."""
    vit = JEPA(with_value(TINY, "train.crop_frames", 32)).encoder
    f, t = vit.grid
    full = torch.randn(2, 1, 80, 64, generator=torch.Generator().manual_seed(0))
    at = torch.tensor([0, 2])
    crops = torch.stack([full[i, :, :, 16 * o : 16 * o + 32] for i, o in enumerate(at.tolist())])
    whole = vit.tokens(full).view(2, f, t, -1)
    expected = torch.stack([whole[i, :, o : o + 2] for i, o in enumerate(at.tolist())])
    assert torch.allclose(vit.tokens(crops, at), expected.reshape(2, 2 * f, -1))
    assert not torch.allclose(vit.tokens(crops), expected.reshape(2, 2 * f, -1))


def test_predictor_returns_only_target_positions_and_targets_are_normalised():
    r = with_value(TINY, "target.norm", "layer")
    model = JEPA(r)
    x = torch.randn(3, 1, 80, 64)
    masks = sample_masks(3, model.grid, r.mask, seed=0)
    out = model(x, masks)
    assert out.targets.shape == (3, masks.target.shape[1], 32)
    assert out.context.shape == (3, masks.context.shape[1], 32)
    assert torch.allclose(out.targets.mean(-1), torch.zeros(()), atol=1e-4)
    assert math.isfinite(float(out.loss.detach()))


def test_input_targets_are_the_normalised_log_mel_patches_at_the_target_positions():
    """target.source: input (a masked autoencoder): the predictor regresses each target
    patch's 16 x 16 log-mel values, standardised per patch; no target encoder is involved."""
    r = with_value(TINY, "target.source", "input")
    model = JEPA(r)
    x = torch.randn(3, 1, 80, 64, generator=torch.Generator().manual_seed(0))
    masks = sample_masks(3, model.grid, r.mask, seed=0)
    out = model(x, masks)
    n = masks.target.shape[1]
    assert out.targets.shape == out.raw_targets.shape == (3, n, 256)
    i, j = 1, int(masks.target[1, 0])  # the first target patch of the second clip
    f, t = divmod(j, model.grid[1])
    patch = x[i, 0, f * 16 : (f + 1) * 16, t * 16 : (t + 1) * 16].reshape(-1)
    assert torch.allclose(out.raw_targets[i, 0], patch)
    expected = (patch - patch.mean()) / patch.std(unbiased=False)
    assert torch.allclose(out.targets[i, 0], expected, atol=1e-4)  # layer norm's eps aside
    with torch.no_grad():
        model.target_encoder.blocks[0].attn.qkv.weight.mul_(2)  # unused: changes nothing
    assert torch.equal(model(x, masks).targets, out.targets)


def test_band_pooling_pairs_each_band_the_context_saw_with_its_target_band():
    """loss.global_pool: band regresses one mean token per frequency band; a band of which the
    context saw no token is left out of the term, whatever its target."""
    r = with_value(with_value(TINY, "loss.global_weight", 1.0), "loss.global_pool", "band")
    model = JEPA(r)
    f, t = model.grid
    gen = torch.Generator().manual_seed(0)
    context = torch.tensor([[0, 2, 3], [t, t + 1, 2 * t]])  # clip 0 saw band 0; clip 1, 1 and 2
    masks = Masks(context, context)  # the term reads the context positions only
    ctx = torch.randn(2, 3, 32, generator=gen)
    whole = torch.randn(2, f * t, 32, generator=gen)
    loss = model._global_loss(ctx, whole, masks).detach()
    assert math.isfinite(float(loss))

    def with_band(clip: int, band: int) -> torch.Tensor:
        w = whole.clone()
        w[clip, band * t : (band + 1) * t] += torch.randn(t, 32, generator=gen)
        return model._global_loss(ctx, w, masks).detach()

    assert torch.equal(with_band(0, 1), loss)  # clip 0 saw nothing of band 1
    assert torch.equal(with_band(1, 0), loss)
    assert not torch.equal(with_band(0, 0), loss)
    assert not torch.equal(with_band(1, 2), loss)


def test_history_has_every_step_and_collapse_signals(run):
    r = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, steps=5, log_every=2))
    _, res = run(r)
    assert [h["step"] for h in res.history] == [0, 1, 2, 3, 4]
    for h in res.history:
        assert {"loss", "lr", "momentum", "grad_norm"} <= set(h)
    signalled = [h["step"] for h in res.history if "target_token_rank" in h]
    assert signalled == [0, 2, 4]
    assert all(h["target_std"] >= 0 and h["target_token_rank"] >= 1 for h in res.history[::2])
    # The fixed-crop signals: at step 0 (the random init), every steps // 5, and the end.
    fixed = [h for h in res.history if "rank.context" in h]
    assert [h["step"] for h in fixed] == [0, 1, 2, 3, 4]
    for h in fixed:
        for enc in ("context", "target"):
            assert 1 <= h[f"rank.{enc}"] <= 32  # the width of the tiny encoder
            assert -1 <= h[f"cos.{enc}.clips"] <= 1 and -1 <= h[f"cos.{enc}.positions"] <= 1
    assert 0 <= res.padding_share < 1
    assert res.samples_per_s > 0


def test_nan_loss_fails_the_trial_with_its_reason(run):
    _, res = run(with_value(TINY, "train.lr", 1e30))
    assert res.failed is not None
    assert "non-finite" in res.failed or "diverged" in res.failed


def test_a_failure_read_back_late_names_the_step_it_happened_at(run):
    """The loss is read from the device every log_every steps; the reason still names the
    first bad step, and the history stops before it."""
    bad = with_value(with_value(TINY, "train.lr", 1e30), "train.steps", 8)
    _, every = run(bad)  # log_every 1: read at each step
    late = dataclasses.replace(bad, train=dataclasses.replace(bad.train, log_every=7))
    _, res = run(late)
    assert every.failed and res.failed == every.failed and every.steps > 0
    assert res.steps == every.steps == len(res.history)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in every.history]


def test_batches_are_the_samplers_own_sequence(run):
    """Made ahead in a thread, batches and masks are those of the plain loop, and the RNG state
    a checkpoint keeps is the one after the last batch handed out."""
    r = with_value(TINY, "train.steps", 5)
    grid = JEPA(r).grid
    ahead, plain = run.sampler(r), run.sampler(r)
    batches = Batches(ahead, r, grid, seed=3, start=1)
    try:
        for step in (1, 2):
            x, m = batches.next()
            assert torch.equal(x, plain.batch(r.train.batch_size))
            want = sample_masks(r.train.batch_size, grid, r.mask, 3 * 1_000_003 + step, step / 5)
            assert torch.equal(m.context, want.context) and torch.equal(m.target, want.target)
            assert batches.rng_state == json.dumps(plain.rng.bit_generator.state)
    finally:
        batches.close()


def test_a_data_error_in_the_producer_reaches_the_loop(run):
    r = with_value(TINY, "train.steps", 5)
    sampler = run.sampler(r)

    def broken(size: int, views: int = 1, mix: float = 0.0, gain_db: float = 0.0):
        raise OSError("frames.f16: input/output error")

    sampler.batch = broken
    with pytest.raises(OSError, match="input/output error"):
        train(r, sampler, seed=0)


RESUMED = [
    {},
    {"loss.sigreg_weight": 0.1},  # its random directions continue where they stopped
    # the sampler's redraws and levels come from its generator, which the checkpoint keeps
    {"data.max_silence": 0.0, "data.gain_db": 6.0, "train.grad_clip": 0.05},
]


@pytest.mark.parametrize("overrides", RESUMED)
def test_checkpoint_resume_reproduces_an_uninterrupted_run(run, tmp_path, overrides):
    base = _recipe(overrides)
    r = dataclasses.replace(
        base, train=dataclasses.replace(base.train, steps=6, precision="fp32", checkpoint_every=3)
    )
    whole, res_whole = run(r)
    # Interrupt after 3 steps: the hook stops training, the checkpoint holds step 3.
    ckpt = tmp_path / "trial.pt"
    r_eval = dataclasses.replace(r, train=dataclasses.replace(r.train, eval_every=3))
    _, first = run(r_eval, checkpoint=ckpt, on_eval=lambda step, model: step == 3)
    assert first.stopped and first.steps == 3 and ckpt.exists()
    resumed, res = run(r, checkpoint=ckpt)
    assert res.resumed_from == 3 and res.steps == 6
    assert [h["loss"] for h in res.history] == [h["loss"] for h in res_whole.history]
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q) if isinstance(p, torch.Tensor) else p == q
    state = torch.load(ckpt, weights_only=True)  # plain tensors and containers only
    assert state["step"] == 6


def test_eval_hook_sees_the_model_at_its_interval(run):
    seen = []
    r = with_value(with_value(TINY, "train.eval_every", 2), "train.steps", 5)
    run(r, on_eval=lambda step, model: seen.append((step, model.training)))
    assert seen == [(2, False), (4, False)]
