"""Load a page in headless Chromium (Debian's `chromium`, driven by its own command line):
the DOM after the scripts ran, a screenshot, and every console message."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? (.*)")
TITLE = re.compile(r'<text class="gtitle"[^>]*>(.*?)</text>', re.S)


@dataclass
class Loaded:
    dom: str
    screenshot: Path
    console: list[str]  # console messages of either load (log, warning or error)

    @property
    def figure_titles(self) -> list[str]:
        """The titles plotly drew as SVG text: present only if the figures rendered."""
        return [html.unescape(re.sub(r"<[^>]+>", "", t)) for t in TITLE.findall(self.dom)]

    def ink(self) -> float:
        """Share of the screenshot's pixels that are not the page background (white)."""
        px = np.asarray(Image.open(self.screenshot).convert("L"))
        return float((px < 245).mean())


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("chromium is not installed: scripts/setup.sh installs Debian's chromium")
    return exe


def load(page: Path, workdir: Path, height: int = 3000) -> Loaded:
    """Render `page` twice (DOM, then screenshot), each with the scripts given 10 s of
    virtual time to finish."""
    workdir.mkdir(parents=True, exist_ok=True)
    shot = workdir / f"{page.stem}.png"
    common = [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={workdir / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        f"--window-size=1280,{height}",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    snap = subprocess.run(
        [*common, f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    console = [m.group(1) for out in (dom.stderr, snap.stderr) for m in CONSOLE.finditer(out)]
    return Loaded(dom.stdout, shot, console)
