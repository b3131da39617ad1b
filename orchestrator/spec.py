"""The experiments file: YAML -> a validated, frozen `StudySpec`.

Every problem a user can cause is reported as one `AblError` line naming the file, the key and
the fix, before anything is written anywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from model.config import BF16_TO_PRECISION, DataConfig, RecipeConfig, TaskDef, TrainConfig
from model.data.byo import FORMATS, byo_source
from model.data.features import SAMPLINGS
from model.data.sources import TASKS
from model.embed import ENCODERS
from model.errors import NAME_MAX, AblError
from model.frontend import empty_mel_filters
from model.jepa import (
    BRANCHES,
    GLOBAL_LOSSES,
    GLOBAL_POOLS,
    GLOBAL_VIEWS,
    LOSSES,
    TARGET_NORMS,
    TARGET_SOURCES,
)
from model.masks import CURRICULUM, MASKERS, OVERLAP
from model.precision import PRECISIONS
from model.probe import PROTOCOLS
from model.vit import STEMS
from orchestrator.launcher import LauncherSpec, parse_launcher

PRUNING = ("none", "median")
# MLflow tracking URIs that name a database (the others are folders or servers).
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql")
MLFLOW_FIX = (  # what a refused storage.mlflow should be instead
    "use sqlite:///..., postgresql://..., mysql://..., mssql://... or http(s)://..., or delete "
    "the key for SQLite under the output folder"
)
DESIGNS = ("ofat", "factorial", "list")
MAX_REPEATS = 20  # probe.repeats: each draw is a full cross-validation of every task
# What grid.py and the reports call trials that are no axis' (reports/data.py's *_AXIS).
TRIAL_AXES = ("baseline", "factorial", "config", "reference")
# A grid grows as the product of the value counts (times the seeds); past this many trials a
# typo (one value too many on three axes) would silently queue days of training, so `abl run`
# asks for --yes first. Past the hard limit no file is accepted: checking every cell of the
# cross as a recipe alone would take minutes.
MAX_TRIALS = 256
MAX_FACTORIAL_CELLS = 20_000
# The recipe's sections by name: frontend -> FrontendConfig, ...
SECTIONS: dict[str, type] = typing.get_type_hints(RecipeConfig)
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
# Integers beyond 64 bits overflow the results database and the random generators.
MAX_INT = 2**63 - 1
MAX_SEED = 2**32 - 1  # what every generator a trial seeds accepts
# Sizes past these are typos (a digit too many), not research settings: refused when the file
# is loaded rather than when a trial allocates them (docs/axes.md).
SAMPLE_RATES = (1000, 384_000)  # Hz
MAX_N_FFT = 2**18  # samples: 16 s at 16 kHz
MAX_FRAMES = 100_000  # 1000 s at the 10 ms hop
MAX_DEPTH = 64  # transformer blocks, encoder and predictor
MAX_WIDTH = 8192  # channels
MAX_MLP_RATIO = 64.0
MAX_SAMPLES = 65_536  # a step's samples: train.batch_size x mask.per_crop
MAX_SLICES = 8192  # loss.sigreg_slices: random directions a step
MIN_EPS = 1e-30  # frontend.eps: float32 (normal from 1.2e-38) still adds it
MAX_EPS = 1e4  # frontend.eps: about the mel power of a full-scale sound at n_fft 400
MIN_TEMPERATURE = 1e-4  # loss.global_temperature: cosines / it stay finite in float32
MAX_GAIN_DB = 40.0  # data.gain_db: dB; a level change past it is surely a typo
# A factorial design validates every cell: count each frontend's empty filters once.
_empty_mel_filters = functools.lru_cache(maxsize=64)(empty_mel_filters)
# A number written as text that YAML 1.1 leaves a string: "1e-3", "5E+2", "-2.5e3".
FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class Axis:
    name: str  # what reports call it, e.g. "masking"
    path: str  # dotted path into the recipe, e.g. "mask.strategy"
    values: tuple[Any, ...]


@dataclass(frozen=True)
class ConfigEntry:
    """One configuration of a `design: list` study: recipe paths moved away from the baseline.

    Only the values are kept, not the resulting recipe, so the entry stays right when the
    baseline it applies to is replaced.
    """

    name: str  # what reports call it; by default the compact text of its values
    values: tuple[tuple[str, Any], ...]  # (dotted path, coerced value), in the file's order

    def apply(self, baseline: RecipeConfig) -> RecipeConfig:
        recipe = baseline
        for path, value in self.values:
            recipe = with_value(recipe, path, value)
        return recipe


@dataclass(frozen=True)
class StorageSpec:
    optuna: str | None = None  # Optuna storage URL; default SQLite under the output folder
    results: str | None = None  # results database URL; default SQLite under the output folder
    mlflow: str | None = None  # MLflow tracking URI; default SQLite under the output folder


@dataclass(frozen=True)
class StudySpec:
    source: str  # the experiments file, for messages
    study: str
    output: Path
    design: str
    seeds: tuple[int, ...]
    axes: tuple[Axis, ...]
    baseline: RecipeConfig
    storage: StorageSpec
    max_attempts: int = 2
    pruning: str = "none"  # none | median: stop trials whose k-NN curve trails the median
    # design: list: the entries. Its `axes` are then derived: one per dotted path the entries
    # set, named by the path, so every trial's settings still give a value per axis.
    configs: tuple[ConfigEntry, ...] = ()
    # design: factorial: the names of the axes crossed; empty crosses every axis. The others
    # stay at their baseline value in every cell.
    crossed: tuple[str, ...] = ()
    launcher: LauncherSpec = LauncherSpec()  # where the workers run: local or slurm

    @property
    def crossed_axes(self) -> tuple[Axis, ...]:
        """The axes a factorial design crosses, in the order of `axes`."""
        return tuple(a for a in self.axes if not self.crossed or a.name in self.crossed)

    def axis(self, name_or_path: str) -> Axis:
        for a in self.axes:
            if name_or_path in (a.name, a.path):
                return a
        known = ", ".join(a.name for a in self.axes)
        raise AblError(f"{self.source}: no axis {name_or_path!r} in this study; axes: {known}")

    @property
    def optuna_url(self) -> str:
        return self.storage.optuna or f"sqlite:///{(self.output / 'optuna.db').resolve()}"

    @property
    def results_url(self) -> str:
        return self.storage.results or f"sqlite:///{(self.output / 'results.db').resolve()}"

    @property
    def mlflow_uri(self) -> str:
        return self.storage.mlflow or f"sqlite:///{(self.output / 'mlflow.db').resolve()}"


# Settings earlier versions accepted, with why they went and what to do.
REMOVED = {
    "probe.seeds": "is gone: the probe is an exact convex fit with no seed; delete the key "
    "(replicate with the top-level seeds)",
}

TOP_KEYS = {
    "study",
    "output",
    "design",
    "seeds",
    "axes",
    "baseline",
    "storage",
    "max_attempts",
    "pruning",
    "configs",
    "crossed",
    "launcher",
}


def _suggest(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"


def _suggest_key(cls: type, key: str, where: str) -> str:
    """A did-you-mean for an unknown key of section `cls`; a setting of the recipe written one
    level too high or too low (an indent lost or added) is pointed at its real place."""
    if cls is RecipeConfig:
        homes = [name for name, sec in SECTIONS.items() if key in {f.name for f in fields(sec)}]
        if len(homes) == 1:
            return f"it is a setting of section {homes[0]}: write it as {where}.{homes[0]}.{key}"
    elif cls in SECTIONS.values() and key in SECTIONS:
        parent = where.rsplit(".", 1)[0]
        return f"{key} is a section of the recipe: write it as {parent}.{key}, not inside {where}"
    return _suggest(key, {f.name for f in fields(cls)})


def setting_text(value: Any) -> str:
    """A value as reports, trial labels and Optuna params show it: (16, 8) -> "16x8"."""
    if isinstance(value, tuple | list):
        return "x".join(str(v) for v in value)
    return str(value)


def _coerce(value: Any, hint: Any, where: str, source: str) -> Any:
    """Check one YAML value against a dataclass field type and convert lists to tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, source)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise AblError(f"{source}: {where} must be a list, got {value!r}")
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, item, f"{where}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise AblError(f"{source}: {where} must have {len(args)} items, got {value!r}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]", source)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if hint is bool:
        if not isinstance(value, bool):
            raise AblError(f"{source}: {where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AblError(f"{source}: {where} must be an integer, got {value!r}")
        if abs(value) > MAX_INT:
            raise AblError(
                f"{source}: {where} = {value} is too large to store (at most {MAX_INT}); "
                "use a smaller integer"
            )
        return value
    if hint is float:
        if isinstance(value, str) and FLOAT_TEXT.match(value.strip()):
            # YAML 1.1 (PyYAML) reads `1e-3` as text; YAML 1.2 and every reader mean a number.
            value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AblError(f"{source}: {where} must be a number, got {value!r}")
        number = float(value) if abs(value) <= 1e308 else math.inf
        if not math.isfinite(number):
            raise AblError(
                f"{source}: {where} = {value!r} is not a finite number; write a finite value "
                "(YAML's .inf, .nan and overflowing literals like 1e400 are not settings)"
            )
        return number
    if hint is str:
        if not isinstance(value, str):
            raise AblError(f"{source}: {where} must be a string, got {value!r}")
        if not value.strip():
            raise AblError(
                f"{source}: {where} is an empty text; give a value or delete the line for "
                "the default"
            )
        return value
    raise TypeError(f"unsupported config field type {hint!r} at {where}")


def _empty_section(where: str, source: str) -> AblError:
    return AblError(
        f"{source}: {where} is given but empty; indent its settings under it, or delete the "
        f"line `{where.rsplit('.', 1)[-1]}:` to keep the defaults"
    )


def _migrate_bf16(data: dict, where: str, source: str) -> dict:
    """`train.bf16` (before `train.precision` replaced it) read as that precision: true is auto
    (bf16 where the hardware has it and it measures faster), false is fp32; a warning says so."""
    old = data["bf16"]
    if not isinstance(old, bool):
        raise AblError(
            f"{source}: {where}.bf16 must be true or false, got {old!r}; better, replace it by "
            f"{where}.precision: auto, fp32 or bf16"
        )
    if "precision" in data:
        raise AblError(
            f"{source}: {where}.bf16 and {where}.precision are both set; delete bf16 "
            "(precision replaced it)"
        )
    new = BF16_TO_PRECISION[old]
    warnings.warn(
        f"{source}: {where}.bf16: {str(old).lower()} is read as {where}.precision: {new} "
        f"(bf16 was replaced by precision: auto | fp32 | bf16); write precision: {new}",
        FutureWarning,
        stacklevel=3,
    )
    return {("precision" if k == "bf16" else k): new if k == "bf16" else v for k, v in data.items()}


def build_dataclass(cls: type, data: Any, where: str, source: str) -> Any:
    """Build a frozen config dataclass from a YAML mapping, rejecting unknown keys.

    A section that is written but holds nothing (`baseline:` alone, often an indent lost) is
    refused rather than read as "all defaults": the file would run something other than what
    its author sees. Leave a section out to keep its defaults."""
    if data is None or data == {}:
        raise _empty_section(where, source)
    if not isinstance(data, dict):
        raise AblError(f"{source}: {where} must be a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    if cls is TrainConfig and "bf16" in data:
        data = _migrate_bf16(data, where, source)
    for key, value in data.items():
        gone = REMOVED.get(f"{where.rsplit('.', 1)[-1]}.{key}")
        if gone:
            raise AblError(f"{source}: {where}.{key} {gone}")
        if key not in known:
            raise AblError(
                f"{source}: unknown key {where}.{key}; {_suggest_key(cls, str(key), where)}"
            )
        hint = hints[key]
        if cls is DataConfig and key == "tasks":
            kwargs[key] = _parse_task_defs(value, f"{where}.{key}", source)
        elif cls is DataConfig and key == "cache" and value is not None:
            cache = _coerce(value, hint, f"{where}.{key}", source)
            kwargs[key] = str(_folder_beside(cache, "data.cache", source))
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, f"{where}.{key}", source)
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}", source)
    return cls(**kwargs)


def _expand(value: str | Path, key: str, source: str) -> Path:
    """`value` as a path with `~` expanded, each of its names one the filesystem can hold."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:
        raise AblError(
            f"{source}: {key} = {value}: the home folder of its `~` is unknown; write the full path"
        ) from None
    long = [p for p in path.parts if len(os.fsencode(p)) > NAME_MAX]
    if long:
        raise AblError(
            f"{source}: {key}: the name {long[0][:40]}... is {len(os.fsencode(long[0]))} bytes, "
            f"over the {NAME_MAX} a filesystem allows; choose a shorter one"
        )
    return path


def _folder_beside(value: str | Path, key: str, source: str) -> Path:
    """A folder setting (`output`, `data.cache`) as a path: `~` expanded, a relative one taken
    from the experiments file's folder, whatever folder abl is started from."""
    if not str(value).strip():
        fix = "drop the flag to use the file's output" if key == "--output" else "delete the key"
        raise AblError(f"{source}: {key} is empty; name a folder, or {fix}")
    if "\0" in str(value):
        raise AblError(
            f"{source}: {key} = {str(value)!r} holds a NUL byte, which no path can; write the "
            "folder path without it"
        )
    folder = _expand(value, key, source)
    return folder if folder.is_absolute() else Path(source).parent / folder


def _parse_task_defs(raw: Any, where: str, source: str) -> tuple[TaskDef, ...]:
    """`{name: {format: esc50, root: /data/ESC-50-master, test_fold: 5}}` -> TaskDefs."""
    if raw is None or raw == {}:
        raise _empty_section(where, source)
    if not isinstance(raw, dict):
        raise AblError(f"{source}: {where} must map task names to {{format: ..., root: ...}}")
    base = Path(source).parent
    out = []
    for name, body in raw.items():
        if not isinstance(name, str):  # YAML reads 123 as a number, yes as True
            raise AblError(
                f"{source}: {where} has a task named {name!r}, which YAML reads as "
                f"{type(name).__name__}; quote it ('{name}') or choose a name with letters"
            )
        if not TASK_NAME.fullmatch(name):
            raise AblError(f"{source}: {where}.{name}: a task name is letters, digits, '-', '_'")
        if name in TASKS:
            raise AblError(f"{source}: {where}.{name} is a built-in task; choose another name")
        if not isinstance(body, dict) or "format" not in body or "root" not in body:
            raise AblError(
                f"{source}: {where}.{name} needs `format` and `root`, e.g. "
                "{format: esc50, root: /data/ESC-50-master}"
            )
        if not isinstance(body["root"], str) or not body["root"].strip():
            raise AblError(
                f"{source}: {where}.{name}.root must be the path of the data set's folder "
                f"(or file), got {body['root']!r}"
            )
        options = {k: v for k, v in body.items() if k not in ("format", "root")}
        for k in options:
            if not isinstance(k, str) or k == "name":
                raise AblError(
                    f"{source}: {where}.{name} has an option {k!r}; the task's name is its "
                    "key, and its options are the format's settings (docs/byo.md)"
                )
        layout = FORMATS.get(str(body["format"]).strip().lower())
        hints = typing.get_type_hints(layout.__init__) if layout else {}
        for k, v in options.items():
            if k in hints and k not in ("name", "root", "return"):
                options[k] = _coerce(v, hints[k], f"{where}.{name}.{k}", source)
        root = _expand(body["root"], f"{where}.{name}.root", source)
        if not root.is_absolute():
            root = base / root  # relative to the experiments file, like `output`
        try:
            byo_source(str(body["format"]), name, root, **options)
        except AblError as e:
            raise AblError(f"{source}: {e}") from None
        out.append(
            TaskDef(name, str(body["format"]), str(root), json.dumps(options, sort_keys=True))
        )
    return tuple(out)


def recipe_field(path: str, source: str, what: str = "axis path") -> tuple[type, str]:
    """(section dataclass, field) for a dotted recipe path like "mask.ratio".

    `what` names where the path was written ("axis path", "configs[2] path") so the message
    points at the right line of the file.
    """
    parts = path.split(".")
    hints = typing.get_type_hints(RecipeConfig)
    sections = {f.name for f in fields(RecipeConfig)}
    if len(parts) != 2 or parts[0] not in sections:
        every = [f"{s}.{f.name}" for s in sorted(sections) for f in fields(hints[s])]
        close = difflib.get_close_matches(path, every, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AblError(
            f"{source}: {what} {path!r} must be section.setting with a section among "
            f"{', '.join(sorted(sections))}{hint}"
        )
    section = hints[parts[0]]
    names = {f"{parts[0]}.{f.name}" for f in fields(section)}
    if path not in names:
        raise AblError(f"{source}: unknown {what} {path!r}; {_suggest(path, names)}")
    return section, parts[1]


def _check_varies(path: str, source: str, what: str) -> None:
    """An axis or a list entry may move only settings that change what a trial computes."""
    # grid imports this module; which settings leave the key is its business.
    from orchestrator.grid import NON_SEMANTIC

    section, key = path.split(".")
    if (section, key) in NON_SEMANTIC:
        raise AblError(
            f"{source}: {what} {path!r} changes where or how verbosely a trial runs, not what "
            "it computes (it is not part of the trial key), so it cannot vary between trials; "
            f"set it once under baseline.{path}"
        )
    if path == "probe.tasks":
        raise AblError(
            f"{source}: {what} 'probe.tasks' cannot vary between trials: every trial is probed "
            "on every task of baseline.probe.tasks (adding a task there later probes the "
            "finished trials and retrains nothing); list the tasks under baseline.probe.tasks"
        )
    hint = typing.get_type_hints(SECTIONS[section])[key]
    if any(dataclasses.is_dataclass(a) for a in (hint, *typing.get_args(hint))):
        raise AblError(
            f"{source}: {what} {path!r} cannot vary between trials; declare it once under "
            f"baseline.{path} (vary the pretraining audio with data.corpus)"
        )


def with_value(recipe: RecipeConfig, path: str, value: Any) -> RecipeConfig:
    section, key = path.split(".")
    return dataclasses.replace(
        recipe, **{section: dataclasses.replace(getattr(recipe, section), **{key: value})}
    )


def _check_every_setting(r: RecipeConfig, bad: typing.Callable[[str, str], AblError]) -> None:
    """What holds for every setting of every section, present and future, whatever its
    meaning: numbers are finite and not negative; a list that has items by default is not
    emptied and names nothing twice. The checks after this one are the settings' own."""
    for section, cls in SECTIONS.items():
        values = getattr(r, section)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            value, key = getattr(values, f.name), f"{section}.{f.name}"
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if not math.isfinite(v):
                    raise bad(key, f"= {v} is not a finite number; write a finite value")
                if v < 0:
                    raise bad(key, f"= {setting_text(value)} must not be negative")
            args = typing.get_args(hints[f.name])
            if not (isinstance(value, tuple) and len(args) == 2 and args[1] is Ellipsis):
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default
            if not value and default:
                example = ", ".join(map(str, default))
                raise bad(key, f"is empty; list at least one item, e.g. [{example}]")
            seen: set = set()  # 1, 1.0 and True are one item here, as they are to ==
            for v in value:
                if v in seen:
                    raise bad(key, f"lists {v!r} twice; list each item once")
                seen.add(v)


def validate_recipe(r: RecipeConfig, where: str, source: str) -> None:
    """Impossible values, each reported with its key and a fix."""

    def bad(key: str, msg: str) -> AblError:
        return AblError(f"{source}: {where}{key} {msg}")

    def one_of(key: str, value: str, known: Collection[str]) -> None:
        if value not in known:
            raise bad(key, f"= {value!r}; use one of {', '.join(known)}")

    def within(key: str, value: float, low: float, high: float, what: str) -> None:
        if not low <= value <= high:
            raise bad(key, f"= {value} must be in [{low:g}, {high:g}]: {what}")

    _check_every_setting(r, bad)
    fe, enc, pred = r.frontend, r.encoder, r.predictor
    if not fe.eps >= MIN_EPS:
        raise bad(
            "frontend.eps",
            f"= {fe.eps} must be at least {MIN_EPS:g}: it keeps log(mel) of silence finite, and "
            "float32 arithmetic drops a smaller one (log(0) = -inf); the default is 1e-7",
        )
    if not fe.eps <= MAX_EPS:
        raise bad(
            "frontend.eps",
            f"= {fe.eps} must be at most {MAX_EPS:g}: a full-scale sound's mel power is about "
            "that, so a larger floor flattens every log-mel to one value; the default is 1e-7",
        )
    if not SAMPLE_RATES[0] <= fe.sample_rate <= SAMPLE_RATES[1]:
        low, high = SAMPLE_RATES
        raise bad(
            "frontend.sample_rate", f"= {fe.sample_rate} Hz is outside {low}..{high}; use 16000"
        )
    if fe.hop <= 0 or fe.n_fft <= 0 or fe.hop > fe.n_fft:
        raise bad("frontend.hop", "must be positive and at most frontend.n_fft")
    if not 0 <= fe.f_min < fe.f_max <= fe.sample_rate / 2:
        raise bad("frontend.f_max", "must exceed f_min and be at most sample_rate / 2")
    if fe.frames > MAX_FRAMES:
        raise bad(
            "frontend.frames",
            f"= {fe.frames} is past {MAX_FRAMES} frames, surely a typo; use a length like 208 "
            "(2.08 s at hop 160)",
        )
    if fe.n_fft > MAX_N_FFT:
        raise bad(
            "frontend.n_fft",
            f"= {fe.n_fft} is past {MAX_N_FFT} samples, surely a typo; use a window like 400 "
            "(25 ms at 16 kHz)",
        )
    if fe.n_fft // 2 >= fe.frames * fe.hop:
        raise bad(
            "frontend.n_fft",
            f"= {fe.n_fft} is too long for one input: its reflect padding (n_fft // 2 = "
            f"{fe.n_fft // 2} samples) must be shorter than frontend.frames x frontend.hop = "
            f"{fe.frames * fe.hop} samples; use a smaller n_fft or more frames",
        )
    bins = fe.n_fft // 2 + 1
    # Each bin lies inside at most two filters: past 2 x bins, filters are surely empty.
    empty = fe.n_mels - 2 * bins if fe.n_mels > 2 * bins else _empty_mel_filters(fe)
    if empty:
        some = "at least " if fe.n_mels > 2 * bins else ""
        raise bad(
            "frontend.n_mels",
            f"= {fe.n_mels} leaves {some}{empty} mel filters empty: no frequency bin of "
            f"frontend.n_fft = {fe.n_fft} falls inside their band of frontend.f_min..f_max = "
            f"{fe.f_min:g}..{fe.f_max:g} Hz, so they are constant rows; use fewer n_mels, a "
            "larger n_fft, or a wider f_min..f_max",
        )
    if not 0 < r.mask.ratio < 1:
        raise bad("mask.ratio", f"= {r.mask.ratio} is outside (0, 1); use a value like 0.6")
    one_of("mask.strategy", r.mask.strategy, MASKERS)
    m = r.mask
    if m.target_blocks < 1:
        raise bad("mask.target_blocks", f"= {m.target_blocks} must be at least 1")
    for key, (lo, hi), top in (
        ("mask.block_scale", m.block_scale, 1.0),
        ("mask.context_scale", m.context_scale, 1.0),
        ("mask.block_aspect", m.block_aspect, math.inf),
    ):
        if not 0 < lo <= hi <= top:
            limit = "1" if top == 1.0 else "infinity"
            raise bad(key, f"= [{lo}, {hi}] must be a range 0 < low <= high <= {limit}")
    one_of("mask.overlap", m.overlap, OVERLAP)
    one_of("mask.curriculum", m.curriculum, CURRICULUM)
    if not 0 <= m.curriculum_end <= 1:
        raise bad("mask.curriculum_end", f"= {m.curriculum_end} must be within [0, 1]")
    one_of("target.branch", r.target.branch, BRANCHES)
    if not 1 <= r.target.top_k <= enc.depth:
        raise bad(
            "target.top_k",
            f"= {r.target.top_k} must be between 1 and encoder.depth = {enc.depth}",
        )
    one_of("target.norm", r.target.norm, TARGET_NORMS)
    one_of("target.source", r.target.source, TARGET_SOURCES)
    one_of("loss.global_view", r.loss.global_view, GLOBAL_VIEWS)
    one_of("loss.global_pool", r.loss.global_pool, GLOBAL_POOLS)
    one_of("loss.global_loss", r.loss.global_loss, GLOBAL_LOSSES)
    if r.loss.global_loss == "nce" and r.loss.global_pool != "clip":
        raise bad("loss.global_loss", "= nce needs loss.global_pool: clip (one embedding a clip)")
    within(
        "loss.global_temperature",
        r.loss.global_temperature,
        MIN_TEMPERATURE,
        1e3,
        "the InfoNCE logits are divided by it, and under 1e-4 they overflow float32 (the "
        "default is 0.1)",
    )
    one_of("loss.kind", r.loss.kind, LOSSES)
    lc = r.loss
    if not lc.token_weight and not (
        lc.global_weight or lc.var_weight or lc.cov_weight or lc.sigreg_weight
    ):
        raise bad(
            "loss.token_weight",
            "= 0 and no other loss term is on, so nothing trains the encoder; set "
            "loss.global_weight above 0 (the clip-level term), or token_weight above 0",
        )
    pf, pt = enc.patch
    if pf <= 0 or pt <= 0 or fe.n_mels % pf or fe.frames % pt:
        raise bad(
            "encoder.patch",
            f"= [{pf}, {pt}] does not tile the {fe.n_mels} x {fe.frames} input; choose sizes "
            "that divide frontend.n_mels and frontend.frames",
        )
    one_of("encoder.stem", enc.stem, STEMS)
    if enc.stem == "hmlp" and (pf % 4 or pt % 4):
        raise bad(
            "encoder.stem",
            f"= hmlp splits a patch into 4 x 4 sub-patches; encoder.patch = [{pf}, {pt}] "
            "needs both sizes divisible by 4 (or use stem: linear)",
        )
    tokens = (fe.n_mels // pf) * (fe.frames // pt)
    if tokens < 2:
        raise bad("encoder.patch", "leaves fewer than 2 tokens; use smaller patches")
    if m.target_blocks > tokens:
        raise bad(
            "mask.target_blocks",
            f"= {m.target_blocks} exceeds the {tokens} patches of the {fe.n_mels} x "
            f"{fe.frames} input with encoder.patch = [{pf}, {pt}]; use at most {tokens}",
        )
    for key, net in (("encoder", enc), ("predictor", pred)):
        for name, value, top in (
            ("depth", net.depth, MAX_DEPTH),
            ("width", net.width, MAX_WIDTH),
            ("mlp_ratio", net.mlp_ratio, MAX_MLP_RATIO),
        ):
            if value > top:
                raise bad(f"{key}.{name}", f"= {value} is past {top:g}, surely a typo")
    for key, width, heads in (
        ("encoder", enc.width, enc.heads),
        ("predictor", pred.width, pred.heads),
    ):
        if width <= 0 or heads <= 0 or width % heads or (width // heads) % 2:
            raise bad(
                f"{key}.width",
                f"= {width} must be divisible by {key}.heads = {heads} into an even head size",
            )
    if enc.depth < 1 or pred.depth < 1:
        raise bad("encoder.depth", "and predictor.depth must be at least 1")
    if enc.mlp_ratio <= 0 or pred.mlp_ratio <= 0:
        raise bad("encoder.mlp_ratio", "and predictor.mlp_ratio must be positive")
    if enc.width % 4:
        raise bad("encoder.width", "must be a multiple of 4 (2-D sin-cos positions)")
    tc = r.train
    if tc.steps < 1 or tc.batch_size < 1:
        raise bad("train.steps", "and train.batch_size must be at least 1")
    if not tc.lr > 0:
        raise bad("train.lr", f"= {tc.lr} must be positive")
    if not 0 <= tc.ema_start <= tc.ema_end <= 1:
        raise bad("train.ema_start", "must satisfy 0 <= ema_start <= ema_end <= 1")
    if tc.warmup_steps < 0 or tc.log_every < 1:
        raise bad("train.warmup_steps", "must be >= 0 and train.log_every >= 1")
    if tc.warmup_steps > tc.steps:
        raise bad(
            "train.warmup_steps",
            f"= {tc.warmup_steps} is longer than training (train.steps = {tc.steps}): the "
            "learning rate would never reach its peak; use at most train.steps warmup steps",
        )
    if tc.batch_size > MAX_SAMPLES:
        raise bad(
            "train.batch_size",
            f"= {tc.batch_size} is past {MAX_SAMPLES} crops a step, surely a typo; use a "
            "batch like 32",
        )
    if tc.weight_decay < 0:
        raise bad("train.weight_decay", f"= {tc.weight_decay} must be >= 0")
    one_of("train.precision", tc.precision, PRECISIONS)
    if tc.eval_every < 0 or tc.checkpoint_every < 0:
        raise bad("train.eval_every", "and train.checkpoint_every must be >= 0 (0: off)")
    if not r.probe.tasks:
        raise bad("probe.tasks", "is empty; list at least one task, e.g. [env-sfx]")
    known_tasks = {*TASKS, *(t.name for t in r.data.tasks)}
    for key, names in (("probe.tasks", r.probe.tasks), ("data.corpus", r.data.corpus)):
        for n in names:
            if n not in known_tasks:
                raise bad(
                    key,
                    f"names unknown task {n!r}; {_suggest(n, known_tasks)} "
                    "(declare your own under data.tasks)",
                )
    own = {t.name: t.format for t in r.data.tasks}
    for n in r.probe.tasks:
        if getattr(TASKS.get(n), "unlabelled", False):
            raise bad(
                "probe.tasks",
                f"lists {n!r}, unlabelled pretraining audio; probe labelled tasks only",
            )
        if n in own and getattr(FORMATS.get(own[n].strip().lower()), "unlabelled", False):
            raise bad(
                "probe.tasks",
                f"lists {n!r}, a task of format {own[n]} (unlabelled pretraining audio, nothing "
                "to probe); name it under data.corpus and probe labelled tasks (format folder, "
                "csv, ...) only",
            )
    if not r.data.corpus:
        raise bad("data.corpus", "is empty; list at least one task, e.g. [env-sfx]")
    one_of("probe.encoder", r.probe.encoder, ENCODERS)
    if r.probe.knn_clips < 1 or r.probe.batch_size < 1:
        raise bad("probe.knn_clips", "and probe.batch_size must be at least 1")
    if any(c <= 0 for c in r.probe.c_grid) or not r.probe.c_grid:
        raise bad("probe.c_grid", "must list positive regularisation values")
    if not 0 < r.probe.tolerance <= 0.1:
        raise bad(
            "probe.tolerance",
            f"= {r.probe.tolerance} must be in (0, 0.1]: the largest gradient entry at which "
            "the probe's fit stops (1e-4 exact, 1e-3 faster)",
        )
    if r.data.max_clips_per_class is not None and r.data.max_clips_per_class < 1:
        raise bad("data.max_clips_per_class", "must be at least 1 or null")
    one_of("data.sampling", r.data.sampling, SAMPLINGS)
    crop = r.train.crop_frames
    if crop and not (crop >= enc.patch[1] and crop % enc.patch[1] == 0 and crop <= fe.frames):
        raise bad(
            "train.crop_frames",
            f"= {crop}: use 0 (the input length) or a multiple of encoder.patch's "
            f"{enc.patch[1]} frames up to frontend.frames = {fe.frames}",
        )
    within(
        "data.max_silence",
        r.data.max_silence,
        0.0,
        1.0,
        "the largest share of a crop's frames that may be digital silence before it is drawn "
        "again (1 = off)",
    )
    within(
        "data.gain_db",
        r.data.gain_db,
        0.0,
        MAX_GAIN_DB,
        "the largest level change in dB the context encoder hears a crop at (0 = off)",
    )
    if not 0.0 <= r.data.mix < 1.0:
        raise bad("data.mix", f"= {r.data.mix} must be in [0, 1): the other crop's largest share")
    if r.mask.per_crop < 1:
        raise bad("mask.per_crop", f"= {r.mask.per_crop} must be at least 1")
    if r.mask.per_crop * r.train.batch_size > MAX_SAMPLES:
        raise bad(
            "mask.per_crop",
            f"= {r.mask.per_crop} makes train.batch_size x mask.per_crop = "
            f"{r.train.batch_size * r.mask.per_crop} samples a step, past {MAX_SAMPLES}, surely "
            "a typo; use fewer masks per crop (EAT uses 16) or a smaller batch",
        )
    if r.loss.var_weight < 0 or r.loss.cov_weight < 0:
        raise bad("loss.var_weight", "and loss.cov_weight must be >= 0 (0: off)")
    if not 1 <= r.loss.sigreg_slices <= MAX_SLICES:
        raise bad(
            "loss.sigreg_slices",
            f"= {r.loss.sigreg_slices} must be between 1 and {MAX_SLICES} (LeJEPA uses 256 to "
            "1024 random directions a step)",
        )
    one_of("probe.protocol", r.probe.protocol, PROTOCOLS)
    if r.probe.folds < 3:
        raise bad(
            "probe.folds",
            f"= {r.probe.folds} must be at least 3 (each fold tests once, the next one "
            "validates the regularisation, the others train)",
        )
    if not 1 <= r.probe.repeats <= MAX_REPEATS:
        raise bad(
            "probe.repeats",
            f"= {r.probe.repeats} must be between 1 and {MAX_REPEATS} (draws of the folds, "
            "each a full cross-validation; 3 averages out most of a split's luck)",
        )
    if not 1 <= r.probe.layers <= enc.depth:
        raise bad(
            "probe.layers",
            f"= {r.probe.layers} must be between 1 and encoder.depth = {enc.depth}",
        )
    shared = sorted(set(r.data.corpus) & set(r.probe.tasks))
    if shared and r.probe.protocol == "cv":
        raise bad(
            "data.corpus",
            f"lists probe task {shared[0]!r}: under probe.protocol: cv every labelled clip is "
            "a test clip once, so pretraining on it leaks test audio; pretrain on unlabelled "
            "audio (corpus-0ad, corpus-wesnoth, corpus-speech, or your own recordings as a task "
            "of format corpus) or use probe.protocol: split",
        )


def _is_recipe_path(text: str) -> bool:
    section, _, key = text.partition(".")
    return section in SECTIONS and key in {f.name for f in fields(SECTIONS[section])}


def _label_problem(name: str) -> str | None:
    """Why `name` cannot label trials (an axis or a configs entry), or None. Labels are printed,
    joined into `axis=value,axis=value` and looked up by `--axis`: they must print as written
    and parse back."""
    if not name.isprintable():
        return "it holds a control character (a newline, a tab, a terminal escape)"
    if name != name.strip():
        return "it starts or ends with a space"
    for sign in ("=", ","):
        if sign in name:
            return f"it holds {sign!r} (trials are labelled name=value,name=value)"
    if name.casefold() in TRIAL_AXES:
        return f"{name!r} is what abl calls its own trials ({', '.join(TRIAL_AXES)})"
    return None


def _check_axis_name(name: Any, source: str) -> None:
    """An axis name labels trials (`name=value`) and names them in `crossed` and `--axis`."""
    if not isinstance(name, str) or not name.strip():
        raise AblError(
            f"{source}: axes has an axis named {name!r}; an axis name must be a non-empty "
            "text, e.g. masking (or the section.setting path it varies)"
        )
    why = _label_problem(name)
    if why:
        raise AblError(f"{source}: axes.{name!r}: {why}; rename the axis, e.g. masking")


def _parse_axes(raw: Any, source: str) -> tuple[Axis, ...]:
    """Axes with their values coerced; which values must be valid recipes depends on the design."""
    if not isinstance(raw, dict) or not raw:
        raise AblError(
            f"{source}: axes must be a non-empty mapping, e.g. "
            "axes: {masking: {path: mask.strategy, values: [unstructured, time]}}"
        )
    axes: list[Axis] = []
    for name, body in raw.items():
        _check_axis_name(name, source)
        if isinstance(body, list):
            path, values = name, body
        elif isinstance(body, dict):
            unknown = set(body) - {"path", "values"}
            if unknown:
                raise AblError(
                    f"{source}: unknown key axes.{name}.{sorted(unknown)[0]}; "
                    "an axis has `path` and `values`"
                )
            path, values = body.get("path", name), body.get("values")
        else:
            raise AblError(
                f"{source}: axes.{name} must be a list of values or "
                "{path: section.setting, values: [...]}"
            )
        if isinstance(body, dict) and "values" not in body:
            raise AblError(
                f"{source}: axes.{name}.values is missing; list the values to try, e.g. "
                "values: [unstructured, time]"
            )
        if values is not None and not isinstance(values, list):
            raise AblError(
                f"{source}: axes.{name}.values must be a list, got {values!r}; write the "
                "values in brackets, e.g. values: [unstructured, time]"
            )
        if not values:
            raise AblError(f"{source}: axes.{name}.values is empty; list at least one value")
        section, key = recipe_field(str(path), source)
        _check_varies(str(path), source, "axis path")
        if name != path and _is_recipe_path(name):
            raise AblError(
                f"{source}: axes.{name} varies {path} but is named after the setting {name}, "
                f"so its trials would read {name}=<a value of {path}>; name it {path} or a word "
                "that is no recipe path (e.g. masking)"
            )
        hint = typing.get_type_hints(section)[key]
        coerced = tuple(
            _coerce(v, hint, f"axes.{name}.values[{i}]", source) for i, v in enumerate(values)
        )
        if len(set(map(repr, coerced))) != len(coerced):
            raise AblError(f"{source}: axes.{name}.values has duplicates; list each value once")
        if any(a.path == path for a in axes) or any(a.name == name for a in axes):
            raise AblError(f"{source}: axis {name!r} ({path}) is given twice; merge them")
        axes.append(Axis(name, str(path), coerced))
    return tuple(axes)


def _validate_around_baseline(axes: tuple[Axis, ...], baseline: RecipeConfig, source: str) -> None:
    """Each value with every other setting at the baseline: the cells one factor at a time."""
    for a in axes:
        for v in a.values:
            validate_recipe(with_value(baseline, a.path, v), f"axes.{a.name} value {v!r}: ", source)


def cell_text(cell: tuple[tuple[Axis, Any], ...]) -> str:
    """A factorial cell as "masking=time,mask.ratio=0.4" (axis names, in the order of axes)."""
    return ",".join(f"{a.name}={setting_text(v)}" for a, v in cell)


def factorial_cells(
    baseline: RecipeConfig, axes: tuple[Axis, ...]
) -> list[tuple[tuple[tuple[Axis, Any], ...], RecipeConfig]]:
    """Every combination of the axes' values, each with its recipe (the baseline elsewhere)."""
    cells = []
    for combo in itertools.product(*(a.values for a in axes)):
        cell = tuple(zip(axes, combo, strict=True))
        recipe = baseline
        for a, v in cell:
            recipe = with_value(recipe, a.path, v)
        cells.append((cell, recipe))
    return cells


def _parse_crossed(raw: Any, axes: tuple[Axis, ...], source: str) -> tuple[str, ...]:
    """`crossed: [masking, mask.ratio]` -> axis names (a path names its axis too)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise AblError(
            f"{source}: crossed must be a non-empty list of axis names, e.g. "
            "crossed: [masking, mask.ratio]; omit it to cross every axis"
        )
    names: list[str] = []
    for item in raw:
        match = next((a for a in axes if str(item) in (a.name, a.path)), None)
        if match is None:
            known = [a.name for a in axes]
            close = difflib.get_close_matches(str(item), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"axes: {', '.join(known)}"
            raise AblError(f"{source}: crossed names unknown axis {item!r}; {hint}")
        if match.name in names:
            raise AblError(f"{source}: crossed lists axis {match.name!r} twice; list it once")
        names.append(match.name)
    return tuple(names)


def _validate_factorial(
    axes: tuple[Axis, ...], crossed: tuple[str, ...], baseline: RecipeConfig, source: str
) -> None:
    """Refuse a cross too large to run, then check every cell as the recipe it will train.

    Crossed values are checked in their cells, not beside the baseline: widths [128, 256] and
    heads [4, 8] are fine crossed, although 128 with the baseline's 3 heads is not.
    """
    on = tuple(a for a in axes if not crossed or a.name in crossed)
    n = math.prod(len(a.values) for a in on)
    if n > MAX_FACTORIAL_CELLS:
        sizes = " x ".join(f"{len(a.values)} ({a.name})" for a in on)
        raise AblError(
            f"{source}: design: factorial crosses {sizes} = {n} cells, more than abl accepts "
            f"({MAX_FACTORIAL_CELLS}); use fewer values, cross fewer axes with `crossed:`, "
            "or use design: ofat"
        )
    # Axes left out of the cross never leave the baseline, but their values must still be
    # settings the recipe accepts, as they would be one factor at a time.
    _validate_around_baseline(tuple(a for a in axes if a not in on), baseline, source)
    for cell, recipe in factorial_cells(baseline, on):
        validate_recipe(recipe, f"factorial cell {cell_text(cell)}: ", source)


def _parse_configs(raw: Any, baseline: RecipeConfig, source: str) -> tuple[ConfigEntry, ...]:
    """`configs: [{name: m2d-like, mask.ratio: 0.7}, ...]`, values checked as axis values are."""
    # grid imports this module; the content key is its business, so borrow it at call time.
    from orchestrator.grid import trial_key

    if not isinstance(raw, list) or not raw:
        raise AblError(
            f"{source}: configs must be a non-empty list of entries like "
            "{name: m2d-like, mask.strategy: unstructured, mask.ratio: 0.7}"
        )
    entries: list[ConfigEntry] = []
    seen: list[tuple[str, str]] = [("the baseline", trial_key(baseline, 0, None))]
    for i, body in enumerate(raw):
        where = f"configs[{i}]"
        if not isinstance(body, dict):
            raise AblError(
                f"{source}: {where} must be a mapping of section.setting: value with an "
                f"optional name, e.g. {{name: m2d-like, mask.ratio: 0.7}}; got {body!r}"
            )
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise AblError(f"{source}: {where}.name must be a non-empty text, got {name!r}")
        if name is not None and name.casefold() == "baseline":
            raise AblError(
                f"{source}: {where}.name {name!r} is the name of the baseline's trials, which "
                "always run beside the entries; give the entry another name"
            )
        why = None if name is None else _label_problem(name)
        if why:
            raise AblError(f"{source}: {where}.name {name!r}: {why}; rename the entry")
        values: list[tuple[str, Any]] = []
        for path, value in body.items():
            if path == "name":
                continue
            section, key = recipe_field(str(path), source, f"{where} path")
            _check_varies(str(path), source, f"{where} path")
            hint = typing.get_type_hints(section)[key]
            values.append((str(path), _coerce(value, hint, f"{where}.{path}", source)))
        if not values:
            raise AblError(
                f"{source}: {where} sets no recipe path; add one like mask.ratio: 0.7 "
                "or delete the entry"
            )
        entry = ConfigEntry(
            name or ",".join(f"{p}={setting_text(v)}" for p, v in values), tuple(values)
        )
        recipe = entry.apply(baseline)
        validate_recipe(recipe, f"{where} ({entry.name}): ", source)
        config = trial_key(recipe, 0, None)
        for other, other_config in seen:
            if config == other_config:
                fix = (
                    ", which always runs; change a setting or delete the entry"
                    if other == "the baseline"
                    else "; delete one of them"
                )
                raise AblError(
                    f"{source}: {where} ({entry.name}) runs the same trial as {other}{fix}"
                )
        for j, e in enumerate(entries):
            if e.name == entry.name:
                raise AblError(
                    f"{source}: {where}.name {entry.name!r} is also the name of configs[{j}]; "
                    "give each entry its own name"
                )
        seen.append((f"{where} ({entry.name})", config))
        entries.append(entry)
    return tuple(entries)


def _config_axes(configs: tuple[ConfigEntry, ...]) -> tuple[Axis, ...]:
    """The axes of a list design: each path any entry sets, with the values the entries give."""
    by_path: dict[str, dict[str, Any]] = {}
    for c in configs:
        for path, value in c.values:
            by_path.setdefault(path, {}).setdefault(repr(value), value)
    return tuple(Axis(p, p, tuple(vals.values())) for p, vals in by_path.items())


def check_storage_urls(storage: StorageSpec, source: str) -> None:
    """Database URLs that parse, name a known database, and are three different databases
    (Optuna, the results and MLflow each keep an `alembic_version` table, and the first two
    share table names)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from db.engine import mask_url

    given: dict[str, str] = {}
    for key in ("optuna", "results", "mlflow"):
        url = getattr(storage, key)
        if url is None:
            continue
        if "\0" in url:
            raise AblError(
                f"{source}: storage.{key} holds a NUL byte, which no URL or path can; write "
                "the URL without it"
            )
        database = key != "mlflow" or url.split(":", 1)[0].split("+")[0] in DATABASE_SCHEMES
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
        if key == "mlflow" and (scheme is None or scheme[1].lower() == "file"):
            # A folder: MLflow's file store, which MLflow 3 refuses when the run starts.
            raise AblError(
                f"{source}: storage.mlflow = {url if '@' not in url else mask_url(url)} is not "
                f"a tracking URI; {MLFLOW_FIX}"
            )
        if key == "mlflow" and not database and scheme[1].lower() not in _tracking_schemes():
            raise AblError(
                f"{source}: storage.mlflow = {mask_url(url)}: MLflow has no tracking store for "
                f"{scheme[1]}://; {MLFLOW_FIX}"
            )
        if key == "optuna" and url.startswith("journal://"):
            database = False  # Optuna's journal file (orchestrator/prepare.py checks its folder)
            if not url.removeprefix("journal://").startswith("/"):
                raise AblError(
                    f"{source}: storage.optuna = {mask_url(url)}: a journal file needs an "
                    "absolute path on the shared filesystem, e.g. "
                    "journal:///shared/abl-out/optuna.journal"
                )
        if database:
            try:
                make_url(url).get_dialect()
            except (ArgumentError, NoSuchModuleError, ValueError) as e:
                why = "unknown database" if isinstance(e, NoSuchModuleError) else "unparsable"
                raise AblError(
                    f"{source}: storage.{key} = {mask_url(url)} is not a database URL ({why}); "
                    "write one like postgresql://user@host/abl_" + key + ", or delete the key "
                    "for SQLite under the output folder"
                ) from None
        if database and _in_memory(url):
            raise AblError(
                f"{source}: storage.{key} = {url} is an in-memory database, which keeps nothing "
                "and which the workers cannot share; name a file (sqlite:////path/to/file.db) "
                "or delete the key"
            )
        file = _sqlite_file(url)
        for other, other_url in given.items():
            if url == other_url:
                raise AblError(
                    f"{source}: storage.{key} and storage.{other} name one database "
                    f"({mask_url(url)}); their tables overlap, so give each its own database"
                )
            if file is not None and file == _sqlite_file(other_url):
                raise AblError(
                    f"{source}: storage.{key} and storage.{other} name one database "
                    f"({mask_url(url)} and {mask_url(other_url)} are both the SQLite file {file}); "
                    "their tables overlap, so give each its own database"
                )
        given[key] = url


def _tracking_schemes() -> set[str]:
    """URI schemes MLflow tracks to besides the databases: its server, Databricks, and those
    of installed tracking-store plugins (the `mlflow.tracking_store` entry points)."""
    from importlib.metadata import entry_points

    plugins = {e.name.lower() for e in entry_points(group="mlflow.tracking_store")}
    return {"http", "https", "databricks", *plugins}


def _in_memory(url: str) -> bool:
    """True for a SQLite URL without a file (`sqlite://`, `sqlite:///:memory:`)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def _sqlite_file(url: str) -> str | None:
    """The file a SQLite URL opens, with symlinks, `..` and a relative path (SQLite opens it
    from the working folder) resolved, so one file spelled two ways compares equal; None for
    other URLs, in-memory SQLite and SQLite URI filenames (`?uri=true`)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or "uri" in parsed.query:
            return None
    except Exception:  # unparsable: reported as such by the caller
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.realpath(parsed.database)


def check_size(spec: StudySpec, trials: int, yes: bool) -> None:
    """Refuse a study of more than MAX_TRIALS trials unless the user said --yes."""
    if trials <= MAX_TRIALS or yes:
        return
    cells = trials // len(spec.seeds)
    if spec.design == "factorial":
        on = [a for a in spec.axes if not spec.crossed or a.name in spec.crossed]
        sizes = " x ".join(f"{len(a.values)} ({a.name})" for a in on)
        what = f"design: factorial crosses {sizes} = {cells} cells"
    else:
        what = f"design: {spec.design} has {cells} cells"
    raise AblError(
        f"{spec.source}: {what} x {len(spec.seeds)} seeds = {trials} trials, more than "
        f"{MAX_TRIALS}; pass --yes to run them all, or use fewer values or seeds"
        + (
            ", cross fewer axes with `crossed:`, or use design: ofat"
            if spec.design == "factorial"
            else ""
        )
    )


def _read_yaml(text: str) -> Any:
    """yaml.safe_load (no tag builds an object), refusing a key given twice in one mapping:
    plain YAML keeps the last silently, so a second `masking:` axis would replace the first
    without a word. The check walks the parsed nodes; nothing is constructed twice."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    todo = [root] if root is not None else []
    visited: set[int] = set()  # aliases share nodes, and may even loop
    while todo:
        node = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        first = seen[key.value].start_mark.line + 1
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"key {key.value!r} appears twice in one mapping (first at line "
                            f"{first}); keep one",
                            key.start_mark,
                        )
                    seen[key.value] = key
                todo.append(value)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif (
            isinstance(node, yaml.ScalarNode)
            and node.style is None
            and ":" in node.value
            and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
        ):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{node.value} is a base-60 number to YAML 1.1 (1:30 reads as 90); write the "
                "number itself, or quote it if it is text",
                node.start_mark,
            )
    return yaml.safe_load(text)


def load_spec(path: str | Path, output: str | Path | None = None) -> StudySpec:
    """Read and validate an experiments file; raises AblError with one clear line."""
    p = Path(path)
    source = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AblError(f"{source}: no such experiments file; pass the path to one") from None
    except OSError as e:
        raise AblError(f"{source}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise AblError(
            f"{source}: is not UTF-8 text (byte {e.start}); save the experiments file as UTF-8"
        ) from None
    try:
        raw = _read_yaml(text)
    except RecursionError:
        raise AblError(
            f"{source}: lists or mappings nested deeper than a YAML reader can follow; an "
            "experiments file is a few levels deep: write it as docs/keys.md shows"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise AblError(f"{source}: YAML syntax error{at}: {problem}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise AblError(f"{source}: must be a YAML mapping with keys study, axes, baseline, ...")
    for key, value in raw.items():
        if key in SECTIONS:
            raise AblError(
                f"{source}: unknown key {key!r}; {key} is a section of the recipe: indent it "
                f"under baseline: (baseline.{key})"
            )
        if key not in TOP_KEYS:
            raise AblError(f"{source}: unknown key {key!r}; {_suggest(str(key), TOP_KEYS)}")
        if value is None or (isinstance(value, str) and not value.strip()):
            raise AblError(
                f"{source}: {key} is given but empty; give it a value (or its entries, "
                "indented under it), or delete the line"
            )
    study = raw.get("study")
    if not isinstance(study, str) or not STUDY_NAME.fullmatch(study):
        raise AblError(
            f"{source}: study must be a name of letters, digits, '-', '_' or '.', got {study!r}"
        )
    design = raw.get("design", "ofat")
    if design not in DESIGNS:
        close = difflib.get_close_matches(str(design), DESIGNS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(DESIGNS)}"
        raise AblError(f"{source}: design = {design!r} is unknown; {hint}")
    if "configs" in raw and design != "list":
        raise AblError(
            f"{source}: configs is read only by design: list (design is {design!r}); "
            "set design: list or delete configs"
        )
    if "crossed" in raw and design != "factorial":
        raise AblError(
            f"{source}: crossed is read only by design: factorial (design is {design!r}); "
            "set design: factorial or delete crossed"
        )
    if design == "list" and "configs" not in raw:
        raise AblError(
            f"{source}: design: list needs configs, a list of entries like "
            "{name: m2d-like, mask.strategy: unstructured, mask.ratio: 0.7}"
        )
    if design == "list" and "axes" in raw:
        raise AblError(
            f"{source}: axes is not read by design: list (each entry of configs sets its own "
            "paths); delete axes, or use design: ofat or factorial"
        )
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds
        )
        or len(set(seeds)) != len(seeds)
    ):
        raise AblError(
            f"{source}: seeds must be a list of distinct integers from 0 to {MAX_SEED}, "
            "e.g. seeds: [0, 1, 2]"
        )
    max_attempts = raw.get("max_attempts", 2)
    if (
        not isinstance(max_attempts, int)
        or isinstance(max_attempts, bool)
        or not 1 <= max_attempts <= MAX_INT
    ):
        raise AblError(f"{source}: max_attempts must be an integer >= 1, e.g. max_attempts: 2")
    pruning = raw.get("pruning", "none")
    if pruning not in PRUNING:
        raise AblError(
            f"{source}: pruning = {pruning!r}; use one of {', '.join(PRUNING)} (an ablation "
            "keeps `none`: every cell runs to its budget)"
        )
    baseline = (
        build_dataclass(RecipeConfig, raw["baseline"], "baseline", source)
        if "baseline" in raw
        else RecipeConfig()
    )
    validate_recipe(baseline, "baseline.", source)
    configs: tuple[ConfigEntry, ...] = ()
    crossed: tuple[str, ...] = ()
    if design == "list":
        configs = _parse_configs(raw["configs"], baseline, source)
        axes = _config_axes(configs)
    else:
        axes = _parse_axes(raw.get("axes"), source)
    if design == "ofat":
        _validate_around_baseline(axes, baseline, source)
    elif design == "factorial":
        crossed = _parse_crossed(raw.get("crossed"), axes, source)
        _validate_factorial(axes, crossed, baseline, source)
    storage = (
        build_dataclass(StorageSpec, raw["storage"], "storage", source)
        if "storage" in raw
        else StorageSpec()
    )
    check_storage_urls(storage, source)
    out = output if output is not None else raw.get("output", "abl-out")
    if not isinstance(out, str | Path):
        raise AblError(f"{source}: output must be a folder path")
    out_path = _folder_beside(out, "output" if output is None else "--output", source)
    return StudySpec(
        source=source,
        study=study,
        output=out_path,
        design=design,
        seeds=tuple(seeds),
        axes=axes,
        baseline=baseline,
        storage=storage,
        max_attempts=max_attempts,
        pruning=pruning,
        configs=configs,
        crossed=crossed,
        launcher=parse_launcher(raw.get("launcher"), source),
    )
