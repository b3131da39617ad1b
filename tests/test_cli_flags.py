"""Bad flags and read commands on a study that never ran: `abl export --out/--format`, every
--port, a busy port and a failed server under `abl ui`, `abl probe` and `abl ui` before
`abl run`. Each is one line starting `abl: error:`, exit 2 (a server that fails: non-zero),
and nothing written."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app, status_line
from orchestrator.evaluate import _check_finished
from orchestrator.spec import load_spec
from orchestrator.tracking import Tracker

ABL = str(Path(sys.executable).with_name("abl"))
FINISHED = Path(__file__).resolve().parent / "data" / "results-v3.db"  # study `tiny`, done
runner = CliRunner()


def one_line(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("abl: error: "), res.output
    for w in words:
        assert w in res.output, res.output


def _finished(exp: Path) -> Path:
    """The output folder of `exp` holding the results of a finished tiny study."""
    out = load_spec(exp).output
    out.mkdir(parents=True)
    shutil.copy(FINISHED, out / "results.db")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--out", "{tmp}"], ["--out {tmp} is a folder", "--out {tmp}/results.csv"]),
        (["--out", "{tmp}/t.parquet", "--format", "csv"], ["t.parquet", "--format is csv"]),
        (["--out", "{tmp}/t.csv", "--format", "parquet"], ["t.csv", "--format is parquet"]),
        (["--out", "{tmp}/t.xlsx"], ["--out {tmp}/t.xlsx: name a .csv or .parquet file"]),
        (["--out", "{tmp}/t.xlsx", "--format", "csv"], ["--out {tmp}/t.xlsx: name a .csv"]),
        (["--out", "{tmp}/t"], ["--out {tmp}/t: name a .csv or .parquet file"]),
        (["--format", "xlsx"], ["--format 'xlsx': use csv or parquet"]),
    ],
)
def test_export_refuses_a_folder_or_a_suffix_it_would_not_write(
    tmp_path, tiny_experiments, args, words
):
    exp = tiny_experiments()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = runner.invoke(app, ["export", str(exp), *args])
    one_line(res, *(w.replace("{tmp}", str(tmp_path)) for w in words))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.yaml"]  # nothing written


def test_probe_checks_its_out_file_before_it_probes(tmp_path):
    # It was checked after every probe had run (and, for a study, its scores were recorded).
    (tmp_path / "file").write_text("")
    for out, words in (
        ("t.txt", ["--out {tmp}/t.txt: name a .csv or .parquet file"]),
        ("file/t.csv", ["{tmp}/file is a file, not a folder"]),
    ):
        res = runner.invoke(
            app,
            ["probe", str(tmp_path / "none.pt"), "--task", "env-sfx", "--out", f"{tmp_path}/{out}"],
        )
        one_line(res, *(w.replace("{tmp}", str(tmp_path)) for w in words))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_status_counts_each_trial_once():
    # A released or failed trial is failed, not also pending (the counts used to overlap).
    line = status_line("s", 4, {"done": 1, "running": 1, "failed": 1}, 60.0)
    assert (
        line
        == "study s: 4 trials: 1 done, 1 running, 1 failed, 1 pending, ETA 1 min at 60s a trial"
    )
    line = status_line("s", 3, {"done": 1, "running": 0, "failed": 0, "pruned": 1}, None)
    assert line == "study s: 3 trials: 1 done, 0 running, 0 failed, 1 pending (1 pruned)"


def test_a_dry_run_refuses_what_the_run_would(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    res = runner.invoke(app, ["run", str(exp), "--dry-run", "-j", "0"])
    one_line(res, "--jobs 0: use 1 or more worker processes")
    (tmp_path / "file").write_text("")
    res = runner.invoke(app, ["run", str(exp), "--dry-run", "-o", str(tmp_path / "file")])
    one_line(res, f"output folder {tmp_path / 'file'} is not writable", "not a folder")
    spec = yaml.safe_load(exp.read_text())
    spec["baseline"]["data"]["tasks"] = {"mine": {"format": "folder", "root": "gone"}}
    exp.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(exp), "--dry-run"])
    one_line(res, "baseline.data.tasks.mine.root", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.yaml", "file"]


@pytest.mark.parametrize(
    ("storage", "words"),
    [
        ("", ["--storage is empty", "drop the flag"]),  # it used to mean "the file's"
        ("sqlite://", ["(--storage): storage.optuna = sqlite:// is an in-memory database"]),
        ("postgresql://u@127.0.0.1:1/db?password=hunter2", ["password=***", "cannot be reached"]),
    ],
)
def test_a_worker_checks_the_storage_it_is_given(tmp_path, tiny_experiments, storage, words):
    exp = tiny_experiments()
    res = runner.invoke(app, ["worker", str(exp), "--storage", storage])
    one_line(res, *words)
    assert "hunter2" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.yaml"]


def test_export_to_a_place_it_cannot_write_is_one_line_and_leaves_nothing(
    tmp_path, tiny_experiments
):
    exp = tiny_experiments()
    out = _finished(exp)
    (tmp_path / "file").write_text("")
    long = f"{tmp_path}/{'a' * 300}.csv"
    res = runner.invoke(app, ["export", str(exp), "--out", long])
    one_line(res, f"{long}: a name in this path is longer than the filesystem allows (255 bytes")
    for target, why in (("/proc/abl-none.csv", "No such file"), (f"{tmp_path}/file/t.csv", "")):
        res = runner.invoke(app, ["export", str(exp), "--out", target])
        one_line(res, f"--out {target}", why)
    assert not [p for p in out.iterdir() if p.suffix == ".csv"]
    assert not [p for p in tmp_path.rglob(".*partial*")]


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("{tmp}", ["--out {tmp} is a folder", "{tmp}/x.pt"]),
        ("{tmp}/best.txt", ["--out {tmp}/best.txt: name a .pt file"]),
        ("{tmp}/file/best.pt", ["{tmp}/file is a file, not a folder"]),
    ],
)
def test_export_best_checks_its_file_before_it_chooses(tmp_path, tiny_experiments, target, words):
    exp = tiny_experiments()
    _finished(exp)
    (tmp_path / "file").write_text("")
    target = target.replace("{tmp}", str(tmp_path))
    res = runner.invoke(app, ["export-best", str(exp), "--out", target])
    one_line(res, *(w.replace("{tmp}", str(tmp_path)) for w in words))
    assert not list(tmp_path.glob("**/*.pt")) and not list(tmp_path.glob("**/.*partial*"))


def test_export_writes_the_format_its_suffix_names(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    _finished(exp)
    for name, fmt in (("t.parquet", []), ("t.PARQUET", []), ("t.csv", []), ("t", ["--format"])):
        target = tmp_path / name
        flags = [*fmt, "parquet"] if fmt else []
        res = runner.invoke(app, ["export", str(exp), "--out", str(target), *flags])
        assert res.exit_code == 0 and f"-> {target}" in res.output, res.output
        read = pd.read_csv if name.endswith(".csv") else pd.read_parquet
        table = read(target)
        assert len(table) > 0 and list(table.columns[:3]) == ["study", "key", "seed"]
    assert (tmp_path / "t.parquet").read_bytes()[:4] == b"PAR1"


@pytest.mark.parametrize("command", ["ui", "dashboard"])
@pytest.mark.parametrize("port", ["-5", "0", "65536", "99999"])
def test_every_port_flag_takes_1_to_65535_only(tmp_path, command, port):
    # Checked while the arguments are parsed: the experiments file is not even read.
    res = runner.invoke(app, [command, str(tmp_path / "missing.yaml"), "--port", port])
    one_line(res, f"--port {port}: choose a port from 1 to 65535")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["ui", "dashboard"])
@pytest.mark.parametrize("host", ["", "a b", "127.0.0.1\n"])
def test_every_host_flag_names_an_address(tmp_path, command, host):
    # An empty one made the dashboard listen on every address, and the MLflow UI fail.
    res = runner.invoke(app, [command, str(tmp_path / "missing.yaml"), "--host", host])
    one_line(res, f"--host {host!r}: name an address to listen on")
    assert sorted(tmp_path.iterdir()) == []


def _tracked(exp: Path) -> None:
    """The study's MLflow experiment, as `abl run` creates it."""
    spec = load_spec(exp)
    spec.output.mkdir(parents=True, exist_ok=True)
    Tracker(spec.mlflow_uri, spec.study, spec.output / "mlartifacts")


def test_ui_refuses_a_busy_port_before_it_starts_mlflow(tiny_experiments):
    exp = tiny_experiments()
    _tracked(exp)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = runner.invoke(app, ["ui", str(exp), "--port", str(port)])
    one_line(res, f"--host 127.0.0.1 --port {port}: cannot listen there", "Address already")
    assert "MLflow UI:" not in res.output


def test_ui_exits_non_zero_when_the_mlflow_server_fails(tiny_experiments):
    """`mlflow ui` exits 0 when its server fails to start (here: a loop uvicorn cannot load,
    from uvicorn's own environment variable); `abl ui` does not."""
    exp = tiny_experiments()
    _tracked(exp)
    res = subprocess.run(
        [ABL, "ui", str(exp), "--port", str(_free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "UVICORN_LOOP": "nonexistent"},
        timeout=300,
        check=False,
    )
    assert res.returncode != 0, res.stderr
    assert res.stderr.splitlines()[-1] == (
        "abl: error: the MLflow UI stopped; its messages above say why"
    ), res.stderr[-2000:]


def _running(needle: bytes) -> list[int]:
    """Processes (not zombies) whose command line holds `needle`."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmd and state != "Z":
            found.append(int(d.name))
    return found


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 0)])
def test_ui_stopped_by_a_signal_leaves_no_server_behind(tiny_experiments, sig, code):
    """`mlflow ui` runs uvicorn workers and job runners of its own. Stopping `abl ui` (kill,
    a closed terminal, Ctrl-C) stops all of them: none keeps the port or the store open."""
    exp = tiny_experiments()
    _tracked(exp)
    port = _free_port()
    ui = subprocess.Popen(
        [ABL, "ui", str(exp), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    needle = f"--port\0{port}".encode()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI never listened")
        servers = _running(needle)
        assert len(servers) >= 2, servers  # mlflow ui and its uvicorn at least
        ui.send_signal(sig)
        assert ui.wait(timeout=60) == code
        assert _running(needle) == []
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        for pid in _running(needle):
            os.kill(pid, signal.SIGKILL)


def test_ui_on_a_study_that_never_ran_creates_nothing(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    out = tmp_path / "out"
    res = runner.invoke(app, ["ui", str(exp), "--port", str(_free_port())])
    one_line(
        res,
        f"{exp}: study tiny has no MLflow runs yet ({out / 'mlflow.db'} does not exist)",
        f"run `abl run {exp}` first",
    )
    assert not out.exists()
    # A store that holds other studies only: this one is not in it.
    _tracked(exp)
    other = tmp_path / "other.yaml"
    other.write_text(exp.read_text().replace("study: tiny", "study: other", 1))
    res = runner.invoke(app, ["ui", str(other), "--port", str(_free_port())])
    one_line(res, "study other is not in the MLflow store", f"run `abl run {other}` first")


def test_probe_on_a_study_that_never_ran_creates_nothing(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    out = tmp_path / "out"
    res = runner.invoke(app, ["probe", str(exp), "--task", "env-sfx"])
    one_line(res, f"{exp}: study 'tiny' has no finished trials in {out}; run `abl run {exp}` first")
    assert not out.exists()
    # A results database without a finished trial of this study: refused the same way.
    _finished(exp)
    other = tmp_path / "other.yaml"
    other.write_text(exp.read_text().replace("study: tiny", "study: other", 1))
    res = runner.invoke(app, ["probe", str(other), "--task", "env-sfx"])
    one_line(res, "study 'other' has no finished trials in", f"run `abl run {other}` first")
    assert sorted(p.name for p in out.iterdir()) == ["results.db"]
    _check_finished(load_spec(exp))  # the finished study passes


@pytest.mark.parametrize("made", [False, True], ids=["no-output", "empty-output"])
def test_reading_a_study_that_never_ran_creates_nothing(tmp_path, tiny_experiments, made):
    """export, export-best and report refuse in one line; status says every trial is pending.
    None of them creates the results database (export wrote a header-only CSV before)."""
    exp = tiny_experiments()
    out = tmp_path / "out"
    if made:
        out.mkdir()
    for command in ("export", "export-best", "report"):
        res = runner.invoke(app, [command, str(exp)])
        one_line(res, f"{exp}: study tiny has no results yet; run `abl run {exp}` first")
    res = runner.invoke(app, ["status", str(exp)])
    assert res.exit_code == 0, res.output
    assert "0 done, 0 running, 0 failed" in res.output and "pending (not started" in res.output
    assert (sorted(out.iterdir()) == []) if made else not out.exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--mem", "16G"], ["--mem: a slurm flag", "local launcher", "drop it"]),
        (["--wait", "--qos", "high"], ["--qos --wait: slurm flags", "drop them"]),
        (["--sbatch", "constraint=a100"], ["--sbatch: a slurm flag", "--launcher slurm"]),
    ],
)
def test_slurm_flags_on_a_local_study_are_refused(tmp_path, tiny_experiments, flags, words):
    """They used to be ignored silently: the study ran on this machine's cores instead."""
    exp = tiny_experiments()
    res = runner.invoke(app, ["run", str(exp), *flags])
    one_line(res, *words)
    assert not (tmp_path / "out").exists()
