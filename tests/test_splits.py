"""Grouped, stratified splits on the real 0 A.D. task."""

from __future__ import annotations

from collections import defaultdict

from model.data.splits import assign_splits


def test_every_class_in_every_split_and_groups_never_straddle(env_sfx):
    splits_of_group = defaultdict(set)
    classes_of_split = defaultdict(set)
    for c in env_sfx.clips:
        splits_of_group[c.group].add(c.split)
        classes_of_split[c.split].add(c.label)
    assert all(len(s) == 1 for s in splits_of_group.values())
    assert classes_of_split["train"] == classes_of_split["val"] == classes_of_split["test"]
    assert len(classes_of_split["test"]) == 10


def test_split_is_deterministic_and_stratified():
    pairs = [(f"c{i % 3}", f"g{i}") for i in range(60)]
    a, b = assign_splits(pairs), assign_splits(list(reversed(pairs)))
    assert a == b
    for label in ("c0", "c1", "c2"):
        got = [a[g] for lab, g in pairs if lab == label]
        assert got.count("test") == 4 and got.count("val") == 2
