"""Per-axis ablation report: bar charts of probe metrics per setting, with bootstrap CIs.

Input is the long results frame (one row per trial and metric) described in the module docs of
the results query: columns study, key, seed, axis, setting, status, task, metric, value,
baseline_setting. The page written by :func:`render_axis_report` is a single self-contained HTML
file (plotly.js inlined once, no network access needed to view it).
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

AVERAGE_TASK = "average over tasks"
REFERENCE_AXIS = "reference"
BASELINE_AXIS = "baseline"
REFERENCE_SETTINGS: tuple[str, ...] = ("random-init", "logmel-stats")
METRICS: tuple[str, ...] = ("accuracy", "macro_f1")

# Fixed seed so that re-rendering the same results gives byte-identical CIs.
BOOTSTRAP_SEED = 20240917
BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95

SUMMARY_COLUMNS = ["setting", "task", "n_seeds", "mean", "ci_low", "ci_high"]


# --------------------------------------------------------------------------------------------
# Pure statistics
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``values``.

    Returns ``(nan, nan)`` for fewer than two values: one seed carries no information about
    seed-to-seed variance, and a zero-width interval would falsely suggest certainty.
    A fresh Generator per call keeps each group's CI independent of how many groups came before.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def _summary_row(setting: str, task: str, values: np.ndarray) -> dict[str, object]:
    low, high = bootstrap_ci(values)
    return {
        "setting": setting,
        "task": task,
        "n_seeds": int(values.size),
        "mean": float(values.mean()),
        "ci_low": low,
        "ci_high": high,
    }


def summarise(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and 95% bootstrap CI across seeds, per (setting, task), for one metric.

    ``df`` needs columns setting, task, seed, status, metric, value; ``setting`` is used as the
    display label as-is (see :func:`select_axis_rows` for the baseline labelling). Only rows with
    status "done" and a finite value count. Duplicate rows for the same (setting, task, seed) are
    averaged first so that a seed is never counted twice.

    An extra task ``AVERAGE_TASK`` per setting averages each seed over tasks first and then
    bootstraps across seeds; only seeds that have every task of that setting are used, because a
    seed missing a hard task would otherwise inflate the average.

    With a single seed, ``ci_low`` and ``ci_high`` are NaN (no uncertainty estimate possible).
    Rows are ordered by setting (first appearance) then task (sorted, average last).
    """
    needed = {"setting", "task", "seed", "status", "metric", "value"}
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"summarise: missing columns {sorted(missing)}")

    values = pd.to_numeric(df["value"], errors="coerce")
    ok = (
        (df["status"] == "done")
        & (df["metric"] == metric)
        & df["task"].notna()
        & np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    )
    d = pd.DataFrame(
        {
            "setting": df.loc[ok, "setting"].astype(str),
            "task": df.loc[ok, "task"].astype(str),
            "seed": df.loc[ok, "seed"],
            "value": values[ok].astype(float),
        }
    )
    if d.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)

    per_seed = d.groupby(["setting", "task", "seed"], sort=False, as_index=False)["value"].mean()

    rows: list[dict[str, object]] = []
    for setting in pd.unique(per_seed["setting"]):
        s = per_seed[per_seed["setting"] == setting]
        tasks = sorted(pd.unique(s["task"]))
        for task in tasks:
            rows.append(_summary_row(setting, task, s.loc[s["task"] == task, "value"].to_numpy()))
        wide = s.pivot(index="seed", columns="task", values="value").dropna(how="any")
        if len(tasks) > 1 and not wide.empty:
            rows.append(_summary_row(setting, AVERAGE_TASK, wide.mean(axis=1).to_numpy()))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------------------------
# Row selection and labelling
# --------------------------------------------------------------------------------------------


def baseline_label(baseline_setting: object) -> str:
    """Display label of the shared baseline trial under the requested axis."""
    if baseline_setting is None or (
        isinstance(baseline_setting, float) and math.isnan(baseline_setting)
    ):
        return "baseline"
    return f"{baseline_setting} (baseline)"


def select_axis_rows(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Rows of ``axis`` plus the baseline rows, with ``setting`` relabelled for display.

    The baseline trial is shared by all axes, so its own ``setting`` is meaningless here; it is
    shown under the baseline's value of this axis (``baseline_setting``) so the reader sees where
    it sits among the settings.
    """
    sel = df[(df["axis"] == axis) | (df["axis"] == BASELINE_AXIS)].copy()
    is_base = sel["axis"] == BASELINE_AXIS
    if "baseline_setting" in sel.columns:
        labels = [baseline_label(v) for v in sel.loc[is_base, "baseline_setting"]]
    else:
        labels = ["baseline"] * int(is_base.sum())
    sel["setting"] = sel["setting"].astype(object)
    sel.loc[is_base, "setting"] = labels
    sel.loc[~is_base, "setting"] = sel.loc[~is_base, "setting"].map(_as_text)
    return sel


def select_reference_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["axis"] == REFERENCE_AXIS) & df["setting"].isin(REFERENCE_SETTINGS)]


def _as_text(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _setting_order(settings: Sequence[str]) -> list[str]:
    """Baseline first, then the others numerically if they all parse as numbers, else by text."""
    uniq = list(dict.fromkeys(settings))
    base = [s for s in uniq if s == "baseline" or s.endswith(" (baseline)")]
    rest = [s for s in uniq if s not in base]
    try:
        rest.sort(key=float)
    except ValueError:
        rest.sort()
    return base + rest


def _task_order(tasks: Sequence[str]) -> list[str]:
    uniq = sorted({t for t in tasks if t != AVERAGE_TASK})
    return uniq + ([AVERAGE_TASK] if AVERAGE_TASK in tasks else [])


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _uncertainty_note(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no completed trials"
    n = summary["n_seeds"]
    span = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
    base = f"mean over seeds (n = {span}); error bars: 95% bootstrap CI"
    if (n <= 1).all():
        return "n = 1 seed: a single seed gives no uncertainty estimate, so no error bars"
    if (n <= 1).any():
        return f"{base}; bars with a single seed have no error bar (no uncertainty estimate)"
    return base


def build_metric_figure(
    summary: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    axis: str,
    metric: str,
    study: str | None = None,
) -> go.Figure:
    """Grouped bars (x = task, one bar per setting) with CI error bars and reference lines."""
    title = f"Probe {metric} by {axis} setting"
    if study:
        title += f" — study {study}"
    fig = go.Figure()
    tasks = _task_order(list(summary["task"])) if not summary.empty else []
    # Legend, tick and title text go through plotly's pseudo-HTML renderer: escape for display.
    tick_labels = [html.escape(t) for t in tasks]

    for setting in _setting_order(list(summary["setting"])):
        s = summary[summary["setting"] == setting].set_index("task").reindex(tasks)
        mean = s["mean"].to_numpy(dtype=float)
        # Clip at 0: rounding can put a percentile a hair past the mean; NaN (one seed) -> no bar.
        plus = np.clip(s["ci_high"].to_numpy(dtype=float) - mean, 0, None)
        minus = np.clip(mean - s["ci_low"].to_numpy(dtype=float), 0, None)
        n = s["n_seeds"].to_numpy(dtype=float)
        fig.add_trace(
            go.Bar(
                name=html.escape(setting),
                x=tick_labels,
                y=mean,
                error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                customdata=np.column_stack([n, s["ci_low"], s["ci_high"]]),
                hovertemplate=(
                    "%{x}<br>"
                    + html.escape(setting)
                    + f"<br>{metric} = %{{y:.4f}}<br>CI [%{{customdata[1]:.4f}}, "
                    "%{customdata[2]:.4f}]<br>n seeds = %{customdata[0]}<extra></extra>"
                ),
            )
        )

    _add_reference_lines(fig, reference, tasks)

    fig.update_layout(
        title=dict(
            text=html.escape(title), subtitle=dict(text=html.escape(_uncertainty_note(summary)))
        ),
        barmode="group",
        xaxis=dict(title="task", type="category", categoryorder="array", categoryarray=tick_labels),
        yaxis=dict(title=metric, rangemode="tozero"),
        legend=dict(title=html.escape(axis)),
        height=480,
        margin=dict(t=90),
    )
    if summary.empty:
        fig.add_annotation(
            text="no completed trials for this metric",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
    return fig


def _add_reference_lines(fig: go.Figure, reference: pd.DataFrame, tasks: list[str]) -> None:
    """Dashed horizontal line per reference and task, spanning that task's bar group.

    Shapes rather than scatter traces: on a categorical x axis a shape can span the group width
    (category i sits at i, groups are about 0.8 wide), which a trace cannot.
    """
    if reference.empty or not tasks:
        return
    dashes = {"random-init": "dash", "logmel-stats": "dashdot"}
    colours = {"random-init": "#7f7f7f", "logmel-stats": "#8c564b"}
    positions = {"random-init": "start", "logmel-stats": "end"}  # keep the two labels apart
    for ref in REFERENCE_SETTINGS:
        r = reference[reference["setting"] == ref].set_index("task")
        first = True
        for i, task in enumerate(tasks):
            if task not in r.index:
                continue
            y = float(r.loc[task, "mean"])
            fig.add_shape(
                type="line",
                xref="x",
                yref="y",
                x0=i - 0.45,
                x1=i + 0.45,
                y0=y,
                y1=y,
                line=dict(dash=dashes.get(ref, "dash"), color=colours.get(ref, "#555"), width=2),
                name=ref,
                legendgroup=ref,
                showlegend=first,
                label=dict(text=ref, font=dict(size=9), textposition=positions.get(ref, "end")),
            )
            first = False


def build_axis_figures(df: pd.DataFrame, axis: str, study: str | None = None) -> list[go.Figure]:
    """Two figures for ``axis``: accuracy, then macro_f1 (see :func:`build_metric_figure`)."""
    rows = select_axis_rows(df, axis)
    refs = select_reference_rows(df)
    figures = []
    for metric in METRICS:
        figures.append(
            build_metric_figure(
                summarise(rows, metric),
                summarise(refs, metric),
                axis=axis,
                metric=metric,
                study=study,
            )
        )
    return figures


# --------------------------------------------------------------------------------------------
# HTML page
# --------------------------------------------------------------------------------------------


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (key, seed): short key, seed, setting label, status."""
    cols = ["key", "seed", "setting", "status"]
    if df.empty:
        return pd.DataFrame(columns=["key_short", *cols[1:]])
    t = df[cols].drop_duplicates(subset=["key", "seed"], keep="first").copy()
    t["key_short"] = t["key"].map(lambda k: _as_text(k)[:10])
    t["setting"] = t["setting"].map(_as_text)
    order = {s: i for i, s in enumerate(_setting_order(list(t["setting"])))}
    t["_o"] = t["setting"].map(order)
    t = t.sort_values(["_o", "seed", "key_short"], kind="stable")
    return t[["key_short", "seed", "setting", "status"]].reset_index(drop=True)


def _status_counts(table: pd.DataFrame) -> dict[str, int]:
    counts = table["status"].map(_as_text).value_counts()
    return {s: int(counts.get(s, 0)) for s in ("done", "failed", "running", "pending")}


def _table_html(table: pd.DataFrame) -> str:
    head = "<tr><th>key</th><th>seed</th><th>setting</th><th>status</th></tr>"
    body = []
    for r in table.itertuples(index=False):
        status = _as_text(r.status)
        failed = status == "failed"
        cell = "FAILED (no results)" if failed else status
        cls = ' class="failed"' if failed else ""
        body.append(
            f"<tr{cls}><td><code>{html.escape(str(r.key_short))}</code></td>"
            f"<td>{html.escape(_as_text(r.seed))}</td><td>{html.escape(str(r.setting))}</td>"
            f"<td>{html.escape(cell)}</td></tr>"
        )
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
p.summary { color: #444; margin-top: 0; }
p.warn { color: #a00; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .2rem .6rem; text-align: left; }
tr.failed td { background: #fde8e8; color: #a00; font-weight: 600; }
.figure { margin: 1rem 0 2rem; }
"""


def render_axis_report(df: pd.DataFrame, axis: str, study: str, out_path: Path) -> Path:
    """Write the self-contained HTML report for ``axis`` of ``study``; returns ``out_path``.

    When ``df`` has a ``study`` column, axis and baseline rows of other studies are dropped so
    seeds of different studies are never pooled; reference rows are kept whatever their study,
    since reference baselines need not be stored per study.
    """
    out_path = Path(out_path)
    if "study" in df.columns:
        df = df[(df["study"] == study) | (df["axis"] == REFERENCE_AXIS)]

    rows = select_axis_rows(df, axis)
    table = trial_table(rows)
    counts = _status_counts(table)
    figures = build_axis_figures(df, axis, study=study)

    parts: list[str] = []
    for i, fig in enumerate(figures):
        # The plotly.js bundle (~4.8 MB) goes inline once, with the first figure only.
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=(i == 0),
            default_height="480px",
            config={"displaylogo": False, "responsive": True},
        )
        parts.append(f'<div class="figure">{div}</div>')

    failed = table[table["status"] == "failed"]
    failed_note = ""
    if not failed.empty:
        keys = ", ".join(
            f"{html.escape(str(k))} (seed {html.escape(_as_text(s))}, {html.escape(str(setting))})"
            for k, s, setting in failed[["key_short", "seed", "setting"]].itertuples(index=False)
        )
        failed_note = (
            f'<p class="warn">{len(failed)} trial(s) failed and contribute no results: {keys}</p>'
        )

    summary = (
        f"{len(table)} trials: {counts['done']} done / {counts['failed']} failed / "
        f"{counts['pending']} pending"
        + (f" / {counts['running']} running" if counts["running"] else "")
    )
    title = f"Ablation of {axis} — study {study}"
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="summary">{html.escape(summary)}</p>',
            *parts,
            "<h2>Trials</h2>",
            failed_note,
            _table_html(table),
            "</body>",
            "</html>",
        ]
    )
    _write_atomic(out_path, page)
    return out_path


def _write_atomic(path: Path, text: str) -> None:
    """Temp file in the target folder + os.replace, so readers never see a half-written page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
