"""Frozen configuration dataclasses, one per section of the experiments file.

Everything the model side needs to know arrives through these objects; nothing is read from
globals or the environment. `orchestrator.spec` builds them from YAML and validates them, so
the checks here are limited to invariants the maths relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel frontend (reference recipe: 16 kHz, 25 ms window, 10 ms hop, 80 bins)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    eps: float = 1e-7  # inside log(mel + eps); keeps silence finite
    frames: int = 208  # model input length in frames (2.08 s at hop 160)


@dataclass(frozen=True)
class TaskDef:
    """A user's own labelled data set: `data.tasks.<name>: {format: esc50, root: /data/...}`."""

    name: str
    format: str  # a layout of model.data.byo.FORMATS
    root: str
    options: str = "{}"  # the loader's extra options, as JSON (hashable, part of the trial key)


@dataclass(frozen=True)
class DataConfig:
    """Where prepared audio lives and which slice of it a study uses."""

    cache: str | None = None  # None: $ABL_DATA or the user's cache folder
    # tasks whose train split is pretraining audio: unlabelled audio no probe task uses
    corpus: tuple[str, ...] = ("corpus-0ad", "corpus-wesnoth", "corpus-speech")
    sampling: str = "time"  # which clip a crop comes from: time | clip | source (features.py)
    max_clips_per_class: int | None = None  # a small slice for quick runs and tests
    # The context encoder hears each crop mixed with another crop of the batch, the other's
    # share of the power uniform in [0, mix) (BYOL-A's log-mixup-exp); the target encoder
    # hears it clean, so the prediction is also a denoising. 0 = off.
    mix: float = 0.0
    # The context encoder hears each crop (mixed, with `mix`) at a gain uniform in
    # [-gain_db, +gain_db] dB, one per crop; the target encoder hears it as recorded, so the
    # encoder learns what does not change with the level. 0 = off.
    gain_db: float = 0.0
    # A crop with more than this share of its frames digital silence (every band at the
    # log-mel floor: exact zeros in the audio) is drawn again, up to 8 times; 1 = off.
    max_silence: float = 1.0
    tasks: tuple[TaskDef, ...] = ()  # bring-your-own data sets, usable as probe or corpus tasks


@dataclass(frozen=True)
class EncoderConfig:
    patch: tuple[int, int] = (16, 16)  # (mel bins, frames) per patch
    # How a patch becomes a token: one linear map (ViT), or three linear stages over 4 x 4,
    # then 2 x 2, then 2 x 2 sub-patches with a norm and GELU between (hMLP); both see one
    # patch alone, so a masked patch never reaches a kept token
    stem: str = "linear"
    depth: int = 4
    width: int = 192
    heads: int = 3
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class PredictorConfig:
    depth: int = 2
    width: int = 96
    heads: int = 3
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class MaskConfig:
    """Which tokens the context encoder sees and which the predictor must predict."""

    strategy: str = "unstructured"  # unstructured | multiblock | time | frequency
    ratio: float = 0.6  # share of tokens that are targets (unstructured, time, frequency)
    target_blocks: int = 1  # multiblock: target rectangles; time / frequency: spans / bands
    block_scale: tuple[float, float] = (0.15, 0.2)  # multiblock: share of the grid per block
    block_aspect: tuple[float, float] = (0.75, 1.5)  # multiblock: time / frequency extent
    context_scale: tuple[float, float] = (0.85, 1.0)  # multiblock: share in the context block
    overlap: str = "disjoint"  # multiblock: disjoint (context minus targets) | allow
    curriculum: str = "none"  # A-JEPA: strategy whose chance grows over training, or none
    curriculum_end: float = 1.0  # that chance at the last step (0 at the first)
    per_crop: int = 1  # masks drawn per crop, sharing one crop (data2vec 2.0, EAT)


@dataclass(frozen=True)
class TargetConfig:
    """What the predictor regresses: the target encoder's tokens, normalised."""

    branch: str = "targets-only"  # targets-only (M2D, Riou) | full-input (I-JEPA)
    norm: str = "layer"  # none | layer | instance | batch
    top_k: int = 1  # average the outputs of the last k encoder layers (data2vec); 1 = last
    # What is predicted at the target positions: the target encoder's tokens (latent, the JEPA)
    # or the log-mel patches themselves (input, as a masked autoencoder), normalised as `norm`
    # says (layer: each patch standardised over its bins and frames, MAE's normalised pixels).
    source: str = "latent"  # latent | input


@dataclass(frozen=True)
class LossConfig:
    kind: str = "l2"  # l2 | smooth_l1 | cosine (normalised L2: 2 - 2 cos, halved)
    # The weight of the JEPA's own term, the predictor's guess of the target tokens. 0 leaves
    # the other terms (the clip-level one) to train the encoder alone: does token prediction
    # matter when they are there?
    token_weight: float = 1.0
    # VICReg-style terms on the context encoder's clip embeddings (mean over its tokens),
    # against collapse: a hinge on each channel's standard deviation across the batch, and
    # the squared off-diagonal covariances. 0 = off.
    var_weight: float = 0.0
    cov_weight: float = 0.0
    # A clip-level term (EAT's utterance loss): a small head on the context encoder's mean
    # token regresses the mean token of the target encoder over the whole input, layer-normed,
    # so the pooled embedding the probes read is trained directly. 0 = off.
    global_weight: float = 0.0
    # Which input that target's mean token is taken over: `same`, the whole crop the context
    # was masked from; `other`, another crop of the same recording, drawn independently (as
    # BYOL-A's two views of one clip), so the head predicts what a recording keeps across time
    # (voice, instrument, place) rather than what one crop holds.
    global_view: str = "same"  # same | other
    # What the clip-level term pools over: `clip`, every token (one mean token a clip);
    # `band`, the tokens of each frequency band (row of patches) apart, one mean token per band,
    # as the probes read a clip (each band's tokens averaged over time, the bands side by side).
    global_pool: str = "clip"  # clip | band
    # How the head's guess meets its target: `l2`, regressed (both layer-normed); `nce`, picked
    # out of the batch's targets by cosine similarity (InfoNCE at `global_temperature`), so
    # every clip's embedding must differ from the others' (global_pool: clip only).
    global_loss: str = "l2"  # l2 | nce
    global_temperature: float = 0.1
    # SIGReg (LeJEPA): the context encoder's clip embeddings (the mean of its tokens) pushed
    # towards an isotropic standard Gaussian, measured along `sigreg_slices` random
    # directions a step by the Epps-Pulley distance between each projection's empirical
    # characteristic function and the Gaussian's. Where VICReg's terms ask only for spread
    # and decorrelation, this asks for the whole distribution. 0 = off.
    sigreg_weight: float = 0.0
    sigreg_slices: int = 256


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    ema_start: float = 0.996
    ema_end: float = 1.0
    # auto | fp32 | bf16 (autocast). auto: the faster of the two on this machine, measured
    # (model/precision.py); fp32 where bf16 is not native. Replaces bf16: true / false.
    precision: str = "auto"
    log_every: int = 10  # steps between collapse measurements (loss etc. are kept every step)
    eval_every: int = 0  # steps between intermediate evaluations handed to the caller; 0: none
    checkpoint_every: int = 250  # steps between checkpoints when a checkpoint path is given
    # Frames of the crops pretraining draws; 0: frontend.frames. A shorter crop is placed at a
    # random time offset of the encoder's position grid (every position is trained), so the
    # encoder trains on short inputs, cheaper per crop, and is probed on frontend.frames.
    crop_frames: int = 0
    # Largest global gradient norm a step applies (a larger one is scaled down to it, before
    # AdamW); 0: no clipping. The norm before clipping is what `grad_norm` records.
    grad_clip: float = 0.0


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probes of the frozen encoder (EVAR protocol); the fit is exact, so unseeded."""

    tasks: tuple[str, ...] = ("env-sfx",)
    encoder: str = "context"  # context (online) | target (EMA)
    # cv: grouped, stratified k-fold over every labelled clip (each tested once; C chosen on
    # a validation fold inside the training folds); split: the task's fixed train/val/test
    protocol: str = "cv"
    folds: int = 5
    # cv: the k-fold partition drawn this many times (each clip tested once per draw), the
    # scores averaged: which clips train which fold's probe moves a score as much as a seed
    # does (docs/learning.md, tenth entry). split has one fixed partition and ignores it.
    repeats: int = 1
    layers: int = 1  # each token the average of the encoder's last k blocks (1: the output)
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    # L-BFGS stops once no entry of its objective's gradient exceeds this: 1e-3 fits 2.5x
    # faster than 1e-4 and moves a task's score by under a point (docs/learning.md, tenth entry)
    tolerance: float = 1e-4
    batch_size: int = 64
    knn_clips: int = 300  # train clips of the first task in the intermediate k-NN signal


@dataclass(frozen=True)
class RecipeConfig:
    """A full trial recipe: every section that changes what is trained or how it is scored."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def _build(cls: type, data: dict):
    """A config dataclass from `dataclasses.asdict` output (lists back to tuples)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # a setting added after the file was written keeps its default
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        elif f.name == "tasks" and cls is DataConfig:
            value = tuple(TaskDef(**t) for t in value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[f.name] = value
    return cls(**kwargs)


# `train.bf16` before `train.precision` replaced it: true meant bf16 where the hardware has it
# (now auto, which also measures that it is faster), false meant fp32.
BF16_TO_PRECISION = {True: "auto", False: "fp32"}


def _migrate_bf16(train: dict) -> dict:
    import warnings

    train = dict(train)
    old = bool(train.pop("bf16"))
    train.setdefault("precision", BF16_TO_PRECISION[old])
    warnings.warn(
        f"a stored config's train.bf16: {str(old).lower()} is read as train.precision: "
        f"{train['precision']} (train.bf16 was replaced by train.precision: auto | fp32 | bf16)",
        FutureWarning,
        stacklevel=3,
    )
    return train


def recipe_from_dict(data: dict) -> RecipeConfig:
    """Inverse of `dataclasses.asdict(recipe)`, for configs stored in checkpoints (a config
    stored before `train.precision` has its `train.bf16` migrated)."""
    if isinstance(data.get("train"), dict) and "bf16" in data["train"]:
        data = {**data, "train": _migrate_bf16(data["train"])}
    return _build(RecipeConfig, data)


def train_frames(recipe: RecipeConfig) -> int:
    """Frames of a pretraining crop: `train.crop_frames`, or the input length when 0."""
    return recipe.train.crop_frames or recipe.frontend.frames
