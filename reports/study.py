"""The study overview (index.html) and the assembly of every page, from the results database.

The overview holds what answers "what matters, by how much, how sure are we": the recipe
table, the smallest effect the design can detect, the ablation map, the interactions of a
factorial's crossed axes, the axes' importance, the cost per trial, and what is missing or too
thin to tell. Each axis has its own page.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine

from reports import figures
from reports.axis import missing_lines, render_axis_page, seed_warnings
from reports.data import (
    AVERAGE_TASK,
    Results,
    cost,
    interactions,
    load_results,
    progress,
    trial_label,
)
from reports.html import Page, esc, num
from reports.importance import axis_importance
from reports.inference import (
    MDE_NOTE,
    AxisAnalysis,
    Design,
    ablation_map,
    analyse,
    axis_clip_var,
    detectable_effects,
    family_note,
    pooled_noise,
    recipe,
    study_design,
)

INDEX = "index.html"


def page_name(axis: str) -> str:
    """File name of an axis' page: the axis name made safe for a file system."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in axis).strip(".") or "axis"
    return f"{safe}.html"


def _mde(x: object) -> str:
    return "none (too few degrees of freedom)" if x == float("inf") else num(x, "{:.2f}")


def render_study_page(
    res: Results,
    analyses: dict[str, AxisAnalysis],
    pages: dict[str, str],
    out_path: Path,
    design: Design | None = None,
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
        "The value with the best task-averaged accuracy, its gain over the baseline value in "
        "points with the 95% interval and Holm-corrected p-value of the model named (the axis' "
        "page explains each model)."
    )
    page.table(
        rec,
        [
            ("axis", "axis", None),
            ("best", "best value", None),
            ("gain", "gain (points)", lambda x: num(x, "{:+.2f}")),
            ("ci_low", "CI low", lambda x: num(x, "{:+.2f}")),
            ("ci_high", "CI high", lambda x: num(x, "{:+.2f}")),
            ("model", "model (df)", None),
            ("p_holm", "Holm p", lambda x: num(x, "{:.3g}")),
            ("n", "seeds", None),
            ("verdict", "significant?", None),
        ],
        row_class=lambda r: "yes" if r["verdict"] == "significant" else "",
    )

    page.heading("What this design can detect", "detectable")
    design = design if design is not None else study_design(res)
    noise = pooled_noise(design)
    column = noise.column if noise is not None else AVERAGE_TASK
    mde = detectable_effects(res, design, noise, axis_clip_var(analyses, column))
    if mde.empty:
        page.para(
            "No estimate yet: the seed-to-seed noise needs results of two or more cells at two "
            "or more seeds."
        )
    else:
        page.para(
            f"Per axis, {MDE_NOTE}, on the {column} in points: for one test, and within the "
            "axis' Holm family (its first step tests at alpha / m). The noise is the residual "
            "SD of one trial's score in the seed-blocked model fitted to this study's results "
            f"({noise.df:g} df); the design is every trial of the experiments file. A design "
            "finds what lies above these; a difference below them can be real and missed."
        )
        page.table(
            mde,
            [
                ("axis", "axis", None),
                ("values", "values tested", None),
                ("cells", "cells", None),
                ("seeds", "seeds", None),
                ("df", "test df", lambda x: num(x, "{:.0f}")),
                ("noise_sd", "noise SD (points)", num),
                ("clip_sd", "clip SD (points)", num),
                ("mde", "detectable, one test", lambda x: _mde(x)),
                ("family", "family m", None),
                ("mde_family", "detectable, in the family", lambda x: _mde(x)),
            ],
        )
    page.para(
        "Multiplicity: the p-values of each axis' page are one family under Holm's step-down "
        "correction (the map's marks too): "
        + "; ".join(f"{axis}, {family_note(a.comparisons)}" for axis, a in analyses.items())
        + "."
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
        ran = c.groupby("label", sort=False)[["precision", "attention"]].agg(
            lambda v: ", ".join(sorted(set(map(str, v))))
        )
        g = g.join(ran, on="label")
        page.table(
            g,
            [
                ("label", "configuration", None),
                ("wall_s", "wall s", lambda x: num(x, "{:.0f}")),
                ("train_s", "training s", lambda x: num(x, "{:.0f}")),
                ("probe_s", "probes s", lambda x: num(x, "{:.0f}")),
                ("flops_per_step", "GFLOP / step", lambda x: num(float(x) / 1e9, "{:.2f}")),
                ("gflops_per_s", "GFLOP/s", lambda x: num(x, "{:.0f}")),
                ("padding_share", "padded input %", lambda x: num(100 * float(x), "{:.1f}")),
                ("silence_share", "silent input %", lambda x: num(100 * float(x), "{:.1f}")),
                ("precision", "precision", None),
                ("attention", "attention", None),
            ],
        )
        mixed = sorted(set(c["precision"]) - {"-"})
        if len(mixed) > 1:
            page.para(
                f"The trials ran in more than one precision ({', '.join(mixed)}): train.precision "
                "auto chose by measurement on each worker's machine. Pin train.precision (fp32 or "
                "bf16) to compare cells on equal terms."
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
    design = study_design(res)
    analyses = analyse(res, design)
    wanted = list(analyses) if axes is None else [a for a in axes if a in analyses]
    pages = {a: page_name(a) for a in analyses}
    paths = [render_axis_page(res, a, analyses[a], out_dir / pages[a]) for a in wanted]
    paths.append(render_study_page(res, analyses, pages, out_dir / INDEX, design))
    return paths
