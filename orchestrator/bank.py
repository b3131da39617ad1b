"""The prepared audio a worker reads: tasks, log-mel features and normalisers, loaded once per
process.
"""

from __future__ import annotations

from pathlib import Path

from model.config import FrontendConfig, RecipeConfig, TaskDef, train_frames
from model.data.datasets import Clip, PreparedTask, load_task
from model.data.features import (
    CropSampler,
    FeatureSet,
    Normalizer,
    corpus_normalizer,
    load_features,
    silence_floor,
)
from model.errors import AblError


class DataBank:
    """Prepared tasks, features and normalisers, loaded once per process."""

    def __init__(self, data_root: Path, custom: tuple[TaskDef, ...] = ()):
        self.root = data_root
        self.custom = custom
        self._tasks: dict[str, PreparedTask] = {}
        self._features: dict[tuple, FeatureSet] = {}
        self._norms: dict[tuple, Normalizer] = {}

    def task(self, name: str) -> PreparedTask:
        if name not in self._tasks:
            self._tasks[name] = load_task(name, self.root, self.custom)
        return self._tasks[name]

    def clips(self, name: str, split: str, limit: int | None) -> list[Clip]:
        """The clips of a split, or with split "all" every labelled clip (each split's slice
        under `limit`), sorted by file: the order cross-validation and stored predictions use."""
        task = self.task(name)
        if split != "all":
            return task.split(split, limit)
        return sorted(
            (c for sp in ("train", "val", "test") for c in task.split(sp, limit)),
            key=lambda c: c.file,
        )

    def features(self, name: str, split: str, fe: FrontendConfig, limit: int | None) -> FeatureSet:
        k = (name, split, fe, limit)
        if k not in self._features:
            clips = self.clips(name, split, limit)
            if not clips:
                raise AblError(f"task {name!r} has no {split} clips; re-run `abl data prepare`")
            self._features[k] = load_features(self.task(name), clips, fe, self.root)
        return self._features[k]

    def corpus(self, recipe: RecipeConfig) -> list[FeatureSet]:
        d = recipe.data
        return [self.features(t, "train", recipe.frontend, d.max_clips_per_class) for t in d.corpus]

    def sampler(self, recipe: RecipeConfig, seed: int) -> CropSampler:
        """Crops of the recipe's pretraining corpus, drawn as `data.sampling` says."""
        return CropSampler(
            self.corpus(recipe),
            train_frames(recipe),
            self.normalizer(recipe),
            seed=seed,
            sampling=recipe.data.sampling,
            max_silence=recipe.data.max_silence,
            floor=silence_floor(recipe.frontend),
        )

    def normalizer(self, recipe: RecipeConfig) -> Normalizer:
        k = (recipe.data.corpus, recipe.frontend, recipe.data.max_clips_per_class)
        if k not in self._norms:
            self._norms[k] = corpus_normalizer(self.corpus(recipe))
        return self._norms[k]
