"""The study overview (index.html) and the assembly of every page, from the results database.

The overview holds what answers "what matters, by how much, how sure are we": the recipe
table, the ablation map, the interactions of a factorial's crossed axes, the axes' importance,
the cost per trial, and what is missing or too thin to tell. Each axis has its own page.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine

from reports import figures
from reports.axis import missing_lines, render_axis_page, seed_warnings
from reports.data import (
    AxisAnalysis,
    Results,
    ablation_map,
    analyse,
    cost,
    interactions,
    load_results,
    progress,
    recipe,
    trial_label,
)
from reports.html import Page, esc, num
from reports.importance import axis_importance

INDEX = "index.html"


def page_name(axis: str) -> str:
    """File name of an axis' page: the axis name made safe for a file system."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in axis).strip(".") or "axis"
    return f"{safe}.html"


def render_study_page(
    res: Results, analyses: dict[str, AxisAnalysis], pages: dict[str, str], out_path: Path
) -> Path:
    page = Page(f"abl study {res.study}")
    counts = progress(res)
    total = sum(counts.values())
    seeds = sorted({int(s) for s in res.trials["seed"].dropna()})
    page.para(
        f"design {res.design}; axes {', '.join(res.axes) or '-'}; seeds {seeds}; tasks "
        f"{', '.join(res.tasks)}. {total} trials: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k == "done")
        + ".",
        "summary",
    )
    page.add(
        "<nav>Axis pages: "
        + " ".join(f'<a href="{esc(f)}">{esc(a)}</a>' for a, f in pages.items())
        + "</nav>"
    )

    labels = [
        trial_label(a, s) for a, s in zip(res.trials["axis"], res.trials["setting"], strict=True)
    ]
    missing = missing_lines(res.trials.assign(label=labels), label="label")
    if missing:
        page.warnings(
            missing[:50] + ([f"... and {len(missing) - 50} more"] if len(missing) > 50 else []),
            f"Partial study: {len(missing)} of {total} trials have no result yet",
        )
    thin = [
        f"{axis} = {line}" for axis, a in analyses.items() for line in seed_warnings(a.comparisons)
    ]
    if thin:
        page.warnings(
            thin[:50] + ([f"... and {len(thin) - 50} more"] if len(thin) > 50 else []),
            "Seeds too few to tell (add seeds to the experiments file)",
        )

    skipped = [
        f"{task}: "
        + ", ".join(f"{n} {why}" for why, n in sorted(d["skipped"].items()))
        + f" (of {d['clips'] + sum(d['skipped'].values())} files; {d['clips']} used)"
        for task, d in sorted(res.data.items())
        if d.get("skipped")
    ]
    if skipped:
        n = sum(sum(d["skipped"].values()) for d in res.data.values())
        page.warnings(
            skipped, f"Audio skipped: {n} clips could not be used when the data was prepared"
        )

    page.heading("Recipe: the best value of each axis", "recipe")
    rec = recipe(analyses, res.base)
    page.para(
        "The value with the best task-averaged accuracy, its paired gain over the baseline "
        "value in points (95% bootstrap CI) and its Holm-corrected p-value."
    )
    page.table(
        rec,
        [
            ("axis", "axis", None),
            ("best", "best value", None),
            ("gain", "gain (points)", lambda x: num(x, "{:+.2f}")),
            ("ci_low", "CI low", lambda x: num(x, "{:+.2f}")),
            ("ci_high", "CI high", lambda x: num(x, "{:+.2f}")),
            ("p_holm", "Holm p", lambda x: num(x, "{:.3g}")),
            ("n", "seeds", None),
            ("verdict", "significant?", None),
        ],
        row_class=lambda r: "yes" if r["verdict"] == "significant" else "",
    )

    page.heading("Ablation map", "map")
    page.figure(figures.map_figure(ablation_map(analyses), res.tasks, res.study))

    page.heading("Interactions", "interactions")
    pairs = interactions(res)
    if not pairs:
        page.para(
            "No interaction to show: only a factorial design crosses axes "
            f"(this study's design is {res.design}"
            + (f", crossing {', '.join(res.crossed)}" if res.design == "factorial" else "")
            + ")."
        )
    for a, b, diff, departure in pairs:
        page.figure(figures.interaction_figure(a, b, diff, departure))

    page.heading("Axis importance", "importance")
    table, note = axis_importance(res)
    if table.empty:
        page.para(f"Not computed: {note}.")
    else:
        page.figure(figures.importance_figure(table, note))

    page.heading("Cost per trial", "cost")
    c = cost(res)
    page.figure(figures.cost_figure(c))
    if not c.empty:
        g = c.groupby("label", sort=False).mean(numeric_only=True).reset_index()
        page.table(
            g,
            [
                ("label", "configuration", None),
                ("wall_s", "wall s", lambda x: num(x, "{:.0f}")),
                ("train_s", "training s", lambda x: num(x, "{:.0f}")),
                ("probe_s", "probes s", lambda x: num(x, "{:.0f}")),
                ("flops_per_step", "GFLOP / step", lambda x: num(float(x) / 1e9, "{:.2f}")),
                ("gflops_per_s", "GFLOP/s", lambda x: num(x, "{:.0f}")),
            ],
        )
    if res.stale:
        page.para(f"{res.stale} result(s) of earlier versions of this study are not shown.")
    return page.write(out_path)


def render_reports(
    engine: Engine,
    study: str,
    out_dir: Path,
    axes: Iterable[str] | None = None,
    expected: Iterable[dict] | None = None,
) -> list[Path]:
    """Write one page per axis (`axes`, default every one) and the overview `index.html`;
    returns the paths, the overview last. `expected` lists the trials the experiments file
    asks for (see reports.data.load_results)."""
    res = load_results(engine, study, expected)
    analyses = analyse(res)
    wanted = list(analyses) if axes is None else [a for a in axes if a in analyses]
    pages = {a: page_name(a) for a in analyses}
    paths = [render_axis_page(res, a, analyses[a], out_dir / pages[a]) for a in wanted]
    paths.append(render_study_page(res, analyses, pages, out_dir / INDEX))
    return paths
