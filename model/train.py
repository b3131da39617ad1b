"""Pretraining loop: AdamW, warmup + cosine, EMA target; the precision (fp32 or bf16 autocast)
and attention kernel chosen by measurement on the machine (model/precision.py).

`train(recipe, sampler, seed)` returns the model and a `TrainResult` whose history holds one
record per step (loss, learning rate, momentum, gradient norm) and, every `log_every` steps, the
collapse signals (target-feature spread across the batch, effective rank of the pooled target
and context embeddings). A non-finite or diverging loss ends training with `failed` set.
Checkpoints save the whole state (weights, optimiser, data and mask position) and resume from
it; `on_eval(step, model)` is called every `eval_every` steps and may stop training by
returning True (pruning).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from model.config import RecipeConfig, train_frames
from model.data.datasets import resolve_data_root
from model.data.features import CropSampler
from model.jepa import JEPA, StepOutput, input_channels, input_views
from model.masks import Masks, sample_masks
from model.precision import STEPS, Choice, StepTimer, choose, use_attention
from model.schedules import lr_at, momentum_at

OnLog = Callable[[dict[str, float]], None]
OnEval = Callable[[int, JEPA], bool | None]


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_s: float = 0.0
    samples_per_s: float = 0.0
    failed: str | None = None  # reason, when the loss went non-finite or diverged
    stopped: str | None = None  # reason, when the evaluation hook ended training early
    resumed_from: int = 0  # the step a checkpoint resumed at (0: from scratch)
    data_wait_s: float = 0.0  # time the training loop spent waiting for a batch
    # What the steps ran with (model/precision.py): fp32 | bf16, or "bf16+fp32" for a trial
    # resumed on a machine that could not keep its precision; explicit | sdpa attention.
    precision: str = ""
    attention: str = ""
    padding_share: float = 0.0  # share of the input frames drawn that were padding
    silence_share: float = 0.0  # share of the input frames drawn that were digital silence


class Batches:
    """Crops and masks for steps `start`.., made ahead in a background thread.

    The crops (numpy) and the mask draws (Python) run while the step's matrix products run,
    so the loop waits only when the producer falls behind; `wait_s` counts that time. Items
    come in step order from one producer, so a run draws exactly the batches and masks it
    would draw without the thread; each carries the sampler's RNG state after its crops, which
    a checkpoint saves for the last batch consumed (not the ones made ahead). `grid` and
    `spare` are the model's crop grid and spare columns (`JEPA.grid`, `JEPA.spare_columns`).
    """

    def __init__(
        self,
        sampler: CropSampler,
        recipe: RecipeConfig,
        grid: tuple[int, int],
        seed: int,
        start: int,
        pin: bool = False,
        ahead: int = 2,
        spare: int = 0,
    ):
        self.wait_s = 0.0
        self.rng_state = json.dumps(sampler.rng.bit_generator.state)
        self._q: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        tc = recipe.train
        views = input_views(recipe)

        def produce() -> None:
            try:
                for step in range(start, tc.steps):
                    x = sampler.batch(
                        tc.batch_size, views, mix=recipe.data.mix, gain_db=recipe.data.gain_db
                    )
                    state = json.dumps(sampler.rng.bit_generator.state)
                    m = sample_masks(
                        tc.batch_size * recipe.mask.per_crop,
                        grid,
                        recipe.mask,
                        seed * 1_000_003 + step,
                        step / tc.steps,
                        spare,
                    )
                    if pin:
                        x, m = x.pin_memory(), m.pin_memory()
                    if not self._put((x, m, state)):
                        return
            except BaseException as e:  # handed to the loop, which raises it
                self._put(e)

        self._thread = threading.Thread(target=produce, name="abl-batches", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple[torch.Tensor, Masks]:
        t = time.perf_counter()
        item = self._q.get()
        self.wait_s += time.perf_counter() - t
        if isinstance(item, BaseException):
            raise item
        x, m, self.rng_state = item
        return x, m

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


COLLAPSE_CROPS = 256  # the fixed crops the collapse signals are measured on
COLLAPSE_POINTS = 5  # measurements over a run, besides step 0 (the random init) and the end
COLLAPSE_SEED = 20241128  # the same crops for every trial of a corpus


def collapse_crops(sampler: CropSampler) -> torch.Tensor:
    """A fixed set of crops of the sampler's corpus, drawn by time with a fixed seed."""
    fixed = CropSampler(sampler.sets, sampler.frames, sampler.norm, COLLAPSE_SEED, "time")
    return fixed.batch(COLLAPSE_CROPS)


def _token_cosines(h: torch.Tensor) -> tuple[float, float]:
    """Mean cosine similarity of tokens h (B, N, D), after a per-token layer norm: between two
    clips at the same position, and between two positions of the same clip. Near 1 when every
    token points the same way (the shared direction a per-token norm cannot remove)."""
    z = F.normalize(F.layer_norm(h.float(), h.shape[-1:]), dim=-1)
    b, n, _ = z.shape
    across_clips = (z.sum(0).pow(2).sum(-1) - b) / (b * (b - 1))  # (N,)
    across_positions = (z.sum(1).pow(2).sum(-1) - n) / (n * (n - 1))  # (B,)
    return float(across_clips.mean()), float(across_positions.mean())


@torch.inference_mode()
def collapse_signals(model: JEPA, crops: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Collapse signals of both encoders on fixed crops: the effective rank of the clip
    embeddings (mean over tokens; its ceiling is min(crops - 1, width)) and the token cosines.
    At step 0 they are those of the random-init encoder."""
    out = {}
    dev = next(model.parameters()).device
    for name, enc in (("context", model.encoder), ("target", model.target_encoder)):
        was = enc.training
        enc.eval()
        pooled, clips, positions = [], [], []
        for i in range(0, len(crops), batch):
            h = enc(crops[i : i + batch].to(dev)).float()  # (b, N, D)
            pooled.append(h.mean(1))
            c, p = _token_cosines(h)
            clips.append(c * len(h))
            positions.append(p * len(h))
        enc.train(was)
        out[f"rank.{name}"] = effective_rank(torch.cat(pooled))
        out[f"cos.{name}.clips"] = sum(clips) / len(crops)
        out[f"cos.{name}.positions"] = sum(positions) / len(crops)
    return out


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values: ~1 when features collapse."""
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        return math.nan  # the loss check fails the run at this step
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and the mask token (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or p.shape[:2] == (1, 1) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def save_checkpoint(
    path: Path,
    model: JEPA,
    opt: torch.optim.Optimizer,
    sampler: CropSampler,
    result: TrainResult,
    rng_state: str,
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place.
    `rng_state` is the sampler's state after the last batch trained on."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": result.steps,
        "history": result.history,
        "sampler_rng": rng_state,
        "wall_s": result.wall_s,
        "precision": result.precision,
        # What the finished pretraining measured, for a trial that reuses it (probe settings
        # apart) and trains no step of its own.
        "samples_per_s": result.samples_per_s,
        "padding_share": result.padding_share,
        "silence_share": result.silence_share,
        "data_wait_s": result.data_wait_s,
        "config": json.dumps(dataclasses.asdict(model.recipe)),  # what built these weights
        "normalizer": [sampler.norm.mean, sampler.norm.std],  # what the inputs were scaled by
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, model: JEPA, opt: torch.optim.Optimizer, sampler: CropSampler, result: TrainResult
) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
    result.steps = result.resumed_from = int(state["step"])
    result.history = list(state["history"])
    result.wall_s = float(state["wall_s"])
    result.precision = str(state.get("precision", ""))  # absent in checkpoints before it
    result.samples_per_s = float(state.get("samples_per_s", 0.0))
    result.padding_share = float(state.get("padding_share", 0.0))
    result.silence_share = float(state.get("silence_share", 0.0))
    result.data_wait_s = float(state.get("data_wait_s", 0.0))


def train_step(
    model: JEPA,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    masks: Masks,
    momentum: float,
    bf16: bool,
    clip: float = 0.0,
) -> tuple[StepOutput, torch.Tensor]:
    """One optimiser step and EMA update; returns the step's output and a device tensor of
    (loss, gradient norm before any clipping), read back by the caller when it chooses (no
    host sync here). `clip` > 0 scales a gradient whose global norm exceeds it down to it."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, masks)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    # The norm alone: clip_grad_norm_ with an infinite bound would also multiply every
    # gradient by 1.
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm)
    opt.step()
    model.update_target(momentum)
    return out, torch.stack([out.loss.detach().float(), grad_norm.float()])


def make_optimizer(model: JEPA, recipe: RecipeConfig, dev: torch.device) -> torch.optim.AdamW:
    """AdamW over the online parameters; the fused kernel on CPU and CUDA (one call for every
    tensor: on CPU about 8x faster than the per-tensor loop, the same update)."""
    tc = recipe.train
    fused = True if dev.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(
        param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.95), fused=fused
    )


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def step_timer(recipe: RecipeConfig, dev: torch.device) -> StepTimer:
    """Seconds per training step of `recipe` under a candidate precision and kernel, for
    `model.precision.choose`: a separate model on random crops and one fixed mask draw, each
    candidate warmed up by one untimed step. Built on first use (nothing is built when a kept
    choice answers); the global RNG is left as it was."""
    bench: dict = {}
    warm: set[Choice] = set()

    def build() -> None:
        torch.manual_seed(0)
        model = JEPA(recipe).to(dev).train()
        b, fe = recipe.train.batch_size, recipe.frontend
        x = torch.randn(b, input_channels(recipe), fe.n_mels, train_frames(recipe))
        m = sample_masks(
            b * recipe.mask.per_crop, model.grid, recipe.mask, 0, 0.5, model.spare_columns
        )
        bench.update(model=model, opt=make_optimizer(model, recipe, dev), x=x.to(dev), m=m.to(dev))

    def time_step(c: Choice) -> float:
        with torch.random.fork_rng(devices=[]):
            if not bench:
                build()
            use_attention(bench["model"], c.attention)

            def step() -> None:
                train_step(bench["model"], bench["opt"], bench["x"], bench["m"], 0.996, c.bf16)

            if c not in warm:  # a candidate's first step pays for its allocations
                step()
                warm.add(c)
            _sync(dev)
            t = time.perf_counter()
            for _ in range(STEPS):
                step()
            _sync(dev)
            return (time.perf_counter() - t) / STEPS

    return time_step


def train(
    recipe: RecipeConfig,
    sampler: CropSampler,
    seed: int,
    on_log: OnLog | None = None,
    on_eval: OnEval | None = None,
    checkpoint: Path | None = None,
    device: str | None = None,
) -> tuple[JEPA, TrainResult]:
    """Pretrain a JEPA on crops from `sampler`.

    `on_log` receives every step's record, in order (in bursts: the loss and gradient norm are
    read back from the device every `train.log_every` steps, not at every step, so a GPU step
    never waits on the host). With `checkpoint`, training resumes from that file when it exists
    and writes it every `train.checkpoint_every` steps and at the end.
    """
    tc = recipe.train
    dev = pick_device(device)
    torch.manual_seed(seed)
    model = JEPA(recipe).to(dev)
    cuda = dev.type == "cuda"
    opt = make_optimizer(model, recipe, dev)
    result = TrainResult()
    if checkpoint is not None and checkpoint.exists():
        load_checkpoint(checkpoint, model, opt, sampler, result)
    before = result.precision  # what a resumed trial ran with so far; "" from scratch
    last = before.rsplit("+", 1)[-1] or None
    timings = resolve_data_root(recipe.data.cache) / "timings"
    choice = choose(tc.precision, recipe, dev, step_timer(recipe, dev), timings, keep=last)
    use_attention(model, choice.attention)
    bf16 = choice.bf16
    if last is not None and last != choice.precision:
        result.precision = f"{before}+{choice.precision}"  # resumed in another precision
    elif not before:
        result.precision = choice.precision
    result.attention = choice.attention
    first_loss = result.history[0]["loss"] if result.history else None
    pending: list[tuple[dict[str, float], torch.Tensor]] = []  # records awaiting their values

    def read_back() -> bool:
        """Fill the pending records' loss and gradient norm (one device read), check them and
        hand them on; False when training went non-finite or diverged."""
        nonlocal first_loss
        if not pending:
            return True
        values = torch.stack([v for _, v in pending]).tolist()
        for (rec, _), (value, grad_norm) in zip(pending, values, strict=True):
            if first_loss is None:
                first_loss = value
            step, lr = int(rec["step"]), rec["lr"]
            if not math.isfinite(value) or not math.isfinite(grad_norm):
                result.failed = f"loss became non-finite at step {step} (lr {lr:.3g})"
            elif value > 1e3 * max(first_loss, 1e-3):
                result.failed = (
                    f"loss diverged at step {step}: {value:.3g} (first {first_loss:.3g})"
                )
            if result.failed:
                result.steps = step  # the steps before it are the ones that count
                pending.clear()
                return False
            rec["loss"], rec["grad_norm"] = value, grad_norm
            result.history.append(rec)
            if on_log is not None:
                on_log(rec)
        pending.clear()
        return True

    crops = collapse_crops(sampler)
    collapse_every = max(1, tc.steps // COLLAPSE_POINTS)
    t0 = time.perf_counter() - result.wall_s
    samples_before = result.steps * tc.batch_size
    t_start = time.perf_counter()
    model.train()
    batches = Batches(
        sampler, recipe, model.grid, seed, result.steps, pin=cuda, spare=model.spare_columns
    )
    try:
        for step in range(result.steps, tc.steps):
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            x, masks = batches.next()
            x, masks = x.to(dev, non_blocking=True), masks.to(dev, non_blocking=True)
            m = momentum_at(step, tc.steps, tc.ema_start, tc.ema_end)
            out, values = train_step(model, opt, x, masks, m, bf16, tc.grad_clip)
            rec = {"step": step, "lr": lr, "momentum": m}
            pending.append((rec, values))
            last = step == tc.steps - 1
            logged = step % tc.log_every == 0 or last
            if logged:
                pooled = out.targets.detach().float().mean(1)  # (B, D)
                rec["target_std"] = float(pooled.std(0).mean())
                # Rank of the target tokens before normalisation (ceiling: the width).
                raw = out.raw_targets.detach().reshape(-1, out.raw_targets.shape[-1])
                rec["target_token_rank"] = effective_rank(raw[:: max(1, len(raw) // 2048)])
                lc = recipe.loss
                if lc.var_weight or lc.cov_weight or lc.sigreg_weight:
                    rec["prediction_loss"] = float(out.prediction_loss)
            if step % collapse_every == 0 or last:
                model.eval()
                rec.update(collapse_signals(model, crops))
                model.train()
            every = tc.checkpoint_every
            saving = checkpoint is not None and every and (step + 1) % every == 0
            evaluating = on_eval is not None and tc.eval_every and (step + 1) % tc.eval_every == 0
            if (logged or saving or evaluating) and not read_back():
                break
            result.steps = step + 1
            result.wall_s = time.perf_counter() - t0
            if saving:
                save_checkpoint(checkpoint, model, opt, sampler, result, batches.rng_state)
            if evaluating:
                model.eval()
                stop = on_eval(result.steps, model)
                model.train()
                if stop:
                    result.stopped = f"stopped by the evaluation hook at step {result.steps}"
                    break
    finally:
        batches.close()
    ran = result.steps * tc.batch_size - samples_before
    if ran == 0 and result.resumed_from:
        # A finished pretraining reused: its figures are the checkpoint's, and it stays as is.
        model.eval()
        return model, result
    result.data_wait_s = batches.wait_s
    result.padding_share = sampler.padding_share
    result.silence_share = sampler.silence_share
    result.wall_s = time.perf_counter() - t0
    result.samples_per_s = ran / max(time.perf_counter() - t_start, 1e-9)
    if checkpoint is not None and result.failed is None:
        save_checkpoint(checkpoint, model, opt, sampler, result, batches.rng_state)
    model.eval()
    return model, result
