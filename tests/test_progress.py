"""The training progress bar: shown to a person at a terminal, silent under CI or in a file."""

from __future__ import annotations

import io

from orchestrator import pretraining as runner


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_at_a_terminal(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    term = Terminal()
    monkeypatch.setattr(runner.sys, "stderr", term)
    show = runner.progress_bar(steps=200, batch=8)
    assert show is not None
    for step in range(200):
        show({"step": step, "loss": 1.0 / (step + 1)})
    text = term.getvalue()
    assert text.count("\r") == 100 and text.endswith("\n")
    assert "200/200" in text and "#" * 30 in text


def test_no_progress_bar_under_ci_or_into_a_file(monkeypatch):
    monkeypatch.setattr(runner.sys, "stderr", Terminal())
    monkeypatch.setenv("CI", "true")
    assert runner.progress_bar(10, 8) is None
    monkeypatch.delenv("CI")
    monkeypatch.setattr(runner.sys, "stderr", io.StringIO())
    assert runner.progress_bar(10, 8) is None
