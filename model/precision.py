"""Training precision and attention kernel, chosen by measurement on the machine that trains.

`train.precision` is `auto`, `fp32` or `bf16`. bf16 autocast pays only where the hardware
multiplies bf16 natively (CUDA with bf16; CPUs with avx512_bf16 or amx_bf16). Elsewhere it is
emulated, about 100x slower, so there `auto` means fp32 without timing anything. Where bf16 is
native it is still not always faster: on a 2-core Zen 4 a training step gained nothing from bf16
with `scaled_dot_product_attention`, and ran 1.7x faster than fp32 with explicit attention. So
`auto` times a few training steps of every candidate (precision x attention kernel), in
alternating rounds, and takes the fastest. With `fp32` or `bf16` the precision is fixed and only
the attention kernel is timed (an emulated bf16 is not timed: the kernel is the device default).

A choice is measured once per machine and model shape and kept as a small JSON file under the
data cache (`timings/`), so every later trial of that shape on that machine starts at once and
runs with the same choice. The precision and kernel a trial ran with are recorded in its
`TrainResult` (`precision`, `attention`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from model.config import RecipeConfig, train_frames
from model.vit import ATTENTION_KERNELS, Attention

PRECISIONS = ("auto", "fp32", "bf16")
# The kernel where nothing is timed (emulated bf16): SDPA on GPUs, explicit elsewhere.
DEFAULT_KERNEL = {"cuda": "sdpa"}
ROUNDS = 3  # alternating timing rounds; a candidate's time is its best round
STEPS = 2  # training steps a round times per candidate (after one untimed warm-up step)


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16
    attention: str  # explicit | sdpa

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


# Seconds per training step under a candidate (one timing round).
StepTimer = Callable[[Choice], float]


@cache
def cpu_has_bf16() -> bool:
    """Native bf16 dot products on this CPU (avx512_bf16 or AMX); elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def candidates(requested: str, native: bool) -> list[Choice]:
    """What `requested` may run as on hardware with (or without) native bf16."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; known: {PRECISIONS}")
    if requested == "auto":
        precisions = ["fp32", "bf16"] if native else ["fp32"]
    else:
        precisions = [requested]
    return [Choice(p, k) for p in precisions for k in ATTENTION_KERNELS]


def fastest(
    choices: Iterable[Choice], time_step: StepTimer, rounds: int = ROUNDS
) -> tuple[Choice, dict[Choice, float]]:
    """(the fastest choice, each choice's best seconds per step).

    Rounds alternate between the candidates, so a load that comes and goes on a shared machine
    falls on all of them alike; the best round of each is the closest to what it can do."""
    choices = list(choices)
    best = {c: float("inf") for c in choices}
    for _ in range(rounds):
        for c in choices:
            best[c] = min(best[c], time_step(c))
    return min(choices, key=lambda c: best[c]), best


def use_attention(model: nn.Module, kernel: str) -> None:
    """Set the attention kernel of every block of `model` (the weights do not change)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; known: {ATTENTION_KERNELS}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.kernel = kernel


def machine_id(device: torch.device) -> dict[str, object]:
    """What a timing depends on besides the model: the chip, the threads, torch."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                chip = next(
                    (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), chip
                )
        except OSError:
            pass
    return {
        "device": device.type,
        "chip": chip,
        "native_bf16": native_bf16(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def shape_of(recipe: RecipeConfig) -> dict[str, object]:
    """The recipe settings that set a step's cost: sizes, masks (token counts), the branch."""
    fe = recipe.frontend
    return {
        "input": [fe.n_mels, train_frames(recipe)],
        "batch": recipe.train.batch_size,
        "encoder": dataclasses.asdict(recipe.encoder),
        "predictor": dataclasses.asdict(recipe.predictor),
        "mask": dataclasses.asdict(recipe.mask),
        "target": dataclasses.asdict(recipe.target),
    }


def _cache_file(folder: Path, what: dict[str, object]) -> Path:
    blob = json.dumps(what, sort_keys=True, default=str)
    return folder / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


def _read(path: Path) -> Choice | None:
    try:
        rec = json.loads(path.read_text())
        choice = Choice(rec["precision"], rec["attention"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: measure again
    if choice.precision not in PRECISIONS[1:] or choice.attention not in ATTENTION_KERNELS:
        return None
    return choice


def _keep(
    path: Path, what: dict[str, object], choice: Choice, times: dict[Choice, float]
) -> Choice:
    """Keep `choice` unless another process kept one for the same machine and shape first:
    then that one is returned, so every trial of a shape runs with one choice. A folder that
    cannot be written only means measuring again next time."""
    rec = {
        **dataclasses.asdict(choice),
        "seconds_per_step": {f"{c.precision}/{c.attention}": round(s, 5) for c, s in times.items()},
        "for": what,
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        os.link(tmp, path)  # atomic, and refuses to replace a choice kept meanwhile
    except FileExistsError:
        first = _read(path)
        if first is not None:
            return first
        with contextlib.suppress(OSError):
            os.replace(tmp, path)  # the kept one was unreadable
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return choice


def choose(
    requested: str,
    recipe: RecipeConfig,
    device: torch.device,
    time_step: StepTimer,
    cache_dir: Path | None,
    native: bool | None = None,
    keep: str | None = None,
) -> Choice:
    """The precision and attention kernel to train `recipe` with on `device`.

    `time_step` times one round of a candidate; it is called only when there is something to
    choose and no kept choice for this machine and shape in `cache_dir`. `keep` (a resumed
    trial's precision) fixes `auto` to that precision where it runs natively here, so a trial
    does not change precision halfway; `native` overrides the hardware check (tests).
    """
    native = native_bf16(device) if native is None else native
    if requested == "auto" and keep in ("fp32", "bf16") and (keep == "fp32" or native):
        requested = keep
    options = candidates(requested, native)
    if options[0].bf16 and not native:
        # Emulated bf16 is asked for explicitly: timing it would take minutes; run it as told.
        return Choice("bf16", DEFAULT_KERNEL.get(device.type, "explicit"))
    what = {"requested": requested, "machine": machine_id(device), "shape": shape_of(recipe)}
    path = _cache_file(cache_dir, what) if cache_dir is not None else None
    if path is not None and (kept := _read(path)) is not None and kept in options:
        return kept
    choice, times = fastest(options, time_step)
    return choice if path is None else _keep(path, what, choice, times)
