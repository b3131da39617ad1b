"""Preparation of tasks: bad audio is skipped and counted, interruption leaves nothing that looks
complete, a second call is cheap, and the feature cache is shared."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.config import FrontendConfig, TaskDef
from model.data.datasets import META, _merge_copies, load_task, prepare_task
from model.data.features import load_features
from model.errors import AblError


def tone(path: Path, freq: float, seconds: float = 0.5, rate: int = 16000, channels: int = 1):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([wave] * channels, 1) if channels > 1 else wave, rate)


def folder_task(root: Path) -> tuple[TaskDef, ...]:
    """Three classes of good clips plus every kind of bad file, laid out a folder per class."""
    for label, freq in (("low", 200.0), ("mid", 800.0), ("high", 3000.0)):
        for i in range(6):
            tone(root / label / f"take{label}{i}_1.wav", freq * (1 + i / 20))
    tone(root / "low" / "stereo_1.wav", 210.0, channels=2)  # multi-channel: downmixed
    tone(root / "mid" / "odd_rate_1.wav", 820.0, rate=11025)  # odd rate: resampled
    tone(root / "high" / "long_1.wav", 2900.0, seconds=40.0, rate=8000)  # long: cut to 30 s
    (root / "low" / "empty_1.wav").write_bytes(b"")
    (root / "mid" / "notaudio_1.wav").write_text("this is not audio")
    good = root / "high" / "takehigh0_1.wav"
    (root / "high" / "truncated_1.flac").write_bytes(b"fLaC" + good.read_bytes()[100:400])
    sf.write(root / "low" / "silent_1.wav", np.zeros(8000), 16000)
    return (TaskDef("mine", "folder", str(root)),)


def test_bad_audio_is_skipped_counted_and_recorded(tmp_path):
    custom = folder_task(tmp_path / "src")
    task = prepare_task("mine", tmp_path / "data", log=lambda _m: None, custom=custom)
    assert len(task.clips) == 18 + 3
    assert task.meta["skipped"] == {"unreadable": 3, "silent": 1}
    reasons = {Path(s["clip"]).name: s["reason"] for s in task.meta["skipped_files"]}
    assert set(reasons) == {"empty_1.wav", "notaudio_1.wav", "truncated_1.flac", "silent_1.wav"}
    long = next(c for c in task.clips if "long" in c.file)
    assert long.duration == pytest.approx(30.0)
    assert {c.split for c in task.clips} == {"train", "val", "test"}


def test_second_prepare_is_cheap_and_interrupted_one_is_not_complete(tmp_path, monkeypatch):
    custom = folder_task(tmp_path / "src")
    data = tmp_path / "data"
    prepare_task("mine", data, log=lambda _m: None, custom=custom)
    t0 = time.perf_counter()
    again = prepare_task("mine", data, log=lambda _m: None, custom=custom)
    assert time.perf_counter() - t0 < 2.0  # loads the manifest, decodes nothing
    assert len(again.clips) == 21

    # Interrupt a forced rebuild half-way: the old task stays intact, no partial task appears.
    import model.data.datasets as ds

    calls = {"n": 0}
    real_save = ds.save_flac

    def dying_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr(ds, "save_flac", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_task("mine", data, force=True, log=lambda _m: None, custom=custom)
    assert load_task("mine", data, custom).meta["clips"] == 21
    assert [p.name for p in (data / "tasks").iterdir() if (p / META).is_file()] == ["mine"]


def test_ctrl_c_while_decoding_is_taken_between_clips(tmp_path, monkeypatch):
    """A real SIGINT in the middle of a clip (where soundfile's cffi callbacks would print
    and swallow a KeyboardInterrupt) stops the preparation at the next clip: KeyboardInterrupt
    is raised, no partial task is left, and Ctrl-C's handler is what it was."""
    import os
    import signal

    import model.data.datasets as ds

    custom = folder_task(tmp_path / "src")
    data = tmp_path / "data"
    calls = {"n": 0}
    real_save = ds.save_flac

    def interrupted_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # lands while this clip is being written
        return real_save(*a, **k)

    monkeypatch.setattr(ds, "save_flac", interrupted_save)
    # Test runners may ignore Ctrl-C; a terminal's process gets Python's default handler.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_task("mine", data, log=lambda _m: None, custom=custom)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert calls["n"] == 5  # the clip being written finished; no clip after it was started
    assert not [p for p in (data / "tasks").iterdir() if p.is_dir()]  # nothing half-written


def test_missing_folder_and_unknown_task_are_clear_errors(tmp_path):
    with pytest.raises(AblError, match="no-such-task"):
        prepare_task("no-such-task", tmp_path, log=lambda _m: None)
    missing = (TaskDef("gone", "folder", str(tmp_path / "nowhere")),)
    with pytest.raises(AblError, match="nowhere"):
        prepare_task("gone", tmp_path, log=lambda _m: None, custom=missing)
    with pytest.raises(AblError, match="abl data prepare --task env-sfx"):
        load_task("env-sfx", tmp_path / "empty-cache")


def test_feature_cache_is_computed_once_and_shared(tmp_path, env_sfx, data_root, monkeypatch):
    # Counted, not timed: the second call computes no log-mel at all (a loaded machine can
    # make a cached read slower than a computation, never make it compute).
    import model.data.features

    computed: list[int] = []
    real = model.data.features.log_mel

    def counting(wave, cfg):  # noqa: ANN001, ANN202
        computed.append(len(wave))
        return real(wave, cfg)

    monkeypatch.setattr(model.data.features, "log_mel", counting)
    fe = FrontendConfig()
    clips = env_sfx.split("val", 2)
    scratch = tmp_path / "cache"
    first = load_features(env_sfx, clips, fe, scratch)
    assert len(computed) == len(clips)
    second = load_features(env_sfx, clips, fe, scratch)
    assert len(computed) == len(clips)  # read back, not recomputed
    assert first.key == second.key and len(first) == len(clips)
    np.testing.assert_array_equal(first.clip(0), second.clip(0))
    assert isinstance(second.frames, np.memmap)  # mapped, not loaded
    # Other frontend settings are other features.
    other = load_features(env_sfx, clips, FrontendConfig(n_mels=64), scratch)
    assert other.key != first.key and other.clip(0).shape[0] == 64
    index = json.loads((scratch / "features" / f"env-sfx-{first.key}" / "index.json").read_text())
    assert index["labels"] == [c.label for c in clips]


def test_copies_join_their_groups_transitively() -> None:
    clips = [
        ("b", "b1", "x"),
        ("c", "c1", "y"),
        ("a", "a1", "z"),
        ("a", "a2", "x"),  # a and b share x
        ("c", "c2", "x"),  # so does c: one group, a
        ("d", "d1", "w"),
        ("d", "d2", "w"),  # a copy within its own group changes nothing
    ]
    group_of, joined = _merge_copies(clips)
    assert group_of == {"b1": "a", "c1": "a", "c2": "a"}
    assert joined == 2


def test_abl_data_prepare_stopped_by_ctrl_c_says_so_in_one_line(tmp_path):
    """Ctrl-C from a terminal (the whole process group) during `abl data prepare`: exit 130,
    one line saying what is kept, no traceback (cffi's included), and no partial task."""
    import os
    import select
    import signal
    import subprocess
    import sys

    abl = str(Path(sys.executable).with_name("abl"))
    data = tmp_path / "data"
    p = subprocess.Popen(
        [abl, "data", "prepare", "--data", str(data), "--task", "corpus-0ad", "-j", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = ""
        while "preparing" not in first:  # decoding has started
            assert select.select([p.stdout], [], [], 120)[0], "no progress within 2 min"
            first = p.stdout.readline()
            assert first, "abl data prepare ended before decoding"
        time.sleep(1.0)
        os.killpg(p.pid, signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert rest.strip().splitlines()[-1].startswith("stopped: the tasks prepared so far")
    tasks = data / "tasks"
    assert not [q for q in tasks.iterdir() if q.is_dir()], list(tasks.iterdir())
