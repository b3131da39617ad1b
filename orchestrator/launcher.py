"""The `launcher:` section of the experiments file: where a study's workers run.

`local` (the default) runs worker processes on this machine; `slurm` submits a job array of pull
workers to a Slurm cluster (orchestrator/slurm.py). The section is validated like every other
key when the file is loaded, and again after `abl run`'s flags override it, so a bad setting is
one line before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from model.errors import AblError

LAUNCHERS = ("local", "slurm")
MAX_TIME_MIN = 365 * 24 * 60  # a worker's time limit, at most
MEMORY = re.compile(r"^[1-9][0-9]*[KMGT]?$")  # sbatch --mem: 16G, 4000 (MB)
DIRECTIVE = re.compile(r"^[a-z][a-z0-9-]*=\S.*$")  # constraint=a100
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,:@+-]*$")  # partition, account, qos
# Directives abl sets itself: an `extra` entry may not replace them (the launcher key that
# sets it, where there is one).
MANAGED = {
    "partition": "partition",
    "gpus-per-node": "gpus_per_trial",
    "gpus-per-task": "gpus_per_trial",
    "gres": "gpus_per_trial",
    "cpus-per-task": "cpus_per_trial",
    "mem": "mem",
    "time": "time_min",
    "account": "account",
    "qos": "qos",
    "signal": "signal_s",
    "array": "max_parallel",
    "output": None,
    "error": None,
    "job-name": None,
    "open-mode": None,
    "wckey": None,
}


@dataclass(frozen=True)
class LauncherSpec:
    name: str = "local"  # local | slurm
    partition: str | None = None  # None: the cluster's default partition
    gpus_per_trial: int = 0
    cpus_per_trial: int = 1
    mem: str | None = None  # memory per worker, as sbatch --mem writes it (16G); None: default
    time_min: int = 240  # each worker's time limit; a worker past it requeues itself
    max_parallel: int | None = None  # workers running at once (the array's %K); None: no cap
    account: str | None = None
    qos: str | None = None
    signal_s: int = 120  # Slurm warns a worker this long before its time limit or preemption
    extra: tuple[str, ...] = ()  # more sbatch directives, as key=value


def parse_launcher(raw: Any, source: str) -> LauncherSpec:
    """`launcher: {name: slurm, partition: gpu, gpus_per_trial: 1, ...}` -> a LauncherSpec."""
    if raw is None:
        return LauncherSpec()
    if isinstance(raw, str):  # `launcher: slurm`
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise AblError(
            f"{source}: launcher must be a mapping like {{name: slurm, partition: gpu}}, "
            f"got {raw!r}"
        )
    # spec imports this module; its generic field checker is borrowed at call time.
    from orchestrator.spec import build_dataclass

    raw = {**raw, "extra": _extra_list(raw.get("extra"), source)} if "extra" in raw else raw
    return validate_launcher(build_dataclass(LauncherSpec, raw, "launcher", source), source)


def _extra_list(raw: Any, source: str) -> list[str]:
    """`extra` as a list of key=value, or a mapping {constraint: a100}."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            if v is None or isinstance(v, dict | list) or (isinstance(v, str) and not v.strip()):
                raise AblError(
                    f"{source}: launcher.extra.{k} = {v!r} is no sbatch value; give one "
                    "(constraint: a100) or delete the line"
                )
        return [f"{k}={v}" for k, v in raw.items()]
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        raise AblError(f"{source}: launcher.extra must be a list of key=value, got {raw!r}")
    return raw


def with_overrides(launcher: LauncherSpec, source: str, **flags: Any) -> LauncherSpec:
    """The file's section with the command-line flags that were given (not None) on top."""
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "extra" in given:  # flags add to the file's directives
        given["extra"] = (*launcher.extra, *given["extra"])
    return validate_launcher(dataclasses.replace(launcher, **given), source)


def validate_launcher(lc: LauncherSpec, source: str) -> LauncherSpec:
    """Impossible settings, each one line naming its key and the fix."""

    def bad(key: str, msg: str) -> AblError:
        return AblError(f"{source}: launcher.{key} {msg}")

    if lc.name not in LAUNCHERS:
        raise bad("name", f"= {lc.name!r} is unknown; use one of {', '.join(LAUNCHERS)}")
    for key in ("partition", "account", "qos"):
        value = getattr(lc, key)
        if value is not None and not NAME.fullmatch(value):
            raise bad(key, f"= {value!r} is not a Slurm name; use letters, digits, '-', '_'")
    if lc.gpus_per_trial < 0:
        raise bad("gpus_per_trial", f"= {lc.gpus_per_trial} must be 0 (CPU) or more")
    if lc.cpus_per_trial < 1:
        raise bad("cpus_per_trial", f"= {lc.cpus_per_trial} must be at least 1")
    if lc.mem is not None and not MEMORY.fullmatch(lc.mem):
        raise bad("mem", f"= {lc.mem!r}; write it as sbatch --mem does, e.g. 16G or 4000M")
    if not 1 <= lc.time_min <= MAX_TIME_MIN:
        raise bad(
            "time_min",
            f"= {lc.time_min} must be from 1 to {MAX_TIME_MIN} (minutes: a year; clusters cap "
            "their partitions far lower, `sinfo -o %l` shows the cap)",
        )
    if lc.max_parallel is not None and lc.max_parallel < 1:
        raise bad("max_parallel", f"= {lc.max_parallel} must be at least 1, or left out")
    if not 0 <= lc.signal_s < lc.time_min * 60:
        raise bad(
            "signal_s",
            f"= {lc.signal_s} must be between 0 and the time limit ({lc.time_min * 60} s)",
        )
    for entry in lc.extra:
        if not DIRECTIVE.fullmatch(entry):
            raise bad("extra", f"entry {entry!r} must be key=value, e.g. constraint=a100")
        key = entry.split("=", 1)[0]
        if key in MANAGED:
            instead = MANAGED[key]
            fix = f"use launcher.{instead} instead" if instead else "abl sets it; remove it"
            raise bad("extra", f"entry {entry!r} sets {key}: {fix}")
    return lc
