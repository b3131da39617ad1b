"""Every YAML example in README.md and docs/*.md is accepted where it belongs.

A block that is a whole experiments file must load as one. A fragment is placed where its keys
say it goes: top-level keys into the README's experiments file (the reference example), a
`baseline:` into the repository's experiments.yaml, and a mapping of task names to
`{format, root}` under its `baseline.data.tasks`. A block the test cannot place fails: the
docs would be showing a place the file does not have.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from model.errors import AblError
from orchestrator.spec import TOP_KEYS, load_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEY_LINE = re.compile(r"^[A-Za-z_][\w.-]*:(\s|$)")


def yaml_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each fenced ```yaml block, and of each indented code block that opens
    with a `key:` line (split at blank lines: the README shows alternatives one after the
    other)."""
    lines = path.read_text().splitlines()
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            lang = line.strip()[3:].strip()
            j = i + 1
            while not lines[j].strip().startswith("```"):
                j += 1
            if lang in ("yaml", "yml"):
                out.append((i + 2, "\n".join(lines[i + 1 : j])))
            i = j + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j, chunk, start = i, [], i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                if lines[j].strip():
                    chunk.append(lines[j][4:])
                elif chunk:
                    if KEY_LINE.match(chunk[0]):
                        out.append((start + 1, "\n".join(chunk)))
                    chunk, start = [], j + 1
                j += 1
            if chunk and KEY_LINE.match(chunk[0]):
                out.append((start + 1, "\n".join(chunk)))
            i = j
            continue
        i += 1
    return out


BLOCKS = [(p, line, text) for p in DOCS for line, text in yaml_blocks(p)]


def reference() -> dict:
    """The README's complete experiments file."""
    full = [yaml.safe_load(t) for p, _, t in BLOCKS if p.name == "README.md"]
    (ref,) = [b for b in full if isinstance(b, dict) and "study" in b]
    return ref


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def place(block: dict) -> dict:
    """The experiments file a fragment belongs in."""
    if "study" in block:
        return block
    if set(block) <= TOP_KEYS:
        spec = merge(reference(), block)
        if spec.get("design") == "list":
            spec.pop("axes", None)
        if spec.get("design") != "factorial":
            spec.pop("crossed", None)
        return spec
    if all(isinstance(v, dict) and {"format", "root"} <= set(v) for v in block.values()):
        # One data set's line: declared in the repository's experiments file.
        repo = yaml.safe_load((ROOT / "experiments.yaml").read_text())
        return merge(repo, {"baseline": {"data": {"tasks": block}}})
    if set(block) == {"baseline"}:
        repo = yaml.safe_load((ROOT / "experiments.yaml").read_text())
        return merge(repo, block)
    raise AssertionError(f"cannot place a block with keys {sorted(block)}")


def test_the_docs_have_yaml_examples():
    names = {p.name for p, _, _ in BLOCKS}
    assert {"README.md", "byo.md"} <= names
    assert len(BLOCKS) >= 12


@pytest.mark.parametrize(
    ("path", "line", "text"), BLOCKS, ids=[f"{p.name}:{line}" for p, line, _ in BLOCKS]
)
def test_every_yaml_block_is_accepted_where_it_belongs(tmp_path, path, line, text):
    block = yaml.safe_load(text)
    assert isinstance(block, dict), f"{path.name}:{line} is not a mapping"
    f = tmp_path / "experiments.yaml"
    f.write_text(yaml.safe_dump(place(block), sort_keys=False))
    load_spec(f)  # raises AblError, naming the key, when the docs show a wrong place or value


def test_the_issues_top_level_data_example_is_refused_with_the_place_to_use(tmp_path):
    f = tmp_path / "experiments.yaml"
    spec = merge(reference(), {"data": {"tasks": {"mine": {"format": "folder", "root": "x"}}}})
    f.write_text(yaml.safe_dump(spec))
    with pytest.raises(AblError, match=r"unknown key 'data'.*baseline\.data"):
        load_spec(f)
