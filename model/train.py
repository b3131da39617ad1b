"""Pretraining loop: AdamW, warmup + cosine, EMA target, bf16 autocast on capable hardware.

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
from functools import cache
from pathlib import Path

import torch

from model.config import RecipeConfig
from model.features import CropSampler
from model.jepa import JEPA, StepOutput
from model.masks import Masks, sample_masks
from model.schedules import lr_at, momentum_at

OnLog = Callable[[dict[str, float]], None]
OnEval = Callable[[int, JEPA], bool | None]


@cache
def cpu_has_bf16() -> bool:
    """bf16 autocast pays on CPUs with native bf16 dot products; elsewhere it is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(enabled: bool, device: torch.device) -> bool:
    if not enabled:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


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


class Batches:
    """Crops and masks for steps `start`.., made ahead in a background thread.

    The crops (numpy) and the mask draws (Python) run while the step's matrix products run,
    so the loop waits only when the producer falls behind; `wait_s` counts that time. Items
    come in step order from one producer, so a run draws exactly the batches and masks it
    would draw without the thread; each carries the sampler's RNG state after its crops, which
    a checkpoint saves for the last batch consumed (not the ones made ahead).
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
    ):
        self.wait_s = 0.0
        self.rng_state = json.dumps(sampler.rng.bit_generator.state)
        self._q: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        tc = recipe.train

        def produce() -> None:
            try:
                for step in range(start, tc.steps):
                    x = sampler.batch(tc.batch_size)
                    state = json.dumps(sampler.rng.bit_generator.state)
                    m = sample_masks(
                        tc.batch_size, grid, recipe.mask, seed * 1_000_003 + step, step / tc.steps
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


def train_step(
    model: JEPA,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    masks: Masks,
    momentum: float,
    bf16: bool,
) -> tuple[StepOutput, torch.Tensor]:
    """One optimiser step and EMA update; returns the step's output and a device tensor of
    (loss, gradient norm), read back by the caller when it chooses (no host sync here)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, masks)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    opt.step()
    model.update_target(momentum)
    return out, torch.stack([out.loss.detach().float(), grad_norm.float()])


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
    opt = torch.optim.AdamW(
        param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.95), fused=cuda or None
    )
    bf16 = use_bf16(tc.bf16, dev)
    result = TrainResult()
    if checkpoint is not None and checkpoint.exists():
        load_checkpoint(checkpoint, model, opt, sampler, result)
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

    t0 = time.perf_counter() - result.wall_s
    samples_before = result.steps * tc.batch_size
    t_start = time.perf_counter()
    model.train()
    batches = Batches(sampler, recipe, model.grid, seed, result.steps, pin=cuda)
    try:
        for step in range(result.steps, tc.steps):
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            x, masks = batches.next()
            x, masks = x.to(dev, non_blocking=True), masks.to(dev, non_blocking=True)
            m = momentum_at(step, tc.steps, tc.ema_start, tc.ema_end)
            out, values = train_step(model, opt, x, masks, m, bf16)
            rec = {"step": step, "lr": lr, "momentum": m}
            pending.append((rec, values))
            last = step == tc.steps - 1
            logged = step % tc.log_every == 0 or last
            if logged:
                pooled = out.targets.detach().float().mean(1)  # (B, D)
                rec["target_std"] = float(pooled.std(0).mean())
                rec["target_rank"] = effective_rank(pooled)
                rec["context_rank"] = effective_rank(out.context.detach().float().mean(1))
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
    result.data_wait_s = batches.wait_s
    result.wall_s = time.perf_counter() - t0
    ran = result.steps * tc.batch_size - samples_before
    result.samples_per_s = ran / max(time.perf_counter() - t_start, 1e-9)
    if checkpoint is not None and result.failed is None:
        save_checkpoint(checkpoint, model, opt, sampler, result, batches.rng_state)
    model.eval()
    return model, result
