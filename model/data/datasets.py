"""Labelled audio tasks built from Debian packages, prepared once into a cache folder.

A task source lists raw clips (label, group, bytes); `prepare_task` decodes them to 16 kHz mono
FLAC, assigns grouped splits and writes a manifest. The task folder is built under a temporary
name and renamed into place only when complete, so an interrupted preparation never leaves a
task that looks ready.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import TaskDef
from model.data.audio import AudioError, is_silent, load_audio, save_flac
from model.data.byo import byo_source
from model.data.sources import TASKS, RawClip, TaskSource, package_version, prepared_file
from model.data.splits import assign_splits
from model.errors import AblError
from model.filelock import exclusive

PREPARED_RATE = 16000
MANIFEST = "manifest.csv"
META = "task.json"  # written last: its presence marks a complete task
MAX_SECONDS = 30.0  # longer recordings are cut; the probes never look further
# What preparation writes from the same source files. A task prepared under another number is
# prepared again: 2 joins the groups of clips that hold the same samples.
PREPARATION = 2
CHANGED = "its files, or how abl prepares them, changed since it was prepared"


def resolve_data_root(configured: str | None = None) -> Path:
    """The data cache: the experiments file's `data.cache`, else $ABL_DATA, else ~/.cache/abl."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("ABL_DATA"):
        return Path(os.environ["ABL_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "abl"


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


def task_source(name: str, custom: tuple[TaskDef, ...] = ()) -> TaskSource:
    """A built-in task, or one of the user's own (`data.tasks` of the experiments file)."""
    for t in custom:
        if t.name == name:
            return byo_source(t.format, t.name, t.root, **json.loads(t.options))
    if name not in TASKS:
        known = sorted([*TASKS, *(t.name for t in custom)])
        raise AblError(
            f"unknown task {name!r}; known tasks: {', '.join(known)} "
            "(declare your own under data.tasks in the experiments file)"
        )
    return TASKS[name]


def load_task(name: str, data_root: Path, custom: tuple[TaskDef, ...] = ()) -> PreparedTask:
    task_source(name, custom)
    root = data_root / "tasks" / name
    if not (root / META).is_file():
        raise AblError(
            f"{root}: task {name!r} is not prepared; run `abl data prepare --task {name}`"
        )
    return load_task_at(name, root)


def load_task_at(name: str, root: Path) -> PreparedTask:
    """The prepared task in folder `root` (its task.json and manifest)."""
    meta = json.loads((root / META).read_text())
    with open(root / MANIFEST, newline="") as f:
        clips = tuple(
            Clip(r["file"], r["label"], r["group"], r["split"], float(r["duration"]), r["sha1"])
            for r in csv.DictReader(f)
        )
    return PreparedTask(name, root, clips, meta)


def prepare_task(
    name: str,
    data_root: Path,
    force: bool = False,
    log: Callable[[str], None] = print,
    custom: tuple[TaskDef, ...] = (),
    again: bool = False,
) -> PreparedTask:
    """Decode, split and store one task; a second call returns the prepared task at once.

    `force` prepares it anew whatever is there; `again`, only if its source changed since it
    was prepared. Preparations of one task take turns across processes sharing the cache (a
    lock file beside it): the one that waited finds the task prepared, and prepares it only if
    it still has to."""
    source = task_source(name, custom)
    final = data_root / "tasks" / name
    if (final / META).is_file() and not force and not again:
        return load_task(name, data_root, custom)

    def waiting() -> None:
        log(f"{name}: another process is preparing it; waiting for it to finish")

    with exclusive(data_root / "tasks" / f".{name}.lock", waiting):
        if (final / META).is_file() and not force:
            if not (again and changed_since_prepared(name, data_root, custom)):
                return load_task(name, data_root, custom)
        try:
            return _prepare(name, source, data_root, log, custom)
        except BaseException:
            # Nothing half-written stays; an earlier preparation of the task is untouched.
            shutil.rmtree(_work_folder(data_root, name), ignore_errors=True)
            raise


def _prepare(
    name: str,
    source: TaskSource,
    data_root: Path,
    log: Callable[[str], None],
    custom: tuple[TaskDef, ...],
) -> PreparedTask:
    final = data_root / "tasks" / name
    t0 = time.perf_counter()
    raw = source.clips()
    if not raw:
        raise AblError(f"task {name!r}: its source lists no audio; reinstall {source.packages}")
    work = _work_folder(data_root, name)
    shutil.rmtree(work, ignore_errors=True)
    (work / "audio").mkdir(parents=True)
    decoded: list[tuple[RawClip, str, float, str]] = []  # clip, file, seconds, FLAC sha1
    pcm: dict[str, str] = {}
    skipped: Counter[str] = Counter()
    skipped_files: list[dict[str, str]] = []
    with _ctrl_c_between_clips() as stop:
        for clip in _progress(raw, log, name):
            if stop.is_set():
                break
            try:
                wave = load_audio(clip.read(), PREPARED_RATE, name=clip.name)
            except (AudioError, OSError) as e:  # OSError: a dangling link, no read permission
                skipped["unreadable"] += 1
                reason = str(e)
                if isinstance(e, OSError):
                    reason = f"{clip.name}: cannot be read: {e.strerror or e}"
                skipped_files.append({"clip": clip.name, "reason": reason})
                continue
            if is_silent(wave):
                skipped["silent"] += 1
                skipped_files.append({"clip": clip.name, "reason": "silent"})
                continue
            wave = wave[: int(getattr(source, "max_seconds", MAX_SECONDS) * PREPARED_RATE)]
            rel = prepared_file(clip.name)
            save_flac(work / rel, wave, PREPARED_RATE)
            pcm[rel] = _pcm_sha1(work / rel)
            digest = hashlib.sha1((work / rel).read_bytes()).hexdigest()
            decoded.append((clip, rel, round(len(wave) / PREPARED_RATE, 4), digest))
    _check_usable(name, source, raw, decoded, skipped, skipped_files)
    # One recording under two names (a game reusing a sound) must not sit in two folds: clips
    # with the same samples join one group, whatever groups their source gave them.
    audio = {c.name: pcm[rel] for c, rel, _, _ in decoded}
    group_of, merged = _merge_copies([(c.group, c.name, audio[c.name]) for c, *_ in decoded])
    raw = [dataclasses.replace(c, group=group_of.get(c.name, c.group)) for c in raw]
    # A data set's own split wins; the rest are split by group, stratified per class. A class
    # with fewer than three groups cannot reach every split by group, so its clips are split
    # one by one (recorded in the task's metadata: near-duplicates may straddle there; exact
    # copies still share a group).
    groups_per_class: dict[str, set[str]] = {}
    for c in raw:
        if c.split is None:
            groups_per_class.setdefault(c.label, set()).add(c.group)
    fine = sorted(lab for lab, g in groups_per_class.items() if len(g) < 3)
    alone = [(c.name, c.name, audio[c.name]) for c in raw if c.label in fine and c.name in audio]
    copies, _ = _merge_copies(alone)
    raw = [
        dataclasses.replace(c, group=copies.get(c.name, c.name)) if c.label in fine else c
        for c in raw
    ]
    split_of = assign_splits((c.label, c.group) for c in raw if c.split is None)
    group = {c.name: c.group for c in raw}
    rows = [
        Clip(rel, c.label, group[c.name], c.split or split_of[group[c.name]], seconds, digest)
        for c, rel, seconds, digest in decoded
    ]
    with open(work / MANIFEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "group", "split", "duration", "sha1"])
        for c in rows:
            w.writerow([c.file, c.label, c.group, c.split, c.duration, c.sha1])
    meta = {
        "task": name,
        "description": source.description,
        "sample_rate": PREPARED_RATE,
        "packages": {p: package_version(p) for p in source.packages},
        "clips": len(rows),
        "skipped": dict(skipped),
        "split_by_clip": fine,
        "copies_joined": merged,
        "skipped_files": skipped_files,
        "manifest_sha1": hashlib.sha1((work / MANIFEST).read_bytes()).hexdigest(),
        "content": _content(rows, pcm),
        "source_stamp": source_stamp(source),
        "preparation": PREPARATION,
        "prepare_seconds": round(time.perf_counter() - t0, 2),
    }
    (work / META).write_text(json.dumps(meta, indent=2))
    if final.is_symlink():  # a task linked in from elsewhere: the link goes, its target stays
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    if skipped:
        log(f"{name}: skipped {sum(skipped.values())} clips ({dict(skipped)}); see {final / META}")
    return load_task(name, data_root, custom)


def _work_folder(data_root: Path, name: str) -> Path:
    """Where this process prepares a task before renaming it into place."""
    return data_root / "tasks" / f".{name}.partial-{os.getpid()}"


def _check_usable(
    name: str,
    source: TaskSource,
    raw: list[RawClip],
    decoded: list[tuple[RawClip, str, float, str]],
    skipped: Counter[str],
    skipped_files: list[dict[str, str]],
) -> None:
    """Refuse a task that preparation would leave without audio, or a labelled one left with a
    single class (no probe can be fitted on it): an AblError naming the task, where its files
    are and what was skipped, before anything is written."""
    where = f"task {name!r}" + (f" ({source.root})" if hasattr(source, "root") else "")
    names = [f["clip"] for f in skipped_files[:3]] + (["..."] if len(skipped_files) > 3 else [])
    what = ", ".join(f"{n} {why}" for why, n in skipped.most_common())
    if not decoded:
        verb = "could be decoded" if set(skipped) == {"unreadable"} else "holds usable audio"
        raise AblError(
            f"{where}: none of its {len(raw)} files {verb} ({what}: {', '.join(names)}); fix or "
            "remove the audio"
        )
    labels = {c.label for c, *_ in decoded}
    if getattr(source, "unlabelled", False) or len(labels) > 1:
        return
    (label,) = labels
    if skipped:
        raise AblError(
            f"{where}: only class {label!r} is left once the files that cannot be used are "
            f"skipped ({what}: {', '.join(names)}); fix or remove the audio: a labelled task "
            "needs two classes or more"
        )
    raise AblError(
        f"{where}: every clip is of class {label!r}; a labelled task needs two classes or more "
        "(add one, or declare the audio with format: corpus to pretrain on it unlabelled)"
    )


def source_stamp(source: TaskSource) -> str:
    """What a task's source is now, cheaply (no decoding): a data set of the user's own stamps
    its files (`stamp`); a built-in task, the versions of its Debian packages. Recorded at
    preparation; another stamp later means the source changed."""
    stamp = getattr(source, "stamp", None)
    if stamp is not None:
        return str(stamp())
    versions = {p: package_version(p) for p in source.packages}
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _ctrl_c_between_clips() -> Iterator[threading.Event]:
    """Ctrl-C while decoding, taken between two clips. soundfile reads through cffi
    callbacks, and cffi prints and swallows an exception raised inside one: a Ctrl-C landing
    there would leave a traceback on the screen and the decoding going on. So the handler
    only notes the signal, the loop stops at the next clip, and KeyboardInterrupt is raised
    here on the way out. Where no handler can be set (outside the main thread), or Ctrl-C is
    ignored, nothing changes."""
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else signal.SIG_IGN
    if previous is signal.SIG_IGN or previous is None:
        yield stop
        return
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        raise KeyboardInterrupt


def changed_since_prepared(name: str, data_root: Path, custom: tuple[TaskDef, ...] = ()) -> bool:
    """The prepared task's source has changed since, or abl now prepares it differently
    (`PREPARATION`). A task prepared by a release that kept no stamp counts as changed only
    through the second."""
    meta_path = data_root / "tasks" / name / META
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("preparation", 1) != PREPARATION:
        return True
    then = meta.get("source_stamp")
    return then is not None and then != source_stamp(task_source(name, custom))


def _merge_copies(clips: list[tuple[str, str, str]]) -> tuple[dict[str, str], int]:
    """(group, clip name, audio digest) of each clip -> (the group of every clip whose audio
    is also in another group: the first, in sorted order, of the groups its copies span, and
    how many groups were joined into another). Copies within one group change nothing."""
    parent: dict[str, str] = {}

    def root(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    first: dict[str, str] = {}
    for group, _, digest in clips:
        other = first.setdefault(digest, group)
        a, b = root(group), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    out = {name: root(group) for group, name, _ in clips if root(group) != group}
    return out, sum(1 for g in parent if parent[g] != g)


def _pcm_sha1(path: Path) -> str:
    """SHA-1 of a prepared file's 16-bit samples: its audio, whatever FLAC encoder wrote it."""
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="int16", always_2d=True)
    return hashlib.sha1(np.ascontiguousarray(data, "<i2").tobytes()).hexdigest()


def _content(clips: list[Clip] | tuple[Clip, ...], pcm: dict[str, str]) -> str:
    """What a prepared task holds, as one hash: every clip's file name, label, group, split and
    samples (not the FLAC bytes: another encoder version writes other bytes for the same
    audio). Where the task lives, and where its source lived, are not in it."""
    rows = sorted([c.file, c.label, c.group, c.split, pcm[c.file]] for c in clips)
    doc = json.dumps({"sample_rate": PREPARED_RATE, "clips": rows}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


def task_content(name: str, data_root: Path) -> str | None:
    """The content hash of a prepared task (`_content`), None when it is not prepared. Tasks
    prepared by releases before it have none in their task.json: it is computed once, from
    their audio, and written there."""
    root = data_root / "tasks" / name
    if not (root / META).is_file():
        return None
    meta = json.loads((root / META).read_text())
    if "content" not in meta:
        task = load_task_at(name, root)
        pcm = {c.file: _pcm_sha1(root / c.file) for c in task.clips}
        meta["content"] = _content(task.clips, pcm)
        tmp = root / f".{META}.partial-{os.getpid()}"
        try:
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, root / META)
        except OSError:  # a read-only cache: computed again next time, never wrong
            tmp.unlink(missing_ok=True)
    return str(meta["content"])


def _progress(items: list[RawClip], log: Callable[[str], None], name: str) -> Iterator[RawClip]:
    step = max(1, len(items) // 5)
    for i, item in enumerate(items):
        if i % step == 0:
            log(f"{name}: preparing {i}/{len(items)}")
        yield item


def write_corpus_manifest(
    tasks: list[PreparedTask], path: Path, max_per_class: int | None = None
) -> float:
    """List the pretraining audio (train splits only) as path, source, duration, sha1; returns
    its hours. Written atomically: a reader never sees half a manifest."""
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    seconds = 0.0
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "source", "duration", "sha1"])
        for t in tasks:
            for c in t.split("train", max_per_class):
                w.writerow([str(t.path(c)), t.name, c.duration, c.sha1])
                seconds += c.duration
    os.replace(tmp, path)
    return seconds / 3600
