"""Security: what abl loads, starts and writes. The sources are read for the calls that would
load objects or start a shell; the MLflow UI is started for real and its socket checked; names
from the experiments file are tried as paths out of the output folder."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.spec import load_spec
from orchestrator.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "model", "db", "reports")
runner = CliRunner()


def _calls() -> list[tuple[str, ast.Call]]:
    """(file:line, call) for every call in the package sources."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    out.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return out


def _name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def test_sources_load_yaml_safely_and_checkpoints_as_weights_only():
    calls = _calls()
    assert calls
    for where, call in calls:
        name = _name(call)
        assert name not in {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"}, (
            where
        )
        assert not name.startswith(("pickle.", "marshal.", "shelve.")), where
        if name == "yaml.compose":  # the duplicate-key check: a safe loader
            assert any(ast.unparse(k.value) == "yaml.SafeLoader" for k in call.keywords), where
        if name == "torch.load":
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert kw.get("weights_only") == "True", where
    assert any(_name(c) == "torch.load" for _, c in calls)  # the check saw the loads
    assert any(_name(c) == "yaml.safe_load" for _, c in calls)


def test_no_shell_is_started_from_a_string():
    for where, call in _calls():
        name = _name(call)
        assert name not in {"os.system", "os.popen", "subprocess.getoutput"}, where
        for k in call.keywords:
            assert not (k.arg == "shell" and ast.unparse(k.value) != "False"), where
        if name.startswith("subprocess.") and call.args:
            # Commands are argument lists, never one string a shell would split.
            assert not isinstance(call.args[0], ast.Constant | ast.JoinedStr), where


def test_the_mlflow_ui_listens_on_loopback_only(tmp_path, tiny_experiments):
    exp = tiny_experiments()
    spec = load_spec(exp)
    spec.output.mkdir(parents=True)
    Tracker(spec.mlflow_uri, spec.study, spec.output / "mlartifacts")  # `abl ui` needs a study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(
        [str(Path(sys.executable).with_name("abl")), "ui", str(exp), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        listening = []
        t0 = time.time()
        while not listening and time.time() - t0 < 120:
            time.sleep(0.5)
            listening = _listeners(port)
        assert listening, "the MLflow UI never listened"
        assert set(listening) == {"127.0.0.1"}
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def _listeners(port: int) -> list[str]:
    """Local addresses of TCP sockets listening on `port` (IPv4 and IPv6), from /proc."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    found.append("::" if int(addr, 16) == 0 else addr)
    return found


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("study", "../../outside", ["study must be a name"]),
        ("study", "/tmp/outside", ["study must be a name"]),
        ("study", ".hidden", ["study must be a name"]),
        ("tasks", {"../outside": {"format": "folder", "root": "x"}}, ["data.tasks", "../outside"]),
    ],
)
def test_names_that_would_leave_the_output_folder_are_refused(tmp_path, key, value, words):
    spec = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    if key == "tasks":
        spec["baseline"]["data"]["tasks"] = value
    else:
        spec[key] = value
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(exp), "--output", str(tmp_path / "out")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    for w in words:
        assert w in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_an_axis_named_as_a_path_writes_its_page_inside_the_reports(tmp_path, tiny_experiments):
    exp = tiny_experiments(axes={"../../escaped": {"path": "mask.strategy", "values": ["time"]}})
    res = runner.invoke(app, ["run", "-j", "1", str(exp)])
    assert res.exit_code == 0, res.output
    reports = tmp_path / "out" / "reports" / "tiny"
    pages = {p.resolve() for p in reports.rglob("*.html")}
    assert any(p.name.endswith("escaped.html") for p in pages)  # its page, in the folder
    out = (tmp_path / "out").resolve()
    assert all(out in p.parents for p in tmp_path.resolve().rglob("*.html"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.yaml", "out"]
