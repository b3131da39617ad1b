"""The least memory a recipe's training needs, against what the machine has.

A recipe too large for the machine would otherwise run out of memory inside its first trial
(torch's allocation error, or the kernel's out-of-memory killer ending the worker), and again
on every retry. The floor counted here is certain: whatever the attention kernel and the
masks, the weights, their gradients and AdamW's two moments are held in fp32 for every trained
parameter, and the EMA target encoder keeps its own copy. Activations come on top, so a recipe
over the floor cannot train here; one under it may still not fit, and is left to try.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from model.config import RecipeConfig
from model.errors import AblError
from model.jepa import JEPA

# fp32 bytes a trained parameter holds at once: weight, gradient, AdamW's two moments.
TRAINED_BYTES = 16
FROZEN_BYTES = 4  # the EMA target encoder's weights

GiB = 1 << 30


@functools.lru_cache(maxsize=64)
def training_floor(recipe: RecipeConfig) -> int:
    """Bytes that training `recipe` holds at the least (see the module's docstring). The
    model is built on the meta device: its parameters are counted, nothing is allocated."""
    with torch.device("meta"):
        model = JEPA(recipe)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return TRAINED_BYTES * trained + FROZEN_BYTES * frozen


def _cgroup_limit() -> int | None:
    """The memory limit of this process's control group (a container's), where one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def machine_bytes(device: torch.device) -> int:
    """Memory training on `device` can use at most: the GPU's, or the machine's RAM (under a
    container's limit, where one is set)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    return min(ram, limit) if limit else ram


def check_fits(
    recipe: RecipeConfig, what: str, device: torch.device, workers: int = 1, fix: str = ""
) -> None:
    """Refuse, in one line, a recipe whose training floor (times the `workers` training at
    once on this machine) exceeds its memory. `what` names the file and cell; `fix` adds a
    remedy beyond making the model smaller."""
    need = training_floor(recipe)
    have = machine_bytes(device)
    where = f"the {device.type.upper()}'s" if device.type == "cuda" else "this machine's"
    if need > have:
        raise AblError(
            f"{what}: training needs at least {need / GiB:.1f} GiB (fp32 weights, gradients "
            "and AdamW state of the encoder and predictor, and the EMA encoder's copy), more "
            f"than {where} {have / GiB:.1f} GiB; lower encoder.width, encoder.depth, "
            "predictor.width or predictor.depth"
        )
    if need * workers > have:
        raise AblError(
            f"{what}: {workers} workers training at once need at least "
            f"{need * workers / GiB:.1f} GiB ({need / GiB:.1f} each), more than {where} "
            f"{have / GiB:.1f} GiB; {fix or 'run fewer workers at once'}, or make the model "
            "smaller"
        )
