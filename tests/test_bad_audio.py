"""Bad audio inside a study: corrupt, empty, truncated and silent files, a dangling link, a
named pipe, and odd sample rates, in a bring-your-own data set of real clips. Preparation
skips what it cannot use, the study runs on, and `abl status` and the report count what was
skipped."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from typer.testing import CliRunner

from model.data.datasets import PreparedTask
from orchestrator.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ODD_RATES = (8000, 11025, 22050, 44100, 48000, 96000)


def _dataset(root: Path, env_sfx: PreparedTask) -> int:
    """Two classes of real 0 A.D. clips, each written at an odd sample rate, plus bad files."""
    train = [c for c in env_sfx.clips if c.split == "train"]
    labels = sorted({c.label for c in train})[:2]
    for label in labels:
        clips = [c for c in train if c.label == label][: len(ODD_RATES)]
        for i, (clip, rate) in enumerate(zip(clips, ODD_RATES, strict=False)):
            wave, _ = sf.read(env_sfx.path(clip), dtype="float32")
            # The samples as they are, declared at another rate: real audio the loader must
            # resample to 16 kHz.
            sf.write(root / label / f"clip{i}-{rate}.wav", wave, rate)
    bad = root / labels[0]
    (bad / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(64)))
    (bad / "empty.wav").write_bytes(b"")
    sf.write(bad / "silent.wav", np.zeros(16000, np.float32), 16000)
    good = next((root / labels[1]).glob("*.wav"))
    sf.write(bad / "whole.flac", sf.read(good, dtype="float32")[0], 16000)
    data = (bad / "whole.flac").read_bytes()
    (bad / "truncated.flac").write_bytes(data[: len(data) // 3])
    (bad / "whole.flac").unlink()
    (bad / "moved.wav").symlink_to(root / "nowhere.wav")  # a link whose file went
    os.mkfifo(bad / "pipe.wav")  # reading a named pipe would wait for a writer forever
    return sum(1 for _ in root.rglob("clip*.wav"))  # the good ones


def test_bad_clips_are_skipped_counted_and_the_study_runs_on(tmp_path, env_sfx):
    root = tmp_path / "mixed"
    for label in sorted({c.label for c in env_sfx.clips})[:2]:
        (root / label).mkdir(parents=True)
    good = _dataset(root, env_sfx)
    assert good >= 8
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    spec.update(study="bad-audio", output=str(tmp_path / "out"), design="ofat", seeds=[0])
    spec["axes"] = {"masking": {"path": "mask.strategy", "values": ["time"]}}
    spec.pop("crossed", None)
    b = spec["baseline"]
    b["data"] = {"cache": str(tmp_path / "data"), "corpus": ["mixed"], "tasks": {}}
    b["data"]["tasks"]["mixed"] = {"format": "folder", "root": str(root)}
    b["probe"].update(tasks=["mixed"], c_grid=[1.0], protocol="split")  # pretrains on it too
    b["encoder"].update(depth=1, width=32, heads=2)
    b["predictor"].update(depth=1, width=16, heads=2)
    b["train"].update(steps=3, batch_size=4, warmup_steps=1)
    exp = tmp_path / "experiments.yaml"
    exp.write_text(yaml.safe_dump(spec))

    prep = runner.invoke(app, ["data", "prepare", "--task", "mixed", "-e", str(exp)])
    assert prep.exit_code == 0, prep.output
    assert "mixed: skipped 6 clips" in prep.output

    res = runner.invoke(app, ["run", "-j", "1", str(exp)])
    assert res.exit_code == 0, res.output
    assert "ran 2, failed 0" in res.output
    db = sqlite3.connect(tmp_path / "out" / "results.db")
    assert db.execute("select count(*) from trials where status != 'done'").fetchone() == (0,)

    status = runner.invoke(app, ["status", str(exp)])
    assert status.exit_code == 0, status.output
    assert (
        f"data: {good} clips in 1 tasks; 6 clips skipped in 1 task when prepared: "
        "mixed 1 silent, 5 unreadable" in status.output
    )
    page = (tmp_path / "out" / "reports" / "bad-audio" / "index.html").read_text()
    assert "Audio skipped: 6 clips could not be used" in page
    assert f"mixed: 1 silent, 5 unreadable (of {good + 6} files; {good} used)" in page
