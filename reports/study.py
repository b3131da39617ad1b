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


FACTORIAL_AXIS = "factorial"  # what orchestrator.grid calls a factorial design's trials
LIST_AXIS = "config"  # and a list design's


def factorial_rows(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """A factorial design's trials shown on `axis`'s page by their value of it: the axis'
    main effect, pooled over the other crossed axes' cells and the seeds."""
    fac = (df["axis"] == FACTORIAL_AXIS).to_numpy()
    if not fac.any():
        return df
    out = df.copy()
    values = [
        json.loads(s).get(axis) if isinstance(s, str) and s else None for s in out["settings_json"]
    ]
    out.loc[fac, "setting"] = [v for v, f in zip(values, fac, strict=True) if f]
    out.loc[fac, "axis"] = axis
    return out


def report_axes(df: pd.DataFrame, axes: list[str]) -> list[str]:
    """The pages to draw: each axis, or for a list design the one page of its entries."""
    if (df["axis"] == LIST_AXIS).any():
        return [LIST_AXIS]
    return axes


def render_reports(engine: Engine, study: str, axes: list[str], out_dir: Path) -> list[Path]:
    """Write `<axis>.html` for each axis and `index.html` linking them; returns the paths.

    One-factor-at-a-time trials appear on their axis' page; a factorial design's trials on
    every crossed axis' page, grouped by that axis' value (its main effect); a list design's
    entries on one page, `config.html`."""
    df = results_frame(engine, study)
    pages = []
    for axis in report_axes(df, axes):
        rows = factorial_rows(axis_frame(df, axis), axis)
        pages.append(render_axis_report(rows, axis, study, out_dir / f"{axis}.html"))
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
