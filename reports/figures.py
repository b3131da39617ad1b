"""Plotly figure builders of the reports. Each takes the tables of reports.data and returns a
figure as a plain dict (data and layout, as plotly.js reads them) with a title; text from the
results is escaped (plotly renders pseudo-HTML).

Plain dicts rather than plotly.graph_objects: validating every trace costs milliseconds, which
a 500-trial study multiplies into most of the render time (bench/report_render.py); the
figures are checked where it matters, in a real browser (tests/test_reports_browser.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.colors import qualitative

from reports.data import AVERAGE_TASK, order_values
from reports.html import esc, num

PALETTE = qualitative.Plotly + qualitative.D3
REFERENCES = {  # name: (dash, colour, label position)
    "random-init": ("dash", "#7f7f7f", "start"),
    "logmel-stats": ("dashdot", "#8c564b", "end"),
}
# Explicit scales: plotly.js and plotly.py disagree on the direction of named ones.
DIVERGING = [
    [0.0, "#b2182b"],
    [0.25, "#ef8a62"],
    [0.5, "#f7f7f7"],
    [0.75, "#67a9cf"],
    [1.0, "#2166ac"],
]  # red worse, white no change, blue better
SEQUENTIAL = [[0.0, "#f7fbff"], [0.5, "#6baed6"], [1.0, "#08306b"]]  # light low, dark high
CURVES = {  # curve name prefix: (panel title, y axis title)
    "loss": ("training loss", "loss"),
    "eval.": ("k-NN accuracy during training", "k-NN accuracy"),
    "rank.": ("effective rank of clip embeddings, 256 fixed crops (collapse: low)", "rank"),
    "cos.": ("mean cosine between tokens after a layer norm (collapse: near 1)", "cosine"),
    "target_token_rank": ("effective rank of the target tokens before normalisation", "rank"),
}


Figure = dict  # {"data": [trace, ...], "layout": {...}}
# The look of plotly.py's default template, applied by plotly.js from the layout.
TEMPLATE = pio.templates["plotly"].to_plotly_json()


def _p(x: object) -> str:
    """A p-value, CI end or count for hover text; "-" when missing."""
    return num(x, "{:.3g}") or "-"


def figure(data: list[dict], **layout: object) -> Figure:
    return {"data": data, "layout": {"template": TEMPLATE, **layout}}


def _err(plus: np.ndarray, minus: np.ndarray) -> dict:
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus)


def colours(values: list[str]) -> dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}


def _title(text: str, subtitle: str = "") -> dict:
    t: dict = {"text": esc(text)}
    if subtitle:
        t["subtitle"] = {"text": esc(subtitle)}
    return t


def _empty(fig: Figure, text: str) -> Figure:
    note = dict(text=esc(text), showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig["layout"].setdefault("annotations", []).append(note)
    return fig


def _label(value: str, base: str | None) -> str:
    return f"{value} (baseline)" if value == base else value


def uncertainty_note(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no completed trials"
    n = summary["n_seeds"]
    span = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
    if (n <= 1).all():
        return "n = 1 seed: a single seed gives no uncertainty estimate, so no error bars"
    note = f"mean over seeds (n = {span}); error bars: 95% Student-t CI over seeds"
    if (n <= 1).any():
        note += "; a bar resting on one seed has none"
    return note


def score_bars(
    summary: pd.DataFrame,
    references: pd.DataFrame,
    *,
    axis: str,
    metric: str,
    tasks: list[str],
    base: str | None,
) -> Figure:
    """Grouped bars (x: task and the task average; one bar per value) with CI error bars, and
    the reference encoders as dashed lines over each task's group."""
    cats = [t for t in [*tasks, AVERAGE_TASK] if t in set(summary["task"])]
    values = order_values(list(summary["setting"]), base)
    col = colours(values)
    data = []
    # value x task tables of each statistic
    stat = (
        {
            c: summary.pivot(index="setting", columns="task", values=c)
            .reindex(index=values, columns=cats)
            .to_numpy(dtype=float)
            for c in ("mean", "ci_low", "ci_high", "n_seeds")
        }
        if not summary.empty
        else {}
    )
    for i, v in enumerate(values):
        mean, low, high = stat["mean"][i], stat["ci_low"][i], stat["ci_high"][i]
        plus = np.clip(high - mean, 0, None)
        minus = np.clip(mean - low, 0, None)
        data.append(
            dict(
                type="bar",
                name=esc(_label(v, base)),
                x=[esc(c) for c in cats],
                y=mean,
                marker=dict(color=col[v]),
                error_y=_err(plus, minus),
                customdata=np.column_stack([stat["n_seeds"][i], low, high]),
                hovertemplate=(
                    f"%{{x}}<br>{esc(_label(v, base))}<br>{metric} %{{y:.1f}}%<br>95% CI "
                    "[%{customdata[1]:.1f}, %{customdata[2]:.1f}]<br>seeds %{customdata[0]}"
                    "<extra></extra>"
                ),
            )
        )
    ref = references[references["metric"] == metric]
    if len(cats) > 1 and not ref.empty:
        wide = ref.groupby(["setting", "seed", "task"])["value"].mean().unstack("task")
        task_cols = [t for t in tasks if t in wide.columns]
        if len(task_cols) == len(tasks):
            wide[AVERAGE_TASK] = wide[task_cols].mean(axis=1)
        ref = wide.stack().rename("value").reset_index()
    shapes: list[dict] = []
    for name, (dash, colour, pos) in REFERENCES.items():
        r = ref[ref["setting"] == name].groupby("task")["value"].mean()
        for i, task in enumerate(cats):
            if task not in r.index:
                continue
            shapes.append(
                dict(
                    type="line",
                    xref="x",
                    yref="y",
                    x0=i - 0.45,
                    x1=i + 0.45,
                    y0=float(r[task]),
                    y1=float(r[task]),
                    line=dict(dash=dash, color=colour, width=2),
                    name=name,
                    legendgroup=name,
                    showlegend=not any(sh["name"] == name for sh in shapes),
                    label=dict(text=name, font=dict(size=9), textposition=pos),
                )
            )
    fig = figure(
        data,
        title=_title(f"Probe {metric} by {axis}", uncertainty_note(summary)),
        barmode="group",
        shapes=shapes,
        xaxis=dict(title=dict(text="task"), type="category"),
        yaxis=dict(title=dict(text=f"{metric} (%)"), rangemode="tozero"),
        legend=dict(title=dict(text=esc(axis))),
        height=460,
        margin=dict(t=90),
    )
    return _empty(fig, f"no completed trials for {metric}") if summary.empty else fig


def difference_figure(
    comparisons: pd.DataFrame, *, axis: str, tasks: list[str], base: str | None
) -> Figure:
    """Difference to the baseline value (points), per task and on the average, with the 95%
    interval of the model each comparison names; a star marks significance after Holm's
    correction over the axis' page."""
    cats = [t for t in [*tasks, AVERAGE_TASK] if t in set(comparisons["task"])]
    every = order_values([base or "", *comparisons["setting"]], base)
    col = colours(every)
    data = []
    for v in every[1:]:
        c = comparisons[comparisons["setting"] == v].set_index("task").reindex(cats)
        d = c["diff"].to_numpy(dtype=float)
        data.append(
            dict(
                type="scatter",
                name=esc(v),
                x=[esc(t) for t in cats],
                y=d,
                mode="markers+text",
                marker=dict(size=11, color=col[v]),
                text=["*" if x == "significant" else "" for x in c["verdict"]],
                textposition="middle right",
                error_y=_err(
                    np.clip(c["ci_high"].to_numpy(dtype=float) - d, 0, None),
                    np.clip(d - c["ci_low"].to_numpy(dtype=float), 0, None),
                ),
                customdata=[
                    [_p(n), _p(p), _p(q), esc(w), esc(m)]
                    for n, p, q, w, m in zip(
                        c["n"], c["p"], c["p_holm"], c["verdict"], c["model"], strict=True
                    )
                ],
                hovertemplate=(
                    f"%{{x}}<br>{esc(v)} - {esc(base)}: %{{y:+.2f}} points<br>"
                    "seeds %{customdata[0]}; %{customdata[4]}<br>p %{customdata[1]}, "
                    "Holm %{customdata[2]}<br>%{customdata[3]}<extra></extra>"
                ),
            )
        )
    n = comparisons["n"]
    tested = int(comparisons["p"].notna().sum())
    seeds = (
        ""
        if n.empty
        else str(int(n.min()))
        if n.min() == n.max()
        else f"{int(n.min())}-{int(n.max())}"
    )
    fig = figure(
        data,
        title=_title(
            f"Paired difference to the baseline ({base}) by {axis}",
            "accuracy points, same seeds; bars: 95% interval of the model in the table; "
            f"* Holm-corrected p < 0.05 over the {tested} tests of this page; seeds {seeds}",
        ),
        shapes=[
            dict(
                type="line",
                xref="paper",
                x0=0,
                x1=1,
                yref="y",
                y0=0,
                y1=0,
                line=dict(color="#444", width=1),
            )
        ],
        xaxis=dict(title=dict(text="task"), type="category"),
        yaxis=dict(title=dict(text="difference (points)")),
        legend=dict(title=dict(text=esc(axis))),
        scattermode="group",
        height=420,
        margin=dict(t=90),
    )
    return _empty(fig, "no value paired with the baseline yet") if comparisons.empty else fig


def curves_figure(
    curves: pd.DataFrame, trials: pd.DataFrame, *, axis: str, base: str | None
) -> Figure:
    """Training curves of the axis' trials, one line per trial coloured by its value, one
    panel per kind of curve (loss, k-NN accuracy, target rank)."""
    names = sorted(set(curves["name"])) if not curves.empty else []
    panels = [
        (p, [n for n in names if n == p or (p.endswith(".") and n.startswith(p))]) for p in CURVES
    ]
    panels = [(p, ns) for p, ns in panels if ns]
    values = order_values(list(trials["setting"]), base)
    col = colours(values)
    info = trials.set_index("key")
    rows = max(1, len(panels))
    gap_frac = 0.08
    height = (1 - gap_frac * (rows - 1)) / rows
    layout: dict = {}
    data: list[dict] = []
    annotations = []
    shown: set[str] = set()
    for r, (prefix, ns) in enumerate(panels):
        top = 1 - r * (height + gap_frac)
        suffix = "" if r == 0 else str(r + 1)
        layout[f"yaxis{suffix}"] = dict(
            domain=[top - height, top], title=dict(text=esc(CURVES[prefix][1])), anchor="x"
        )
        annotations.append(
            dict(
                text=esc(CURVES[prefix][0]),
                x=0.5,
                y=top,
                xref="paper",
                yref="paper",
                xanchor="center",
                yanchor="bottom",
                showarrow=False,
                font=dict(size=14),
            )
        )
        sel = curves[curves["name"].isin(ns) & curves["key"].isin(info.index)]
        setting = info.loc[sel["key"], "setting"].astype(str).to_numpy()
        seed = info.loc[sel["key"], "seed"].to_numpy(dtype=float)
        # One trace per value: its trials' lines joined by gaps (NaN), which draws as fast
        # as one line and keeps the legend to one entry per value.
        key_codes = pd.factorize(sel["key"].astype(str) + "\0" + sel["name"].astype(str))[0]
        order = np.lexsort((sel["step"].to_numpy(), key_codes))
        steps = sel["step"].to_numpy(dtype=float)[order]
        vals = sel["value"].to_numpy(dtype=float)[order]
        codes, setting, seed = key_codes[order], setting[order], seed[order]
        starts = np.r_[True, np.diff(codes) != 0]  # where a trial's curve begins
        for v in values:
            mine = setting == v
            if not mine.any():
                continue
            idx = np.flatnonzero(mine)
            # A gap before each of this value's points (but the first) that starts a line.
            pos = np.arange(1, len(idx))[starts[idx][1:]]

            def joined(a: np.ndarray, idx: np.ndarray = idx, pos: np.ndarray = pos) -> np.ndarray:
                return np.insert(a[idx], pos, np.nan)

            data.append(
                dict(
                    type="scatter",
                    mode="lines",
                    x=joined(steps),
                    y=joined(vals),
                    customdata=joined(seed),
                    xaxis="x",
                    yaxis=f"y{suffix}",
                    name=esc(_label(v, base)),
                    legendgroup=esc(v),
                    showlegend=v not in shown,
                    line=dict(color=col.get(v, "#333"), width=1.5),
                    hovertemplate=f"{esc(_label(v, base))} seed %{{customdata}}<br>step %{{x}}<br>"
                    "%{y:.4g}<extra></extra>",
                )
            )
            shown.add(v)
    fig = figure(
        data,
        title=_title(f"Training curves by {axis}", "one line per trial (seed)"),
        xaxis=dict(title=dict(text="step"), anchor=f"y{'' if rows == 1 else rows}"),
        annotations=annotations,
        legend=dict(title=dict(text=esc(axis))),
        height=260 * rows + 120,
        margin=dict(t=110),
        **layout,
    )
    return fig if panels else _empty(fig, "no training curves recorded yet")


def _signif_text(diff: float, verdict: str) -> str:
    if math.isnan(diff):
        return ""
    mark = "*" if verdict == "significant" else "?" if "too few" in verdict else ""
    return f"{diff:+.1f}{mark}"


def map_figure(table: pd.DataFrame, tasks: list[str], study: str) -> Figure:
    """The ablation map: rows axis = value, columns tasks and their average, colour the paired
    difference to the baseline in points (blue better, red worse)."""
    cats = [t for t in [*tasks, AVERAGE_TASK] if t in set(table["task"])]
    labels = [f"{a} = {s}" for a, s in zip(table["axis"], table["setting"], strict=True)]
    rows = list(dict.fromkeys(labels))
    t = table.assign(row=labels)
    z = t.pivot_table(index="row", columns="task", values="diff").reindex(index=rows, columns=cats)
    cell = {(r.row, r.task): r for r in t.itertuples()}
    text, hover = [], []
    for r in rows:
        text.append([])
        hover.append([])
        for c in cats:
            e = cell.get((r, c))
            if e is None:
                text[-1].append("")
                hover[-1].append(f"{esc(r)}<br>{esc(c)}: no paired result")
                continue
            text[-1].append(_signif_text(float(e.diff), e.verdict))
            hover[-1].append(
                f"{esc(r)}<br>{esc(c)}: {e.diff:+.2f} points<br>95% CI [{_p(e.ci_low)}, "
                f"{_p(e.ci_high)}]<br>seeds {int(e.n)}; {esc(e.model)}<br>"
                f"Holm p {_p(e.p_holm)}<br>{esc(e.verdict)}"
            )
    zs = z.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(zs))) if np.isfinite(zs).any() else 1.0
    heat = dict(
        type="heatmap",
        z=zs,
        x=[esc(c) for c in cats],
        y=[esc(r) for r in rows],
        text=text,
        texttemplate="%{text}",
        customdata=hover,
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=DIVERGING,
        zmid=0,
        zmin=-lim,
        zmax=lim,
        colorbar=dict(title=dict(text="points")),
    )
    fig = figure(
        [heat],
        title=_title(
            f"Ablation map — study {study}",
            "probe accuracy, difference to the baseline in points (same seeds); * significant "
            "after Holm's correction within the axis' family, ? too few seeds to tell",
        ),
        yaxis=dict(autorange="reversed", type="category"),
        xaxis=dict(side="top", type="category"),
        height=max(320, 26 * len(rows) + 220),
        margin=dict(t=140, l=220),
    )
    return _empty(fig, "no value paired with the baseline yet") if table.empty else fig


def interaction_figure(a: str, b: str, diff: pd.DataFrame, departure: float) -> Figure:
    z = diff.to_numpy(dtype=float)
    text = [["" if math.isnan(x) else f"{x:+.1f}" for x in row] for row in z]
    heat = dict(
        type="heatmap",
        z=z,
        x=[esc(c) for c in diff.columns],
        y=[esc(r) for r in diff.index],
        text=text,
        texttemplate="%{text}",
        colorscale=DIVERGING,
        zmid=0,
        colorbar=dict(title=dict(text="points")),
        hovertemplate=f"{esc(a)} %{{y}}<br>{esc(b)} %{{x}}<br>%{{z:+.2f}} points<extra></extra>",
    )
    sub = "task-averaged accuracy, mean over seeds and the other crossed axes, minus the "
    sub += f"first cell ({diff.index[0]}, {diff.columns[0]})"
    if not math.isnan(departure):
        sub += f"; largest departure from additivity {departure:.2f} points"
    return figure(
        [heat],
        title=_title(f"Interaction: {a} x {b}", sub),
        xaxis=dict(title=dict(text=esc(b)), type="category"),
        yaxis=dict(title=dict(text=esc(a)), type="category", autorange="reversed"),
        height=max(300, 60 * len(diff.index) + 200),
        margin=dict(t=110),
    )


def importance_figure(table: pd.DataFrame, note: str) -> Figure:
    heat = dict(
        type="heatmap",
        z=table.to_numpy(dtype=float),
        x=[esc(c) for c in table.columns],
        y=[esc(a) for a in table.index],
        texttemplate="%{z:.2f}",
        colorscale=SEQUENTIAL,
        zmin=0,
        zmax=1,
        colorbar=dict(title=dict(text="share")),
        hovertemplate="%{y}<br>%{x}: importance %{z:.3f}<extra></extra>",
    )
    return figure(
        [heat],
        title=_title("Axis importance (fANOVA)", note),
        xaxis=dict(side="top", type="category"),
        yaxis=dict(autorange="reversed", type="category"),
        height=max(300, 32 * len(table.index) + 220),
        margin=dict(t=150, l=180),
    )


def cost_figure(cost: pd.DataFrame) -> Figure:
    """Wall time per trial, mean over seeds per configuration, split by stage."""
    title = _title(
        "Cost per trial", "wall time by stage, mean over seeds; hover for FLOPs per step"
    )
    if cost.empty:
        return _empty(figure([], title=title, height=300), "no finished trial yet")
    g = cost.groupby("label", sort=False).mean(numeric_only=True).sort_values("wall_s")
    extra = np.column_stack(
        [g["flops_per_step"] / 1e9, g["gflops_per_s"], g["wall_s"] / 60]
    ).astype(float)
    stages = [
        ("data_s", "data"),
        ("train_s", "training"),
        ("probe_s", "probes"),
        ("other_s", "other"),
    ]
    data = [
        dict(
            type="bar",
            name=name,
            y=[esc(x) for x in g.index],
            x=g[c].to_numpy(float) / 60,
            orientation="h",
            customdata=extra,
            hovertemplate=f"%{{y}}<br>{name} %{{x:.2f}} min of %{{customdata[2]:.2f}}<br>"
            "%{customdata[0]:.2f} GFLOP per step, %{customdata[1]:.0f} GFLOP/s<extra></extra>",
        )
        for c, name in stages
    ]
    return figure(
        data,
        title=title,
        barmode="stack",
        xaxis=dict(title=dict(text="minutes")),
        yaxis=dict(type="category"),
        height=max(300, 18 * len(g) + 200),
        margin=dict(t=110, l=220),
    )
