"""Use a study's encoders: embed a folder of audio files, export a study's best encoder."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from db import queries
from db.engine import init_db, make_engine
from model.data.audio import AudioError, load_audio
from model.embed import load_encoder
from model.errors import AblError
from orchestrator.outfile import check_out, write_whole
from orchestrator.spec import StudySpec

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".au"}
OUT_SUFFIXES = (".parquet", ".npz")


@dataclass(frozen=True)
class EmbedSummary:
    files: int
    skipped: list[str]
    dim: int
    out: Path


def audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise AblError(f"{folder}: no such folder; pass a folder of audio files")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )
    if not files:
        raise AblError(
            f"{folder}: holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}); "
            "pass another folder"
        )
    return files


def embed_folder(
    checkpoint: Path,
    folder: Path,
    out: Path,
    which: str = "context",
    skip_bad: bool = False,
    batch: int = 64,
    log: Callable[[str], None] = print,
) -> EmbedSummary:
    """One scene embedding per audio file under `folder`, written to `out` (.parquet: columns
    `file` and `embedding`; .npz: arrays `files` and `embeddings`), file names relative to
    `folder`. A file that cannot be decoded stops the run (nothing is written) unless
    `skip_bad`, which lists it and goes on."""
    check_out(out, OUT_SUFFIXES)
    enc = load_encoder(checkpoint, which)
    files = audio_files(folder)
    names: list[str] = []
    chunks: list[np.ndarray] = []
    skipped: list[str] = []
    waves: list[np.ndarray] = []
    for i, path in enumerate(files):
        rel = str(path.relative_to(folder))
        try:
            waves.append(load_audio(path, enc.sample_rate))
            names.append(rel)
        except AudioError as e:
            if not skip_bad:
                raise AblError(f"{e}; fix or remove the file, or pass --skip-bad") from None
            skipped.append(rel)
            log(f"  skipped {rel}: {e}")
        if len(waves) == batch or (i == len(files) - 1 and waves):
            chunks.append(enc.scene(waves, batch))
            waves = []
    if not names:
        raise AblError(f"{folder}: no file could be decoded")
    emb = np.concatenate(chunks)

    def write(tmp: Path) -> None:
        if out.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, files=np.array(names), embeddings=emb)
            return
        table = pa.table(
            {
                "file": pa.array(names),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]
                ),
            },
            metadata={
                "abl.checkpoint": checkpoint.name,
                "abl.encoder": which,
                "abl.config": json.dumps(dataclasses.asdict(enc.recipe)),
            },
        )
        pq.write_table(table, tmp)

    write_whole(out, write)
    return EmbedSummary(len(names), skipped, emb.shape[1], out)


@dataclass(frozen=True)
class Best:
    key: str
    axis: str
    setting: str
    seed: int
    val_accuracy: float  # mean over probe tasks: what chose it
    test_accuracy: dict[str, float]
    out: Path


def export_best(spec: StudySpec, out: Path | None = None) -> Best:
    """The study's best encoder, chosen by mean validation accuracy over its probe tasks (the
    test split never chooses), averaged over seeds per setting, then its best seed; saved with
    its config, normaliser and scores (loadable by `abl embed` and `model.hear`)."""
    if out is not None:
        check_out(out, (".pt",))
    engine = make_engine(spec.results_url)
    init_db(engine)
    df = queries.results_frame(engine, spec.study)
    df = df[(df["status"] == "done") & (df["axis"] != "reference")]
    val = df[df["metric"] == "val_accuracy"]
    if val.empty:
        raise AblError(
            f"{spec.source}: study {spec.study!r} has no finished trial with probe scores; "
            "run `abl run` first"
        )
    per_trial = val.groupby(["key", "axis", "setting", "seed"], as_index=False)["value"].mean()
    per_setting = per_trial.groupby(["axis", "setting"])["value"].mean()
    axis, setting = per_setting.idxmax()
    pick = per_trial[(per_trial["axis"] == axis) & (per_trial["setting"] == setting)]
    row = pick.loc[pick["value"].idxmax()]
    key = str(row["key"])
    # Named by the trial's pretraining (rows from before that column: by the trial key).
    pretrain = df.loc[df["key"] == key, "pretrain"].dropna()
    ckpt = spec.output / "checkpoints" / f"{pretrain.iloc[0] if len(pretrain) else key}.pt"
    if not ckpt.is_file():
        raise AblError(f"{ckpt}: the best trial's checkpoint is missing; re-run that trial")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    test = df[(df["key"] == key) & (df["metric"] == "accuracy")]
    scores = {str(t): float(v) for t, v in zip(test["task"], test["value"], strict=True)}
    keep = ("encoder.", "target_encoder.")
    slim = {
        "model": {k: v for k, v in state["model"].items() if k.startswith(keep)},
        "config": state["config"],
        "normalizer": state["normalizer"],
        "provenance": json.dumps(
            {
                "study": spec.study,
                "key": key,
                "axis": axis,
                "setting": setting,
                "seed": int(row["seed"]),
                "val_accuracy": float(row["value"]),
                "test_accuracy": scores,
            }
        ),
    }
    target = out or spec.output / f"best-{spec.study}.pt"
    write_whole(target, lambda tmp: torch.save(slim, tmp))
    return Best(key, axis, setting, int(row["seed"]), float(row["value"]), scores, target)
