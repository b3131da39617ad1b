"""Labelled audio tasks built from Debian packages, prepared once into a cache folder.

A task source lists raw clips (label, group, bytes); `prepare_task` decodes them to 16 kHz mono
FLAC, assigns grouped splits and writes a manifest. The task folder is built under a temporary
name and renamed into place only when complete, so an interrupted preparation never leaves a
task that looks ready.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from model.audio import AudioError, is_silent, load_audio, save_flac
from model.errors import AblError
from model.splits import assign_splits

PREPARED_RATE = 16000
MANIFEST = "manifest.csv"
META = "task.json"  # written last: its presence marks a complete task
MAX_SECONDS = 30.0  # longer recordings are cut; the probes never look further


def resolve_data_root(configured: str | None = None) -> Path:
    """The data cache: the experiments file's `data.cache`, else $ABL_DATA, else ~/.cache/abl."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("ABL_DATA"):
        return Path(os.environ["ABL_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "abl"


@dataclass(frozen=True)
class RawClip:
    name: str  # unique within the task, used for the prepared file name
    label: str
    group: str  # clips sharing a group never straddle two splits
    read: Callable[[], bytes] = field(repr=False, compare=False)


def _package_version(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True, text=True, check=False, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class ZeroADEffects:
    """0 A.D. sound effects (`0ad-data`): ten folder classes of real recorded effects."""

    name = "env-sfx"
    description = "0 A.D. sound effects, 10 classes; group = sound stem without trailing digits"
    packages = ("0ad-data",)
    archive = Path("/usr/share/games/0ad/mods/public/public.zip")
    folders = {
        "impact": "audio/attack/impact/",
        "weapon": "audio/attack/weapon/",
        "fire": "audio/attack/fire/",
        "human": "audio/actor/human/",
        "fauna": "audio/actor/fauna/",
        "steps": "audio/actor/singlesteps/",
        "gathering": "audio/resource/gathering/",
        "mining": "audio/resource/mining/",
        "construction": "audio/resource/construction/",
        "lumbering": "audio/resource/lumbering/",
    }

    def clips(self) -> list[RawClip]:
        if not self.archive.is_file():
            raise AblError(
                f"{self.archive}: 0 A.D. audio not found; install the Debian package 0ad-data "
                "(scripts/setup.sh does)"
            )
        with zipfile.ZipFile(self.archive) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".ogg"))
        out = []
        for label, prefix in self.folders.items():
            for n in names:
                if not n.startswith(prefix):
                    continue
                stem = Path(n).stem
                # camel_10 and camel_11 are takes of one sound: group them.
                group = label + "/" + re.sub(r"[_\-\s]*\d+$", "", stem)
                out.append(RawClip(n[len("audio/"):], label, group, self._reader(n)))
        return out

    def _reader(self, member: str) -> Callable[[], bytes]:
        def read() -> bytes:
            # Opening the 275 MB archive parses its whole directory: do it once per process.
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.archive)
            return self._zip.read(member)

        return read

    _zip: zipfile.ZipFile | None = None


TASKS: dict[str, ZeroADEffects] = {"env-sfx": ZeroADEffects()}


@dataclass(frozen=True)
class Clip:
    file: str  # relative to the task folder
    label: str
    group: str
    split: str
    duration: float
    sha1: str


@dataclass(frozen=True)
class PreparedTask:
    name: str
    root: Path
    clips: tuple[Clip, ...]
    meta: dict

    @property
    def classes(self) -> list[str]:
        return sorted({c.label for c in self.clips})

    def split(self, split: str, max_per_class: int | None = None) -> list[Clip]:
        """Clips of one split; `max_per_class` keeps a deterministic slice of each class."""
        chosen = [c for c in self.clips if c.split == split]
        if max_per_class is None:
            return chosen
        seen: Counter[str] = Counter()
        out = []
        for c in sorted(chosen, key=lambda c: c.sha1):
            if seen[c.label] < max_per_class:
                seen[c.label] += 1
                out.append(c)
        return sorted(out, key=lambda c: c.file)

    def path(self, clip: Clip) -> Path:
        return self.root / clip.file


def task_source(name: str) -> ZeroADEffects:
    if name not in TASKS:
        raise AblError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_task(name: str, data_root: Path) -> PreparedTask:
    task_source(name)
    root = data_root / "tasks" / name
    if not (root / META).is_file():
        raise AblError(
            f"{root}: task {name!r} is not prepared; run `abl data prepare --task {name}`"
        )
    meta = json.loads((root / META).read_text())
    with open(root / MANIFEST, newline="") as f:
        clips = tuple(
            Clip(r["file"], r["label"], r["group"], r["split"], float(r["duration"]), r["sha1"])
            for r in csv.DictReader(f)
        )
    return PreparedTask(name, root, clips, meta)


def prepare_task(
    name: str, data_root: Path, force: bool = False, log: Callable[[str], None] = print
) -> PreparedTask:
    """Decode, split and store one task; a second call returns the prepared task at once."""
    source = task_source(name)
    final = data_root / "tasks" / name
    if (final / META).is_file() and not force:
        return load_task(name, data_root)
    t0 = time.perf_counter()
    raw = source.clips()
    if not raw:
        raise AblError(f"task {name!r}: its source lists no audio; reinstall {source.packages}")
    split_of = assign_splits((c.label, c.group) for c in raw)
    work = data_root / "tasks" / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "audio").mkdir(parents=True)
    rows: list[Clip] = []
    skipped: Counter[str] = Counter()
    skipped_files: list[dict[str, str]] = []
    for clip in _progress(raw, log, name):
        try:
            wave = load_audio(clip.read(), PREPARED_RATE, name=clip.name)
        except AudioError as e:
            skipped["unreadable"] += 1
            skipped_files.append({"clip": clip.name, "reason": str(e)})
            continue
        if is_silent(wave):
            skipped["silent"] += 1
            skipped_files.append({"clip": clip.name, "reason": "silent"})
            continue
        wave = wave[: int(MAX_SECONDS * PREPARED_RATE)]
        rel = "audio/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", clip.name.rsplit(".", 1)[0]) + ".flac"
        save_flac(work / rel, wave, PREPARED_RATE)
        digest = hashlib.sha1((work / rel).read_bytes()).hexdigest()
        rows.append(
            Clip(rel, clip.label, clip.group, split_of[clip.group],
                 round(len(wave) / PREPARED_RATE, 4), digest)
        )
    with open(work / MANIFEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "group", "split", "duration", "sha1"])
        for c in rows:
            w.writerow([c.file, c.label, c.group, c.split, c.duration, c.sha1])
    meta = {
        "task": name,
        "description": source.description,
        "sample_rate": PREPARED_RATE,
        "packages": {p: _package_version(p) for p in source.packages},
        "clips": len(rows),
        "skipped": dict(skipped),
        "skipped_files": skipped_files,
        "manifest_sha1": hashlib.sha1((work / MANIFEST).read_bytes()).hexdigest(),
        "prepare_seconds": round(time.perf_counter() - t0, 2),
    }
    (work / META).write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    if skipped:
        log(f"{name}: skipped {sum(skipped.values())} clips ({dict(skipped)}); see {final / META}")
    return load_task(name, data_root)


def _progress(items: list[RawClip], log: Callable[[str], None], name: str) -> Iterator[RawClip]:
    step = max(1, len(items) // 5)
    for i, item in enumerate(items):
        if i % step == 0:
            log(f"{name}: preparing {i}/{len(items)}")
        yield item
