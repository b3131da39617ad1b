"""One axis' page: its values' scores per task and on the average (mean and 95% Student-t CI
across seeds), the differences to the baseline with the model behind each interval and
p-value and Holm's correction over the page, the reference encoders as lines, the training
curves and every trial."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports import figures
from reports.data import (
    AVERAGE_TASK,
    NO_RESULT,
    NOT_STARTED,
    Results,
    summarise,
    view_scores,
)
from reports.html import Page, num
from reports.inference import AxisAnalysis, family_note, too_few
from reports.stats import ALPHA, MIN_TEST_DF


def _pts(x: object) -> str:
    return num(x, "{:+.2f}")


def _p(x: object) -> str:
    return num(x, "{:.3g}")


def missing_lines(trials: pd.DataFrame, label: str = "setting") -> list[str]:
    """What a partial set of trials lacks, one line per trial without a result."""
    lines = []
    for r in trials.itertuples():
        if r.status == "done":
            continue
        what = {
            "running": "running",
            NOT_STARTED: "not started",
            "failed": f"failed: {r.error or 'no reason recorded'}",
            "pruned": f"pruned: {r.error or ''}",
        }.get(r.status, r.status)
        lines.append(f"{getattr(r, label)} seed {r.seed} ({str(r.key)[:10]}): {what}")
    return lines


def seed_warnings(comparisons: pd.DataFrame) -> list[str]:
    """Where the seeds are too few to tell, on the task average (or per task when there is
    no average)."""
    avg = comparisons[comparisons["task"] == AVERAGE_TASK]
    rows = avg if not avg.empty else comparisons
    out = []
    for r in rows.itertuples():
        if too_few(r.verdict):
            where = "the task average" if r.task == AVERAGE_TASK else r.task
            out.append(
                f"{r.setting}: {r.diff:+.2f} points on {where} from {r.n} seed(s): {r.verdict}"
            )
    return out


def render_axis_page(res: Results, axis: str, a: AxisAnalysis, out_path: Path) -> Path:
    view = a.view
    base = view.base_label
    page = Page(f"Ablation of {axis} — study {res.study}")
    t = view.trials
    counts = t["status"].value_counts()
    page.para(
        f"{len(t)} trials: "
        + " / ".join(
            f"{int(counts.get(s, 0))} {s}"
            for s in ("done", "running", NOT_STARTED, *NO_RESULT)
            if counts.get(s, 0) or s == "done"
        )
        + f". {view.note}.",
        "summary",
    )
    page.add('<nav><a href="index.html">study overview</a></nav>')
    if t.empty:
        page.warnings([f"no trial varies {axis} in this design"], "Nothing to show")
        return page.write(out_path)
    if base is None:
        page.warnings(
            [
                f"no finished or planned trial holds the baseline's value of {axis} "
                f"({res.base.get(axis)}): differences cannot be taken"
            ]
        )
    page.warnings(missing_lines(t), "Missing results (this page is partial)")
    page.warnings(seed_warnings(a.comparisons), "Seeds too few to tell")

    page.figure(
        figures.score_bars(
            a.summary, res.references, axis=axis, metric="accuracy", tasks=res.tasks, base=base
        )
    )
    page.figure(figures.difference_figure(a.comparisons, axis=axis, tasks=res.tasks, base=base))
    f1 = summarise(view_scores(res, view, "macro_f1"))
    page.figure(
        figures.score_bars(
            f1, res.references, axis=axis, metric="macro_f1", tasks=res.tasks, base=base
        )
    )
    page.figure(
        figures.curves_figure(
            res.curves[res.curves["key"].isin(set(t["key"]))], t, axis=axis, base=base
        )
    )

    page.heading("Differences to the baseline")
    page.para(
        f"Each value minus the baseline value ({base}) at the same seeds, in accuracy points, "
        "with its 95% interval and two-sided p-value from the model the row names. "
        "Seed-blocked model: score = cell + seed, fitted per task (and on the task average) "
        "to every cell of the study, the value's effect tested against the residual pooled "
        "over all cells (its degrees of freedom in the row). Paired t: the value's own "
        "differences at each seed (df = seeds - 1), used where the model has no more degrees "
        "of freedom, and shown beside it. + clips: the variance of the draw of test clips "
        "(a bootstrap over clip groups) added to the seed-level variance; 'seeds' is the share "
        "of the interval's variance that the seeds make, the rest the clips'. One seed gives "
        f"no interval; a test on fewer than {MIN_TEST_DF} degrees of freedom gives an interval "
        f"and no mark. The Holm family: {family_note(a.comparisons)}; significant when the "
        f"adjusted p < {ALPHA}."
    )
    page.table(
        a.comparisons,
        [
            ("setting", axis, None),
            ("task", "task", None),
            ("n", "seeds", lambda x: num(x, "{:.0f}")),
            ("diff", "difference", _pts),
            ("ci_low", "CI low", _pts),
            ("ci_high", "CI high", _pts),
            ("model", "model (df)", None),
            ("p", "p", _p),
            ("p_holm", "Holm p", _p),
            ("p_paired", "paired-t p", _p),
            ("seed_share", "seeds' share", lambda x: num(x, "{:.0%}")),
            ("verdict", "verdict", None),
        ],
        row_class=lambda r: "yes" if r["verdict"] == "significant" else "",
    )

    page.heading("Scores")
    page.table(
        a.summary,
        [
            ("setting", axis, None),
            ("task", "task", None),
            ("n_seeds", "seeds", lambda x: num(x, "{:.0f}")),
            ("mean", "accuracy %", num),
            ("ci_low", "CI low", num),
            ("ci_high", "CI high", num),
        ],
    )

    page.heading("Trials")
    tt = t.sort_values(["is_base", "setting", "seed"], ascending=[False, True, True]).copy()
    tt["key_short"] = tt["key"].str[:10]
    page.table(
        tt,
        [
            ("key_short", "key", None),
            ("seed", "seed", None),
            ("setting", axis, None),
            ("status", "status", None),
            ("wall_s", "wall s", lambda x: num(x, "{:.0f}")),
            ("error", "reason", None),
        ],
        row_class=lambda r: (
            "failed" if r["status"] in NO_RESULT else "pending" if r["status"] != "done" else ""
        ),
    )
    if res.stale:
        page.para(f"{res.stale} result(s) of earlier versions of this study are not shown.")
    return page.write(out_path)
