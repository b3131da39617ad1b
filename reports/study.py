"""Study-level assembly: one page per axis plus an index, read from the results database."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from db.queries import results_frame
from reports.axis import _write_atomic, render_axis_report


def axis_frame(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The results frame with `baseline_setting`: the baseline trial's value of `axis`."""
    out = df.copy()
    out["baseline_setting"] = [
        json.loads(s).get(axis) if isinstance(s, str) and s else None
        for s in out.get("settings_json", pd.Series([None] * len(out)))
    ]
    return out


def render_reports(engine: Engine, study: str, axes: list[str], out_dir: Path) -> list[Path]:
    """Write `<axis>.html` for each axis and `index.html` linking them; returns the paths."""
    df = results_frame(engine, study)
    pages = []
    for axis in axes:
        pages.append(
            render_axis_report(axis_frame(df, axis), axis, study, out_dir / f"{axis}.html")
        )
    links = "\n".join(
        f'<li><a href="{html.escape(p.name)}">{html.escape(p.stem)}</a></li>' for p in pages
    )
    index = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>abl study {html.escape(study)}</title></head><body>"
        f"<h1>abl study {html.escape(study)}</h1><p>One page per ablation axis:</p>"
        f"<ul>{links}</ul></body></html>"
    )
    _write_atomic(out_dir / "index.html", index)
    return [*pages, out_dir / "index.html"]
