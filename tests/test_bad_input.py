"""Classes of bad experiments files, each tried on every member the config dataclasses hold
(so a setting added later is covered without a new test): `abl run` exits 2 with one line
naming the file, the key and the fix, and writes nothing."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from model.config import RecipeConfig
from orchestrator.cli import app
from orchestrator.grid import NON_SEMANTIC
from orchestrator.spec import SECTIONS, TOP_KEYS, load_spec

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class Raw(str):
    """A value written into the YAML text as is (`1e400`, `.nan`), not as YAML would quote it."""


def write(tmp_path: Path, mutate) -> Path:
    """The repo's experiments file, one factor at a time, after `mutate(spec_dict)`."""
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    spec["design"] = "ofat"
    mutate(spec)
    raws: dict[str, str] = {}

    def mark(v):
        if isinstance(v, Raw):
            raws[f"raw-{len(raws)}"] = str(v)
            return f"raw-{len(raws) - 1}"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    text = yaml.safe_dump(mark(spec), sort_keys=False)
    for k, v in raws.items():
        text = text.replace(k, v)
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def refused(tmp_path: Path, path: Path, words: list[str]) -> str:
    """`abl run` on `path`: exit 2, one line naming the file and `words`, nothing written."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "-j", "1", str(path), "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("abl: error:")
    assert str(path) in result.output, result.output
    for w in words:
        assert w in result.output, (w, result.output)
    assert not out.exists()
    return result.output


def hint_of(section: str, name: str):
    return typing.get_type_hints(SECTIONS[section])[name]


def settings(kind: type) -> list[str]:
    """Every recipe setting (section.name) whose values are of `kind`, alone or in a list."""
    out = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            hint = hint_of(section, f.name)
            inner = [a for a in typing.get_args(hint) if a is not Ellipsis] or [hint]
            if hint is kind or kind in inner:
                out.append(f"{section}.{f.name}")
    return out


def default(path: str):
    section, name = path.split(".")
    return getattr(getattr(RecipeConfig(), section), name)


def with_each(value: typing.Any, path: str):
    """The default of `path` with its numbers replaced by `value` (a list keeps its shape)."""
    d = default(path)
    return [value] * len(d) if isinstance(d, tuple) else value


def set_baseline(path: str, value):
    section, name = path.split(".")
    return lambda s: s["baseline"].setdefault(section, {}).update({name: value})


FLOATS = settings(float)
INTS = [p for p in settings(int) if p != "data.tasks"]
NON_FINITE = [Raw(".inf"), Raw("-.inf"), Raw(".nan"), Raw(".NaN"), Raw("1e400"), Raw("-1.0e+999")]


def test_the_classes_have_members():
    # The parametrisations below are as wide as the config: a float setting added to any
    # section joins them.
    assert {"train.lr", "frontend.eps", "probe.c_grid", "mask.block_scale"} <= set(FLOATS)
    assert {"train.steps", "encoder.depth", "encoder.patch", "probe.batch_size"} <= set(INTS)


@pytest.mark.parametrize("path", FLOATS)
def test_every_float_setting_must_be_finite(tmp_path, path):
    for i, bad in enumerate(NON_FINITE):
        sub = tmp_path / str(i)
        sub.mkdir()
        f = write(sub, set_baseline(path, with_each(bad, path)))
        refused(sub, f, [f"baseline.{path}", "not a finite number"])


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        (
            "axes.mask.ratio.values[1]",
            lambda s: s["axes"].update({"mask.ratio": [0.5, Raw(".nan")]}),
        ),
        (
            "axes.lr.values[0]",
            lambda s: s["axes"].update(lr={"path": "train.lr", "values": [Raw("1e400")]}),
        ),
        (
            "axes.probe.c_grid.values[0][1]",
            lambda s: s["axes"].update({"probe.c_grid": [[1.0, Raw(".inf")]]}),
        ),
        (
            "configs[0].train.weight_decay",
            lambda s: (
                s.pop("axes"),
                s.update(design="list", configs=[{"train.weight_decay": Raw("-.inf")}]),
            ),
        ),
        (
            "axes.mask.block_scale.values[0][0]",
            lambda s: s.update(design="factorial", axes={"mask.block_scale": [[Raw(".nan"), 0.2]]}),
        ),
    ],
)
def test_non_finite_numbers_in_axes_and_configs(tmp_path, where, mutate):
    refused(tmp_path, write(tmp_path, mutate), [where, "not a finite number"])


def test_numbers_yaml_1_1_reads_as_text_are_numbers(tmp_path):
    # PyYAML leaves `1e-3` a string; every other reader (and YAML 1.2) means a number.
    spec = load_spec(write(tmp_path, set_baseline("train.lr", Raw("2e-3"))))
    assert spec.baseline.train.lr == 0.002
    spec = load_spec(write(tmp_path, set_baseline("probe.c_grid", [Raw("1E+1"), Raw("1e-2")])))
    assert spec.baseline.probe.c_grid == (10.0, 0.01)


@pytest.mark.parametrize("path", FLOATS + INTS)
def test_no_numeric_setting_is_negative(tmp_path, path):
    f = write(tmp_path, set_baseline(path, with_each(-3, path)))
    refused(tmp_path, f, [f"baseline.{path}", "negative"])


@pytest.mark.parametrize("path", INTS)
def test_integers_past_64_bits_are_refused(tmp_path, path):
    f = write(tmp_path, set_baseline(path, with_each(2**70, path)))
    refused(tmp_path, f, [f"baseline.{path}", "too large"])


def test_seeds_past_what_the_generators_take(tmp_path):
    refused(tmp_path, write(tmp_path, lambda s: s.update(seeds=[0, 2**40])), ["seeds", "0 to"])


@pytest.mark.parametrize("section", sorted(SECTIONS))
@pytest.mark.parametrize("empty", [None, {}], ids=["null", "empty"])
def test_a_section_given_but_empty_names_the_section(tmp_path, section, empty):
    f = write(tmp_path, lambda s: s["baseline"].update({section: empty}))
    refused(tmp_path, f, [f"baseline.{section} is given but empty", f"`{section}:`"])


def test_the_lost_indent_of_the_issue(tmp_path):
    # `baseline:` with nothing under it, the recipe it held gone up one level.
    f = tmp_path / "exp.yaml"
    f.write_text("study: s\naxes: {mask.ratio: [0.5]}\nbaseline:\nmask:\n  ratio: 0.6\n")
    refused(tmp_path, f, ["baseline is given but empty"])
    f.write_text("study: s\naxes: {mask.ratio: [0.5]}\nbaseline:\n")
    refused(tmp_path, f, ["baseline is given but empty"])


@pytest.mark.parametrize("key", sorted(TOP_KEYS - {"study"}))
def test_a_top_level_key_given_but_empty_names_the_key(tmp_path, key):
    f = write(tmp_path, lambda s: s.update({key: None}))
    refused(tmp_path, f, [f"{key} is given but empty"])


@pytest.mark.parametrize("empty", [None, {}], ids=["null", "empty"])
def test_empty_storage_and_data_tasks(tmp_path, empty):
    refused(tmp_path, write(tmp_path, lambda s: s.update(storage=empty)), ["storage"])
    f = write(tmp_path, lambda s: s["baseline"]["data"].update(tasks=empty))
    refused(tmp_path, f, ["baseline.data.tasks is given but empty"])


@pytest.mark.parametrize("path", settings(str))
def test_an_empty_text_setting_is_refused(tmp_path, path):
    f = write(tmp_path, set_baseline(path, with_each("  ", path)))
    refused(tmp_path, f, [f"baseline.{path}", "empty"])


LISTS = [
    p
    for p in settings(str) + FLOATS + INTS
    if isinstance(default(p), tuple)
    and typing.get_args(hint_of(*p.split(".")))[-1] is Ellipsis
    and default(p)
]


@pytest.mark.parametrize("path", LISTS)
def test_a_list_setting_is_neither_empty_nor_repeats_an_item(tmp_path, path):
    assert {"probe.tasks", "probe.c_grid", "data.corpus"} <= set(LISTS)
    refused(tmp_path, write(tmp_path, set_baseline(path, [])), [f"baseline.{path}", "empty"])
    item = default(path)[0]
    f = write(tmp_path, set_baseline(path, [item, item]))
    refused(tmp_path, f, [f"baseline.{path}", "twice"])


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_recipe_section_at_the_top_level_points_under_baseline(tmp_path, section):
    f = write(tmp_path, lambda s: s.update({section: {}}))
    refused(tmp_path, f, [f"unknown key '{section}'", f"baseline.{section}"])


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda s: s["baseline"].update(ratio=0.5), ["baseline.ratio", "baseline.mask.ratio"]),
        (lambda s: s["baseline"].update(lr=0.5), ["baseline.lr", "baseline.train.lr"]),
        (
            lambda s: s["baseline"]["train"].update(mask={"ratio": 0.5}),
            ["baseline.train.mask", "write it as baseline.mask"],
        ),
    ],
)
def test_a_setting_one_level_off_says_where_it_belongs(tmp_path, mutate, words):
    refused(tmp_path, write(tmp_path, mutate), words)


@pytest.mark.parametrize("path", sorted(f"{s}.{k}" for s, k in NON_SEMANTIC) + ["data.tasks"])
def test_settings_that_cannot_vary_are_not_axes(tmp_path, path):
    value = default(path)
    values = [value, "other"] if path != "data.tasks" else [{}, {}]
    f = write(tmp_path, lambda s: s["axes"].update({path: values}))
    refused(tmp_path, f, [f"axis path '{path}'", "cannot vary", f"baseline.{path}"])
    f = write(tmp_path, lambda s: (s.pop("axes"), s.update(design="list", configs=[{path: 1}])))
    refused(tmp_path, f, [f"configs[0] path '{path}'", "cannot vary"])


@pytest.mark.parametrize(
    ("storage", "words"),
    [
        ({"optuna": "not a url"}, ["storage.optuna", "not a database URL"]),
        ({"results": "mongodb://host/db"}, ["storage.results", "not a database URL"]),
        # A scheme no installed tracking-store plugin registers: MLflow would fail on it only
        # once the first trial starts tracking.
        (
            {"mlflow": "mongodb+srv://u:secret@host/db"},
            ["storage.mlflow = mongodb+srv://u:***@host/db", "no tracking store for mongodb+srv"],
        ),
        ({"mlflow": "https://tracking.example.org"}, []),  # MLflow's own server: accepted
        (
            {"optuna": "sqlite:///a.db", "results": "sqlite:///a.db"},
            ["storage.results and storage.optuna name one database"],
        ),
        (
            {"results": "sqlite:///a.db", "mlflow": "sqlite:///a.db"},
            ["storage.mlflow and storage.results name one database"],
        ),
        (
            {"optuna": "sqlite:///a.db", "results": "sqlite:///./a.db"},
            ["storage.results and storage.optuna name one database", "both the SQLite file"],
        ),
        # A folder is MLflow's file store, which MLflow 3 refuses only once the run started.
        ({"mlflow": "garbage"}, ["storage.mlflow = garbage is not a tracking URI", "http(s)"]),
        ({"mlflow": "file:///tmp/mlruns"}, ["storage.mlflow = file:///tmp/mlruns", "sqlite:///"]),
        ({"mlflow": "file://u:secret@h/m"}, ["storage.mlflow = file://u:***@h/m"]),
        ({"optuna": "journal://rel.log"}, ["storage.optuna = journal://rel.log", "absolute path"]),
        ({"results": "sqlite:////tmp/a\0b.db"}, ["storage.results holds a NUL byte"]),
        ({"results": "sqlite://"}, ["storage.results = sqlite:// is an in-memory database"]),
        ({"mlflow": "sqlite:///:memory:"}, ["storage.mlflow", "in-memory"]),
    ],
)
def test_storage_urls_are_checked_when_loaded(tmp_path, storage, words):
    f = write(tmp_path, lambda s: s.update(storage=storage))
    if not words:
        load_spec(f)
        return
    assert "secret" not in refused(tmp_path, f, words)


def test_one_sqlite_file_spelled_two_ways_is_one_database(tmp_path, monkeypatch):
    # Relative paths open from the working folder, as SQLite opens them.
    (tmp_path / "db").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "db")
    monkeypatch.chdir(tmp_path)
    real = os.path.realpath(tmp_path / "db" / "a.db")
    at = f"sqlite:///{tmp_path}"
    for storage in [
        {"optuna": f"{at}/db/a.db", "results": f"{at}//db/a.db"},
        {"optuna": f"{at}/db/a.db", "results": "sqlite:///db/a.db"},
        {"optuna": f"{at}/link/a.db", "results": f"{at}/db/../db/a.db"},
    ]:
        f = write(tmp_path, lambda s, storage=storage: s.update(storage=storage))
        refused(
            tmp_path,
            f,
            ["storage.results and storage.optuna name one database", f"SQLite file {real}"],
        )
    assert not any((tmp_path / "db").iterdir())  # no Optuna tables made before the refusal
    # Two files in one folder are two databases.
    two = {"optuna": "sqlite:///db/a.db", "results": "sqlite:///db/b.db"}
    load_spec(write(tmp_path, lambda s: s.update(storage=two)))


def test_byo_options_are_typed(tmp_path):
    def declare(**options):
        def mutate(s):
            task = {"format": "esc50", "root": str(tmp_path), **options}
            s["baseline"]["data"]["tasks"] = {"mine": task}

        return mutate

    refused(tmp_path, write(tmp_path, declare(esc10="yes please")), ["mine.esc10", "true or"])
    refused(tmp_path, write(tmp_path, declare(test_fold=2.5)), ["mine.test_fold", "integer"])
    refused(tmp_path, write(tmp_path, declare(test_fold=Raw(".inf"))), ["mine.test_fold"])
    refused(tmp_path, write(tmp_path, declare(val_fold=None, root=None)), ["mine.root"])
    # The task's name is its key; an option YAML keys by a number is no option.
    refused(tmp_path, write(tmp_path, declare(name="other")), ["mine has an option 'name'"])
    numbered = {"format": "esc50", "root": str(tmp_path), 1: 2}
    f = write(tmp_path, lambda s: s["baseline"]["data"].update(tasks={"mine": numbered}))
    refused(tmp_path, f, ["mine has an option 1"])
    refused(tmp_path, write(tmp_path, declare(root="~nobody-abl/x")), ["mine.root", "`~`"])


def test_a_name_longer_than_a_filesystem_takes_is_one_line(tmp_path):
    long = "a" * 300
    f = write(tmp_path, lambda s: s["baseline"]["data"].update(cache=f"{tmp_path}/{long}"))
    refused(tmp_path, f, ["data.cache: the name aaaa", "is 300 bytes, over the 255"])
    root = f"{tmp_path}/{long}/x"
    f = write(
        tmp_path,
        lambda s: s["baseline"]["data"].update(tasks={"mine": {"format": "folder", "root": root}}),
    )
    refused(tmp_path, f, ["baseline.data.tasks.mine.root: the name aaaa", "300 bytes"])


@pytest.mark.parametrize(("name", "words"), [(123, ["123", "int", "quote it"]), (True, ["bool"])])
def test_a_task_named_by_a_number_or_a_boolean_says_to_quote_it(tmp_path, name, words):
    def mutate(s):
        s["baseline"]["data"]["tasks"] = {name: {"format": "folder", "root": str(tmp_path)}}

    refused(tmp_path, write(tmp_path, mutate), ["baseline.data.tasks has a task named", *words])


def test_a_finite_file_still_loads(tmp_path):
    # The checks refuse what they should and nothing more: every default is accepted.
    spec = load_spec(write(tmp_path, lambda s: None))
    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            v = getattr(getattr(spec.baseline, section), f.name)
            for x in v if isinstance(v, tuple) else (v,):
                assert not isinstance(x, float) or math.isfinite(x)


def test_cross_validation_needs_three_folds(tmp_path):
    """One fold tests, the next validates the regularisation: two folds leave nothing to train
    on (it once crashed inside the probe)."""
    for folds in (0, 1, 2):
        refused(tmp_path, write(tmp_path, set_baseline("probe.folds", folds)), ["probe.folds", "3"])


def test_probe_repeats_are_draws_of_cross_validation_folds(tmp_path):
    for n in (0, -1, 21):
        refused(tmp_path, write(tmp_path, set_baseline("probe.repeats", n)), ["probe.repeats"])
    spec = load_spec(write(tmp_path, set_baseline("probe.repeats", 3)))
    assert spec.baseline.probe.repeats == 3


def test_probe_tolerance_is_a_small_positive_number(tmp_path):
    for tol in (0, -1e-3, 0.5):
        refused(
            tmp_path, write(tmp_path, set_baseline("probe.tolerance", tol)), ["probe.tolerance"]
        )
