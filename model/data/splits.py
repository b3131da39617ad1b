"""Deterministic, grouped, class-stratified train / validation / test splits.

A plain hash split of groups can leave a class with no test clip when the class has few groups,
so groups are ranked by hash *within each class* and the first ones go to test and validation.
Near-duplicates share a group, so they never straddle two splits.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable


def group_rank(group: str) -> int:
    return int(hashlib.sha1(group.encode("utf-8")).hexdigest(), 16)


def assign_splits(
    pairs: Iterable[tuple[str, str]], test_frac: float = 0.2, val_frac: float = 0.1
) -> dict[str, str]:
    """Map each group to "train", "val" or "test" given (label, group) pairs.

    Every class with at least three groups gets at least one group in each split; a group that
    appears under several labels is placed by the first label that claims it.
    """
    groups_of: dict[str, set[str]] = defaultdict(set)
    for label, group in pairs:
        groups_of[label].add(group)
    split_of: dict[str, str] = {}
    for label in sorted(groups_of):
        groups = sorted((g for g in groups_of[label] if g not in split_of), key=group_rank)
        n = len(groups)
        n_test = max(1, round(test_frac * n)) if n >= 3 else 0
        n_val = max(1, round(val_frac * n)) if n >= 3 else 0
        for i, g in enumerate(groups):
            split_of[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split_of
