"""The default pretraining corpus: long-form, unlabelled, and disjoint from every probe task.

Under cross-validated probes every labelled clip is a test clip once, so no probe task's audio
may reach pretraining; a study that would pretrain on it is refused before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from model.data.datasets import prepare_task
from model.data.sources import TASKS
from model.errors import AblError
from orchestrator.grid import expand
from orchestrator.spec import load_spec
from orchestrator.study import check_no_leak

ROOT = Path(__file__).resolve().parents[1]


def test_no_built_in_corpus_shares_audio_with_any_built_in_task(data_root):
    spec = load_spec(ROOT / "experiments.yaml")
    corpus = spec.baseline.data.corpus
    labelled = [n for n, src in TASKS.items() if not getattr(src, "unlabelled", False)]
    unlabelled = [n for n in TASKS if n not in labelled]
    assert set(spec.baseline.probe.tasks) <= set(labelled)
    assert set(corpus) <= set(unlabelled)
    corpus_audio = {c.sha1 for n in unlabelled for c in prepare_task(n, data_root, log=print).clips}
    for name in labelled:
        task = prepare_task(name, data_root, log=print)
        assert not corpus_audio & {c.sha1 for c in task.clips}, name
    # Long-form: crops of 208 frames (2.08 s) are rarely cut from a shorter recording.
    durations = [c.duration for n in unlabelled for c in prepare_task(n, data_root).clips]
    short = sum(d for d in durations if d < 2.08) / sum(durations)
    assert short < 0.01


def test_a_cv_study_pretraining_on_a_probe_task_is_refused(tiny_experiments):
    path = tiny_experiments()
    spec = yaml.safe_load(path.read_text())
    spec["baseline"]["data"]["corpus"] = ["corpus-0ad", spec["baseline"]["probe"]["tasks"][0]]
    spec["baseline"]["probe"]["protocol"] = "cv"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(AblError, match=r"data\.corpus.*leaks test audio"):
        load_spec(path)
    spec["baseline"]["probe"]["protocol"] = "split"  # a fixed test split never pretrains
    path.write_text(yaml.safe_dump(spec))
    load_spec(path)


def test_a_corpus_holding_copies_of_probe_clips_is_refused_before_anything_is_written(
    tiny_experiments, env_sfx, tmp_path
):
    # A folder-per-class corpus of the user's whose files are env-sfx's own prepared audio.
    for i, c in enumerate(env_sfx.split("train")[:3]):
        folder = tmp_path / "mine" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(env_sfx.path(c), folder / Path(c.file).name)
    cache = tmp_path / "cache"
    (cache / "tasks").mkdir(parents=True)
    (cache / "tasks" / "env-sfx").symlink_to(env_sfx.root)  # the real prepared task
    path = tiny_experiments()
    spec = yaml.safe_load(path.read_text())
    data = spec["baseline"]["data"]
    data["cache"] = str(cache)
    data["tasks"] = {"mine": {"format": "folder", "root": str(tmp_path / "mine")}}
    data["corpus"] = ["mine"]
    spec["baseline"]["probe"].update(tasks=["env-sfx"], protocol="cv")
    path.write_text(yaml.safe_dump(spec))
    s = load_spec(path)
    prepare_task("mine", cache, log=print, custom=s.baseline.data.tasks)
    with pytest.raises(AblError, match="holds 3 clip"):
        check_no_leak(s, expand(s))
    assert not s.output.exists()
