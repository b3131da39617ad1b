"""Data enters keys by its content, not by where it lives (docs/keys.md): moving a data set
re-runs nothing; other audio under the same name is prepared again, and then what it changes is
computed anew: a pretraining corpus changes the pretraining keys (the trials train again), a
probe task only its scores (the finished trials are probed again, nothing retrained). Real
`abl run`, real audio, SQLite, MLflow and Optuna storage."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from model.config import TaskDef
from model.data.byo import byo_source
from model.data.datasets import (
    META,
    PREPARATION,
    PreparedTask,
    changed_since_prepared,
    prepare_task,
    task_content,
)

ABL = str(Path(sys.executable).with_name("abl"))
RATE = 16000


def _abl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ABL, *args], capture_output=True, text=True, env=os.environ)


def _tone(path: Path, hz: float, seconds: float = 0.5, noise: int = 0) -> None:
    """A real audio file: a tone (plus, with `noise`, seeded noise) as 16-bit WAV."""
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * hz * t)
    if noise:
        wave += 0.05 * np.random.default_rng(noise).standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, RATE, subtype="PCM_16")


def _folder(root: Path) -> Path:
    """A `folder` layout: two classes of five tones each."""
    for label, base in (("low", 220.0), ("high", 880.0)):
        for i in range(5):
            _tone(root / label / f"{label}{i}.wav", base * (1 + i / 10))
    return root


def test_content_is_the_prepared_audio_not_its_folder_nor_its_encoder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    task = TaskDef("mine", "folder", str(_folder(tmp_path / "a")))
    first = prepare_task("mine", cache, log=lambda _: None, custom=(task,))
    content = task_content("mine", cache)
    assert content and len(content) == 20
    # The same algorithm, from the audio alone, on a cache prepared before contents were kept.
    meta = json.loads((first.root / META).read_text())
    del meta["content"]
    (first.root / META).write_text(json.dumps(meta))
    assert task_content("mine", cache) == content
    assert json.loads((first.root / META).read_text())["content"] == content  # kept now
    # Moved to another folder (times kept, as mv does): not changed, and the same content.
    moved = TaskDef("mine", "folder", str(tmp_path / "b"))
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy2)
    assert not changed_since_prepared("mine", cache, (moved,))
    prepare_task("mine", cache, force=True, log=lambda _: None, custom=(moved,))
    assert task_content("mine", cache) == content
    # Other samples in one file, same length and name: changed, and another content.
    _tone(tmp_path / "b" / "low" / "low0.wav", 220.0, noise=1)
    assert changed_since_prepared("mine", cache, (moved,))
    prepare_task("mine", cache, force=True, log=lambda _: None, custom=(moved,))
    assert task_content("mine", cache) not in (None, content)
    assert not changed_since_prepared("mine", cache, (moved,))
    assert task_content("nothing-here", cache) is None


def test_a_files_stamp_follows_every_file_a_scan_reads(tmp_path: Path) -> None:
    root = _folder(tmp_path / "a")
    stamp = byo_source("folder", "mine", root).stamp()
    assert byo_source("folder", "mine", root).stamp() == stamp
    os.utime(root / "high" / "high1.wav", ns=(1, 1))
    assert byo_source("folder", "mine", root).stamp() != stamp
    # A list-file corpus: the list itself is read, so editing it counts too.
    listing = tmp_path / "list.txt"
    listing.write_text("a/low/low0.wav\na/low/low1.wav\n")
    before = byo_source("corpus", "c", listing).stamp()
    listing.write_text("a/low/low0.wav\n")
    assert byo_source("corpus", "c", listing).stamp() != before


def _rows(db: Path) -> dict[str, tuple[str, dict]]:
    con = sqlite3.connect(db)
    rows = con.execute(
        "select key, pretrain, data_json from trials where axis != 'reference' and status='done'"
    ).fetchall()
    con.close()
    return {k: (p, json.loads(d)) for k, p, d in rows}


def _checkpoints(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (out / "checkpoints").glob("*.pt")}


def test_moving_data_reruns_nothing_and_changing_it_recomputes_what_it_feeds(
    tmp_path: Path, tiny_experiments, env_sfx: PreparedTask
) -> None:
    cache = tmp_path / "cache"
    (cache / "tasks").mkdir(parents=True)
    (cache / "tasks" / "env-sfx").symlink_to(env_sfx.root)
    probed, pre = _folder(tmp_path / "probed"), tmp_path / "pre"
    for i in range(3):
        _tone(pre / f"rec{i}.wav", 150.0 * (i + 1), seconds=3.0, noise=i + 1)
    exp = tiny_experiments()
    raw = yaml.safe_load(exp.read_text())
    data = raw["baseline"]["data"]
    data.update(cache=str(cache), corpus=["env-sfx", "pre"])
    data["tasks"] = {
        "mine": {"format": "folder", "root": str(probed)},
        "pre": {"format": "corpus", "root": str(pre)},
    }
    raw["baseline"]["probe"]["tasks"] = ["env-sfx", "mine"]
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = Path(raw["output"])

    first = _abl("run", "-j", "1", str(exp), "--no-report")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ran 2, failed 0" in first.stdout
    rows, ckpts = _rows(out / "results.db"), _checkpoints(out)
    assert len(rows) == 2 and len(ckpts) == 2
    for _, recorded in rows.values():  # what each trial read, by content
        assert recorded == {n: task_content(n, cache) for n in ("env-sfx", "mine", "pre")}

    # Both data sets move to another disk (times kept): nothing is prepared, trained or probed.
    shutil.move(probed, tmp_path / "elsewhere-probed")
    shutil.move(pre, tmp_path / "elsewhere-pre")
    data["tasks"]["mine"]["root"] = str(tmp_path / "elsewhere-probed")
    data["tasks"]["pre"]["root"] = str(tmp_path / "elsewhere-pre")
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    moved = _abl("run", "-j", "1", str(exp), "--no-report")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "ran 0, failed 0, already finished 2" in moved.stdout
    assert "preparing" not in moved.stdout and "probed" not in moved.stdout
    assert _rows(out / "results.db") == rows and _checkpoints(out) == ckpts

    # One clip of the probed task gets other audio: it is prepared again and the finished
    # trials (and references) are probed on it again; nothing is retrained, no key changes.
    _tone(tmp_path / "elsewhere-probed" / "low" / "low0.wav", 220.0, noise=7)
    changed = _abl("run", "-j", "1", str(exp), "--no-report")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "mine: its files, or how abl prepares them, changed" in changed.stdout
    assert "ran 0, failed 0, already finished 2" in changed.stdout
    assert "probed" in changed.stdout and "new or changed" in changed.stdout
    assert _checkpoints(out) == ckpts
    now = _rows(out / "results.db")
    assert set(now) == set(rows)
    new_mine = task_content("mine", cache)
    assert new_mine != rows[next(iter(rows))][1]["mine"]
    assert all(recorded["mine"] == new_mine for _, recorded in now.values())

    # One recording of the pretraining corpus changes: new pretraining keys, trained anew.
    _tone(tmp_path / "elsewhere-pre" / "rec0.wav", 150.0, seconds=3.0, noise=9)
    corpus = _abl("run", "-j", "1", str(exp), "--no-report")
    assert corpus.returncode == 0, corpus.stdout + corpus.stderr
    assert "pre: its files, or how abl prepares them, changed" in corpus.stdout
    assert "ran 2, failed 0, already finished 0" in corpus.stdout
    latest = _rows(out / "results.db")
    assert len(latest) == 4  # the earlier trials' rows are kept beside the new ones
    fresh = {k: v for k, v in latest.items() if k not in rows}
    assert len(fresh) == 2
    assert {p for p, _ in fresh.values()}.isdisjoint({p for p, _ in rows.values()})


def test_a_task_prepared_the_old_way_is_prepared_again(tmp_path: Path) -> None:
    """A cache from before copies joined their groups (no `preparation` in task.json) counts as
    changed, though its files did not: the groups, and so the folds, may differ now."""
    cache = tmp_path / "cache"
    task = TaskDef("mine", "folder", str(_folder(tmp_path / "a")))
    first = prepare_task("mine", cache, log=lambda _: None, custom=(task,))
    assert not changed_since_prepared("mine", cache, (task,))
    meta = json.loads((first.root / META).read_text())
    del meta["preparation"]
    (first.root / META).write_text(json.dumps(meta))
    assert changed_since_prepared("mine", cache, (task,))
    again = prepare_task("mine", cache, log=lambda _: None, custom=(task,), again=True)
    assert again.meta["preparation"] == PREPARATION
    assert not changed_since_prepared("mine", cache, (task,))


def test_a_task_linked_into_the_cache_is_prepared_again_beside_its_link(tmp_path: Path) -> None:
    """Preparing again replaces the link with the new task and leaves what it pointed to."""
    task = TaskDef("mine", "folder", str(_folder(tmp_path / "a")))
    elsewhere = prepare_task("mine", tmp_path / "other", log=lambda _: None, custom=(task,))
    cache = tmp_path / "cache"
    (cache / "tasks").mkdir(parents=True)
    (cache / "tasks" / "mine").symlink_to(elsewhere.root)
    again = prepare_task("mine", cache, force=True, log=lambda _: None, custom=(task,))
    assert not (cache / "tasks" / "mine").is_symlink() and again.root == cache / "tasks" / "mine"
    assert (elsewhere.root / META).is_file()  # the link's target is untouched
