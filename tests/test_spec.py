"""Experiments-file validation: one clear line naming the file, the key and the fix; exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from model.errors import AblError
from orchestrator.cli import app
from orchestrator.spec import check_size, load_spec

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write(tmp_path: Path, mutate) -> Path:
    """The repo's experiments file, made one-factor-at-a-time, after `mutate`."""
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    spec["design"] = "ofat"
    mutate(spec)
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_default_file_is_valid():
    spec = load_spec(ROOT / "experiments.yaml")
    assert spec.study == "masking"
    assert spec.design == "ofat" and spec.seeds == (0, 1, 2, 3, 4)
    assert [a.name for a in spec.axes] == ["masking"]
    assert spec.axis("mask.strategy").values == ("unstructured", "time")
    assert spec.baseline.probe.protocol == "cv" and spec.baseline.data.sampling == "source"
    corpus = ("corpus-0ad", "corpus-wesnoth", "corpus-speech", "corpus-sfx", "corpus-words")
    assert spec.baseline.data.corpus == corpus
    assert spec.baseline.encoder.patch == (16, 16)
    assert spec.output == ROOT / "abl-out"


def as_list(configs):
    """A mutation turning the repo's file into a `design: list` study with these entries."""

    def mutate(s):
        s.pop("axes")
        s.update(design="list", configs=configs)

    return mutate


BAD = {
    "unknown top key": (lambda s: s.update(studdy="x"), ["studdy", "did you mean 'study'"]),
    "unknown recipe key": (
        lambda s: s["baseline"]["mask"].update(ration=0.5),
        ["baseline.mask.ration", "'ratio'"],
    ),
    "ratio out of range": (
        lambda s: s["baseline"]["mask"].update(ratio=1.5),
        ["mask.ratio", "(0, 1)"],
    ),
    "negative clip-level weight": (
        lambda s: s["baseline"]["loss"].update(global_weight=-1.0),
        ["loss.global_weight", "negative"],
    ),
    "unknown clip-level view": (
        lambda s: s["baseline"]["loss"].update(global_view="next"),
        ["loss.global_view", "same, other"],
    ),
    "unknown clip-level pooling": (
        lambda s: s["baseline"]["loss"].update(global_pool="row"),
        ["loss.global_pool", "clip, band"],
    ),
    "unknown clip-level loss": (
        lambda s: s["baseline"]["loss"].update(global_loss="kl"),
        ["loss.global_loss", "l2, nce"],
    ),
    "contrastive clip-level term per band": (
        lambda s: s["baseline"]["loss"].update(global_loss="nce", global_pool="band"),
        ["loss.global_loss", "global_pool: clip"],
    ),
    "zero clip-level temperature": (
        lambda s: s["baseline"]["loss"].update(global_temperature=0.0),
        ["loss.global_temperature", "must be in [0.0001, 1000]"],
    ),
    "no loss term left": (
        lambda s: s["baseline"]["loss"].update(token_weight=0, global_weight=0),
        ["loss.token_weight = 0", "nothing trains the encoder", "loss.global_weight"],
    ),
    "a clip-level temperature float32 rounds to 0": (
        lambda s: s["baseline"]["loss"].update(global_temperature=5e-324),
        ["loss.global_temperature = 5e-324", "overflow float32"],
    ),
    "negative SIGReg weight": (
        lambda s: s["baseline"]["loss"].update(sigreg_weight=-0.1),
        ["loss.sigreg_weight", "must not be negative"],
    ),
    "SIGReg without directions": (
        lambda s: s["baseline"]["loss"].update(sigreg_weight=0.05, sigreg_slices=0),
        ["loss.sigreg_slices", "between 1 and 8192"],
    ),
    "crop not a whole number of patches": (
        lambda s: s["baseline"]["train"].update(crop_frames=100),
        ["train.crop_frames", "multiple of encoder.patch"],
    ),
    "crop longer than the input": (
        lambda s: s["baseline"]["train"].update(crop_frames=224),
        ["train.crop_frames", "frontend.frames = 208"],
    ),
    "unknown stem": (
        lambda s: s["baseline"]["encoder"].update(stem="conv"),
        ["encoder.stem", "linear, hmlp"],
    ),
    "hmlp stem on patches it cannot split": (
        lambda s: s["baseline"]["encoder"].update(stem="hmlp", patch=[16, 2]),
        ["encoder.stem", "divisible by 4"],
    ),
    "mixed share out of range": (
        lambda s: s["baseline"]["data"].update(mix=1.0),
        ["data.mix", "[0, 1)"],
    ),
    "an epsilon float32 drops": (
        lambda s: s["baseline"]["frontend"].update(eps=1e-50),
        ["frontend.eps", "at least 1e-30"],
    ),
    "an epsilon float32 cannot hold": (
        lambda s: s["baseline"]["frontend"].update(eps=1e39),
        ["frontend.eps = 1e+39", "at most 10000", "flattens every log-mel"],
    ),
    "silence share out of range": (
        lambda s: s["baseline"]["data"].update(max_silence=1.5),
        ["data.max_silence", "[0, 1]"],
    ),
    "gain out of range": (
        lambda s: s["baseline"]["data"].update(gain_db=60),
        ["data.gain_db", "[0, 40]"],
    ),
    "negative gradient clip": (
        lambda s: s["baseline"]["train"].update(grad_clip=-1.0),
        ["train.grad_clip", "must not be negative"],
    ),
    "unknown target source": (
        lambda s: s["baseline"]["target"].update(source="pixels"),
        ["target.source", "latent, input"],
    ),
    "wrong type": (
        lambda s: s["baseline"]["train"].update(steps="many"),
        ["train.steps", "integer"],
    ),
    "patch does not tile": (
        lambda s: s["baseline"]["encoder"].update(patch=[16, 15]),
        ["encoder.patch", "tile"],
    ),
    "width not divisible": (
        lambda s: s["baseline"]["encoder"].update(width=190),
        ["encoder.width", "heads"],
    ),
    "window longer than the input": (
        lambda s: s["baseline"]["frontend"].update(n_fft=100000),
        ["baseline.frontend.n_fft = 100000", "frames x frontend.hop = 33280", "smaller n_fft"],
    ),
    "window past any audio frontend": (
        lambda s: s["baseline"]["frontend"].update(n_fft=10**12, hop=10**9),
        ["baseline.frontend.n_fft = 1000000000000", "past 262144", "typo"],
    ),
    "mel filters left empty": (
        lambda s: s["baseline"]["frontend"].update(n_mels=128),
        ["baseline.frontend.n_mels = 128", "leaves 3 mel filters empty", "fewer n_mels"],
    ),
    "mel band too narrow for its filters": (
        lambda s: s["baseline"]["frontend"].update(f_min=7999.9),
        ["frontend.n_mels = 80", "leaves 79 mel filters empty", "wider f_min..f_max"],
    ),
    "more mel filters than bins could fill": (
        lambda s: s["baseline"]["frontend"].update(n_mels=10**9),
        ["frontend.n_mels = 1000000000", "at least 999999598 mel filters empty"],
    ),
    "sample rate past audio": (
        lambda s: s["baseline"]["frontend"].update(sample_rate=10**12),
        ["baseline.frontend.sample_rate = 1000000000000 Hz", "1000..384000", "use 16000"],
    ),
    "input length a typo": (
        lambda s: s["baseline"]["frontend"].update(frames=10**9),
        ["baseline.frontend.frames = 1000000000", "past 100000", "typo"],
    ),
    "encoder depth a typo": (
        lambda s: s["baseline"]["encoder"].update(depth=10**6),
        ["baseline.encoder.depth = 1000000", "past 64", "typo"],
    ),
    "predictor width a typo": (
        lambda s: s["baseline"]["predictor"].update(width=3 * 2**20),
        ["baseline.predictor.width = 3145728", "past 8192"],
    ),
    "warmup longer than training": (
        lambda s: s["baseline"]["train"].update(steps=560, warmup_steps=561),
        ["baseline.train.warmup_steps = 561", "train.steps = 560"],
    ),
    "batch a typo": (
        lambda s: s["baseline"]["train"].update(batch_size=10**12),
        ["baseline.train.batch_size = 1000000000000", "past 65536"],
    ),
    "masks per crop a typo": (
        lambda s: (
            s["baseline"]["mask"].update(per_crop=10**9),
            s["baseline"]["train"].update(batch_size=32),
        ),
        ["baseline.mask.per_crop = 1000000000", "32000000000 samples a step", "past 65536"],
    ),
    "unknown strategy in axis": (
        lambda s: s["axes"]["masking"].update(values=["unstructured", "spiral"]),
        ["axes.masking", "spiral"],
    ),
    "empty axis": (lambda s: s["axes"]["masking"].update(values=[]), ["axes.masking", "empty"]),
    "duplicate values": (
        lambda s: s["axes"]["masking"].update(values=["time", "time"]),
        ["duplicates"],
    ),
    "unknown axis path": (
        lambda s: s["axes"].update(x={"path": "mask.shape", "values": [1]}),
        ["mask.shape"],
    ),
    "axis values a scalar": (
        lambda s: s["axes"]["masking"].update(values="time"),
        ["axes.masking.values must be a list, got 'time'"],
    ),
    "axis values a mapping": (
        lambda s: s["axes"]["masking"].update(values={"a": 1}),
        ["axes.masking.values must be a list, got {'a': 1}"],
    ),
    "axis values missing": (
        lambda s: s["axes"]["masking"].pop("values"),
        ["axes.masking.values is missing"],
    ),
    "axis named nothing": (
        lambda s: s.update(axes={"": {"path": "mask.ratio", "values": [0.5]}}),
        ["axis named ''", "non-empty text"],
    ),
    "axis named null": (
        lambda s: s.update(axes={None: {"path": "mask.ratio", "values": [0.5]}}),
        ["axis named None", "non-empty text"],
    ),
    "axis name with =": (
        lambda s: s.update(axes={"ratio=high": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'ratio=high'", "holds '='", "rename the axis"],
    ),
    "axis name with a comma": (
        lambda s: s.update(axes={"a,b": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'a,b'", "holds ','", "name=value,name=value"],
    ),
    "axis named as the baseline": (
        lambda s: s.update(axes={"baseline": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'baseline'", "what abl calls its own trials", "rename the axis"],
    ),
    "axis named as the baseline in capitals": (
        lambda s: s.update(axes={"Baseline": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'Baseline'", "what abl calls its own trials"],
    ),
    "axis name with a newline": (
        lambda s: s.update(axes={"ratio\n": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'ratio\\n'", "control character"],
    ),
    "axis name with a terminal escape": (
        lambda s: s.update(axes={"\x1b[31mred": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'\\x1b[31mred'", "control character"],
    ),
    "axis name ending in a space": (
        lambda s: s.update(axes={"ratio ": {"path": "mask.ratio", "values": [0.5]}}),
        ["axes.'ratio '", "ends with a space"],
    ),
    "axis named after another setting": (
        lambda s: s.update(axes={"mask.ratio": {"path": "mask.strategy", "values": ["time"]}}),
        ["axes.mask.ratio varies mask.strategy", "name it mask.strategy"],
    ),
    "no axes": (lambda s: s.update(axes={}), ["axes"]),
    "bad seeds": (lambda s: s.update(seeds=[0, 0]), ["seeds"]),
    "bad study name": (lambda s: s.update(study="../escape"), ["study"]),
    "study name ending in a newline": (lambda s: s.update(study="s\n"), ["study"]),
    "too many target blocks": (
        lambda s: s["baseline"]["mask"].update(target_blocks=66),
        ["baseline.mask.target_blocks", "65 patches", "encoder.patch", "at most 65"],
    ),
    "too many target blocks in an axis": (
        lambda s: s["axes"].update({"mask.target_blocks": [4, 66]}),
        ["axes.mask.target_blocks value 66", "at most 65"],
    ),
    "unknown design": (lambda s: s.update(design="factorail"), ["design", "'factorial'?"]),
    "configs without design list": (
        lambda s: s.update(configs=[{"mask.ratio": 0.7}]),
        ["configs", "set design: list"],
    ),
    "design list without configs": (
        lambda s: (s.update(design="list"), s.pop("axes")),
        ["design: list needs configs"],
    ),
    "design list with axes": (
        lambda s: s.update(design="list", configs=[{"mask.ratio": 0.7}]),
        ["axes is not read by design: list", "delete axes"],
    ),
    "empty configs": (as_list([]), ["configs", "non-empty list"]),
    "entry not a mapping": (as_list(["m2d-like"]), ["configs[0]", "mapping"]),
    "unknown path in an entry": (
        as_list([{"mask.ratio": 0.7}, {"mask.ratoi": 0.7}]),
        ["configs[1] path 'mask.ratoi'", "did you mean 'mask.ratio'?"],
    ),
    "unknown section in an entry": (
        as_list([{"mak.strategy": "time"}]),
        ["configs[0] path 'mak.strategy'", "did you mean 'mask.strategy'?"],
    ),
    "wrong type in an entry": (as_list([{"mask.ratio": "high"}]), ["configs[0].mask.ratio"]),
    "impossible value in an entry": (
        as_list([{"name": "wide", "mask.ratio": 1.5}]),
        ["configs[0] (wide): mask.ratio", "(0, 1)"],
    ),
    "entry name not text": (as_list([{"name": 3, "mask.ratio": 0.7}]), ["configs[0].name"]),
    "entry sets nothing": (as_list([{"name": "x"}]), ["configs[0]", "sets no recipe path"]),
    "duplicate entry names": (
        as_list([{"name": "a", "mask.ratio": 0.7}, {"name": "a", "mask.ratio": 0.8}]),
        ["configs[1].name 'a'", "configs[0]", "its own name"],
    ),
    "identical entries": (
        as_list([{"name": "a", "mask.ratio": 0.7}, {"name": "b", "mask.ratio": 0.7}]),
        ["configs[1] (b)", "same trial as configs[0] (a)", "delete one"],
    ),
    "entry is the baseline": (
        as_list([{"name": "same", "mask.ratio": 0.6}]),
        ["configs[0] (same)", "same trial as the baseline"],
    ),
    "entry named as the baseline": (
        as_list([{"name": "baseline", "mask.ratio": 0.7}]),
        ["configs[0].name 'baseline'", "another name"],
    ),
    "entry named as a reference": (
        as_list([{"name": "Reference", "mask.ratio": 0.7}]),
        ["configs[0].name 'Reference'", "what abl calls its own trials", "rename the entry"],
    ),
    "entry name with =": (
        as_list([{"name": "a=b", "mask.ratio": 0.7}]),
        ["configs[0].name 'a=b'", "holds '='"],
    ),
    "entry name with a terminal escape": (
        as_list([{"name": "\x1b[2Jx", "mask.ratio": 0.7}]),
        ["configs[0].name '\\x1b[2Jx'", "control character"],
    ),
    "factorial past the hard limit": (
        lambda s: s.update(
            design="factorial",
            axes={
                "mask.ratio": [round(0.01 * i, 2) for i in range(1, 100)],
                "mask.target_blocks": [1, 2, 3, 4, 5, 6, 7, 8],
                "target.norm": ["none", "layer", "instance", "batch"],
                "loss.kind": ["l2", "smooth_l1", "cosine"],
                "train.lr": [0.001, 0.002, 0.003],
            },
        ),
        ["design: factorial", "= 28512 cells", "more than abl accepts", "design: ofat"],
    ),
    "factorial impossible cell": (
        lambda s: s.update(design="factorial", axes={"encoder.width": [128, 192]}),
        ["factorial cell encoder.width=128", "encoder.width", "heads"],
    ),
    "crossed unknown axis": (
        lambda s: s.update(design="factorial", crossed=["maskng"]),
        ["crossed", "'maskng'", "did you mean 'masking'?"],
    ),
    "crossed twice": (
        lambda s: s.update(design="factorial", crossed=["masking", "mask.strategy"]),
        ["crossed", "'masking' twice"],
    ),
    "crossed not a list": (
        lambda s: s.update(design="factorial", crossed="masking"),
        ["crossed", "non-empty list"],
    ),
    "crossed without factorial": (
        lambda s: s.update(design="ofat", crossed=["masking"]),
        ["crossed", "set design: factorial"],
    ),
    "sbatch directive without a value": (
        lambda s: s.update(launcher={"name": "slurm", "extra": {"constraint": None}}),
        ["launcher.extra.constraint = None", "delete the line"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_name_the_key_and_exit_2(tmp_path, case):
    mutate, words = BAD[case]
    path = write(tmp_path, mutate)
    with pytest.raises(AblError) as err:
        load_spec(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for w in words:
        assert w in msg
    result = runner.invoke(app, ["run", "-j", "1", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("abl: error:")
    assert not (tmp_path / "out").exists()  # nothing written


# Files that fail before the keys are read: YAML syntax, tags that would build objects, keys
# given twice, a document that is not a mapping, bytes that are not text.
RAW = {
    "unclosed list": ("study: x\naxes: [unclosed\n", ["YAML syntax error at line"]),
    "unclosed quote": ('study: "x\nseeds: [0]\n', ["YAML syntax error"]),
    "bad indentation": ("study: x\nbaseline:\n  mask:\n ratio: 0.5\n", ["YAML syntax error"]),
    "tab indentation": ("study: x\nbaseline:\n\tmask: {}\n", ["YAML syntax error"]),
    "base-60 number": ("study: x\nseeds: [1:30]\n", ["line 2", "1:30 is a base-60 number"]),
    "nested thousands deep": ("baseline: " + "[" * 3000 + "]" * 3000, ["nested deeper"]),
    "object/apply tag": (
        "study: !!python/object/apply:os.system ['echo hacked']\n",
        ["YAML syntax error", "python/object/apply"],
    ),
    "object/new tag": (
        "study: !!python/object/new:subprocess.Popen [['true']]\n",
        ["YAML syntax error", "python/object/new"],
    ),
    "name tag": ("study: !!python/name:os.system\n", ["YAML syntax error", "python/name"]),
    "module tag": ("study: !!python/module:os\n", ["YAML syntax error", "python/module"]),
    "custom tag": ("study: !Study x\n", ["YAML syntax error", "!Study"]),
    "duplicate top key": ("study: a\nseeds: [0]\nstudy: b\n", ["'study' appears twice"]),
    "duplicate axis": (
        "study: a\naxes:\n  masking: {path: mask.strategy, values: [time]}\n"
        "  masking: {path: mask.ratio, values: [0.5]}\n",
        ["'masking' appears twice", "line 3", "keep one"],
    ),
    "empty file": ("", ["must be a YAML mapping"]),
    "a list": ("- study: x\n", ["must be a YAML mapping"]),
    "a scalar": ("just some text\n", ["must be a YAML mapping"]),
    "not text": (b"study: \xff\xfe\x00x\n", ["not UTF-8 text", "save the experiments file"]),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_malformed_yaml_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    body, words = RAW[case]
    path = tmp_path / "exp.yaml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    result = runner.invoke(app, ["run", "-j", "1", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("abl: error:")
    assert str(path) in result.output
    for w in words:
        assert w in result.output
    assert not (tmp_path / "out").exists()  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_a_grid_over_the_trial_limit_needs_yes(tmp_path):
    axes = {
        "mask.ratio": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "mask.target_blocks": [1, 2],
    }
    path = write(tmp_path, lambda s: s.update(design="factorial", axes=axes, seeds=list(range(15))))
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--output", str(out)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(path) in result.output
    for w in ("= 18 cells x 15 seeds = 270 trials", "more than 256", "pass --yes"):
        assert w in result.output
    assert not out.exists()
    # Listing them needs no confirmation; --yes lets the run past the check.
    listed = runner.invoke(app, ["run", str(path), "--dry-run", "--output", str(out)])
    assert listed.exit_code == 0 and "270 trials" in listed.output
    spec = load_spec(path)
    check_size(spec, 270, yes=True)
    with pytest.raises(AblError, match="270 trials"):
        check_size(spec, 270, yes=False)
    check_size(spec, 256, yes=False)


def test_yaml_syntax_error_gives_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("study: x\naxes: [unclosed\n")
    with pytest.raises(AblError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_spec(p)


def test_yaml_tags_cannot_build_objects(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("study: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(AblError, match="YAML"):
        load_spec(p)


def test_output_under_the_home_folder(tmp_path, monkeypatch):
    # As data.cache and task roots: `~` is the home folder, not a folder named `~`.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, lambda s: s.update(output="~/abl-out"))
    assert load_spec(path).output == tmp_path / "home" / "abl-out"


def test_a_relative_data_cache_is_beside_the_experiments_file(tmp_path, monkeypatch):
    # As `output` and task roots, wherever abl is started from; `~` is the home folder.
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    path = write(tmp_path, lambda s: s["baseline"]["data"].update(cache="cache"))
    assert Path(load_spec(path).baseline.data.cache) == tmp_path / "cache"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, lambda s: s["baseline"]["data"].update(cache="~/c"))
    assert Path(load_spec(path).baseline.data.cache) == tmp_path / "home" / "c"


def test_output_with_a_nul_byte_is_one_line(tmp_path):
    path = write(tmp_path, lambda s: s.update(output="abl\0out"))
    result = runner.invoke(app, ["run", "-j", "1", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and str(path) in result.output
    assert "output = 'abl\\x00out' holds a NUL byte" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_output_flag_is_refused_not_read_as_the_current_folder(tmp_path, value):
    """Path("") is ".": `-o "$OUT"` with OUT never set would write the study into whatever
    folder abl was started from. (An empty `output:` or `data.cache:` in the file is refused
    as an empty value already.)"""
    path = write(tmp_path, lambda s: None)
    result = runner.invoke(app, ["run", "-j", "1", str(path), "-o", value])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"abl: error: {path}: --output is empty; name a folder, or drop the flag to use the "
        "file's output\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_an_empty_data_flag_is_refused(tmp_path):
    result = runner.invoke(app, ["data", "list", "--data", ""])
    assert result.exit_code == 2, result.output
    assert (
        result.output
        == "abl: error: --data is empty; name the data cache folder, or drop the flag\n"
    )


def test_the_empty_filter_check_counts_the_frontends_filters():
    # The check counts without building the filterbank; it must count what LogMel builds.
    from model.config import FrontendConfig
    from model.frontend import _mel_filterbank_f64, empty_mel_filters

    cases = [
        FrontendConfig(),  # the reference recipe: no empty filter
        FrontendConfig(n_mels=400),
        FrontendConfig(n_mels=128),
        FrontendConfig(n_mels=128, n_fft=1024),
        FrontendConfig(f_min=7999.9),
        FrontendConfig(f_min=0.0, n_mels=64, n_fft=256, sample_rate=8000, f_max=4000.0),
        FrontendConfig(sample_rate=22050, n_fft=1024, hop=256, n_mels=160, f_max=11025.0),
    ]
    counts = [empty_mel_filters(c) for c in cases]
    assert counts[:5] == [0, 115, 3, 0, 79]
    for cfg, n in zip(cases, counts, strict=True):
        assert n == int((_mel_filterbank_f64(cfg).max(axis=1) <= 0).sum()), cfg


def test_missing_file(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "no such experiments file" in result.output


def test_dry_run_lists_trials_and_writes_nothing(tmp_path):
    axes = {
        "masking": {"path": "mask.strategy", "values": ["unstructured", "time"]},
        "target": {"path": "target.branch", "values": ["targets-only", "full-input"]},
    }
    path = write(tmp_path, lambda s: s.update(seeds=[0, 1], design="ofat", axes=axes))
    result = runner.invoke(app, ["run", str(path), "--dry-run", "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "6 trials" in result.output  # the baseline and one value of each of two axes
    assert result.output.count("masking=time") == 2
    assert result.output.count("target=full-input") == 2
    assert not (tmp_path / "o").exists()


def _commands(group, prefix=()):
    """Every command path of the Typer app, sub-groups included."""
    import typer.main

    click_group = typer.main.get_command(group)
    out = []
    for name, cmd in click_group.commands.items():
        path = (*prefix, name)
        out.append(list(path))
        if hasattr(cmd, "commands"):
            out.extend(list((*path, sub)) for sub in cmd.commands)
    return out


def test_every_command_explains_itself():
    commands = _commands(app)
    # The README's list of commands, every one of them found in the app.
    assert {
        "run",
        "worker",
        "report",
        "status",
        "export",
        "ui",
        "dashboard",
        "data",
        "data prepare",
        "data list",
        "embed",
        "export-best",
    } <= {" ".join(c) for c in commands}
    for args in [[], *commands]:
        result = runner.invoke(app, [*args, "--help"], prog_name="abl")
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output
        assert f"abl {' '.join(args)}".strip() in " ".join(result.output.split())
        # Each command says what it does, and each option what it is for.
        body = result.output.split("Usage", 1)[1]
        assert len(body.split()) > 8, (args, result.output)


def test_a_removed_setting_says_why_and_what_to_do(tmp_path):
    spec = yaml.safe_load((Path(__file__).parents[1] / "experiments.yaml").read_text())
    spec["baseline"]["probe"]["seeds"] = [0, 1]
    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump(spec))
    with pytest.raises(AblError, match=r"baseline\.probe\.seeds is gone: .*delete the key"):
        load_spec(f)


@pytest.mark.parametrize(
    ("top", "count", "label"),
    [
        (
            {"design": "factorial", "axes": {"mask.ratio": [0.4, 0.8], "mask.strategy": ["time"]}},
            4,
            "factorial=mask.ratio=0.4,mask.strategy=time",
        ),
        (
            {"design": "list", "configs": [{"name": "m2d-like", "mask.ratio": 0.7}]},
            4,
            "config=m2d-like",
        ),
    ],
)
def test_dry_run_lists_every_design(tmp_path, top, count, label):
    def mutate(s):
        if top["design"] == "list":
            s.pop("axes")
        s.update(seeds=[0, 1], **top)

    path = write(tmp_path, mutate)
    result = runner.invoke(app, ["run", str(path), "--dry-run", "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert f"{count} trials" in result.output
    assert result.output.count(label) == 2
    assert not (tmp_path / "o").exists()
