"""The references of a study: a random-init encoder per seed and the log-mel statistics, scored
like the trials so that every margin has its baseline.
"""

from __future__ import annotations

import time

import torch

from db import queries
from model.probe import logmel_stats
from model.vit import ViT
from orchestrator.grid import semantic_config, study_contents, trial_key
from orchestrator.probing import encoder_features, missing_tasks, record_scores, score
from orchestrator.spec import with_value
from orchestrator.study import Log, Study


def reference_jobs(seeds: tuple[int, ...], part: int, parts: int) -> list[tuple[int, str]]:
    """The references worker `part` of `parts` runs: every parts-th seed's random-init encoder
    from its own index, and the log-mel statistics (seed -1) on the first worker left with
    one seed fewer (the first, when the seeds split evenly). Across the parts, each reference
    once, and no worker more than one ahead of another."""
    jobs = [(seed, "random-init") for seed in seeds[part::parts]]
    if part == len(seeds) % parts:
        jobs.append((-1, "logmel-stats"))
    return jobs


def run_references(st: Study, log: Log, share: tuple[int, int] = (0, 1)) -> None:
    """The references of a study: a random-init encoder of the baseline's shape per seed, and
    log-mel statistics once (they have no seed: recorded with seed -1). `share` (i, n): the
    i-th of n workers runs its `reference_jobs`, so local workers split them evenly and none
    runs twice."""
    recipe = st.spec.baseline
    norm = st.bank.normalizer(recipe)
    have = queries.probed_tasks(st.engine, st.spec.study)
    contents = study_contents(st.spec)
    data = {n: contents[n] for n in (*recipe.data.corpus, *recipe.probe.tasks) if n in contents}
    for seed, name in reference_jobs(st.spec.seeds, *share):
        key = "ref-" + trial_key(recipe, seed, contents)[:12] + "-" + name
        missing = missing_tasks(recipe, have.get(key), contents)
        if not missing:
            continue
        t0 = time.perf_counter()
        part_recipe = with_value(recipe, "probe.tasks", missing)
        if name == "random-init":
            torch.manual_seed(seed)
            enc = ViT(recipe.encoder, recipe.frontend.n_mels, recipe.frontend.frames).eval()
            scores = score(encoder_features(enc, part_recipe, norm), part_recipe, st.bank)
        else:
            scores = score(lambda fs, _name: logmel_stats(fs, norm), part_recipe, st.bank)
        if key in have:  # scored before, on fewer tasks: add the new ones
            record_scores(st, have[key], scores, f"reference {name} seed={seed}", data, log)
            continue
        tags = {
            "abl.role": "reference",
            "abl.study": st.spec.study,
            "abl.key": key,
            "abl.seed": str(seed),
            "abl.setting": name,
        }
        run_id = st.tracker.start_run(f"reference={name} seed={seed}", st.parent_run, tags, {})
        st.tracker.log_metrics(run_id, [(f"{t}.{m}", v, 0) for (t, m), v in scores.metrics.items()])
        st.tracker.end_run(run_id, ok=True)
        row = queries.start_trial(
            st.engine,
            st.study_id,
            key,
            seed,
            "reference",
            name,
            {},
            semantic_config(recipe),
            st.worker,
            data=data,
        )
        queries.finish_trial(
            st.engine,
            row,
            scores.metrics,
            time.perf_counter() - t0,
            run_id,
            predictions=scores.predictions,
        )
        accs = ", ".join(f"{t} {v:.3f}" for (t, m), v in scores.metrics.items() if m == "accuracy")
        log(f"  reference {name} seed={seed}: accuracy {accs}")
