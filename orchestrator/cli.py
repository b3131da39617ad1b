"""The `abl` command line: thin Typer commands that parse, load and call one library function."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from model.errors import NAME_MAX, AblError, no_room
from orchestrator.outfile import TABLE_SUFFIXES

app = typer.Typer(
    help="abl: controlled ablation studies of JEPA audio encoders.\n\n"
    "Write experiments.yaml (a baseline recipe, the axes to vary, the seeds), then "
    "`abl run experiments.yaml`, `abl report --axis NAME` and `abl ui`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and list the real-audio probe tasks.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Experiments = Annotated[
    Path, typer.Argument(help="The experiments file (YAML).", show_default=True)
]
Output = Annotated[
    str | None,  # a string, so that an empty one is refused rather than read as "."
    typer.Option("--output", "-o", help="Output folder; overrides `output:` in the file."),
]
DataRoot = Annotated[
    str | None,  # a string, so that an empty one is refused rather than read as "."
    typer.Option("--data", help="Data cache folder (default: $ABL_DATA or ~/.cache/abl)."),
]


def _port_in_range(port: int) -> int:
    """A --port outside 1..65535: one line and exit 2, while the arguments are parsed."""
    if not 1 <= port <= 65535:
        typer.echo(f"abl: error: --port {port}: choose a port from 1 to 65535", err=True)
        raise typer.Exit(2)
    return port


def _host_given(host: str) -> str:
    """A --host that is empty or holds a space or control character: one line and exit 2 (an
    empty one made one server listen on every address and the other fail)."""
    if not host or not host.isprintable() or " " in host:
        typer.echo(
            f"abl: error: --host {host!r}: name an address to listen on, e.g. 127.0.0.1 (this "
            "machine only, the default) or 0.0.0.0 (every network it is on)",
            err=True,
        )
        raise typer.Exit(2)
    return host


HOST_OPTION = typer.Option(help="Address to listen on (loopback by default).", callback=_host_given)


def port_option(what: str) -> typer.models.OptionInfo:
    """The one --port option of every command that serves a page."""
    return typer.Option(help=f"Port of {what} (1-65535).", callback=_port_in_range)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user-fixable error as one line and exit 2; internal bugs keep their traceback."""
    try:
        yield
    except AblError as e:
        typer.echo(f"abl: error: {e}", err=True)
        raise typer.Exit(2) from None
    except Exception as e:
        if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:
            # A path the user gave (a folder, a file, a SQLite URL) holds a name too long.
            typer.echo(
                f"abl: error: {e.filename}: a name in this path is longer than the "
                f"filesystem allows ({NAME_MAX} bytes a name); choose a shorter one",
                err=True,
            )
            raise typer.Exit(2) from None
        reason = no_room(e)
        if reason is None:
            raise
        typer.echo(
            f"abl: error: {reason}; free some space (or choose another output folder with "
            "--output) and run again: finished trials are kept, the rest resume",
            err=True,
        )
        raise typer.Exit(2) from None


def _say(msg: str) -> None:
    typer.echo(msg)


def _reach_results(spec) -> None:  # noqa: ANN001
    """The results database the file names answers; else one line naming the file."""
    from orchestrator.prepare import check_storage

    check_storage(spec, ("results",))


def _require_results(spec, experiments: Path) -> None:  # noqa: ANN001
    """An AblError naming the file when the study never ran (nothing is created)."""
    from orchestrator.prepare import never_ran

    if never_ran(spec):
        raise AblError(
            f"{experiments}: study {spec.study} has no results yet; "
            f"run `abl run {experiments}` first"
        )


@app.command()
def run(
    experiments: Experiments = Path("experiments.yaml"),
    output: Output = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the trials; run nothing.")
    ] = False,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="With --dry-run: time a few training steps of each cell here and print the "
            "study's training time on this machine (seconds a cell; nothing is written).",
        ),
    ] = False,
    report: Annotated[bool, typer.Option(help="Render the reports when the study ends.")] = True,
    yes: Annotated[
        bool, typer.Option("--yes", help="Run a study of more than 256 trials without asking.")
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            help="Local worker processes, the cores split evenly between them. Default: one "
            "single-thread worker per core (one on a GPU).",
            show_default=False,
        ),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(
            help="local: worker processes on this machine (the default); slurm: a job array "
            "of workers on a Slurm cluster (docs/cluster.md). Overrides launcher.name.",
            show_default=False,
        ),
    ] = None,
    partition: Annotated[str | None, typer.Option(help="slurm: the partition.")] = None,
    gpus_per_trial: Annotated[int | None, typer.Option(help="slurm: GPUs per worker.")] = None,
    cpus_per_trial: Annotated[int | None, typer.Option(help="slurm: CPUs per worker.")] = None,
    mem: Annotated[str | None, typer.Option(help="slurm: memory per worker, e.g. 16G.")] = None,
    time_min: Annotated[
        int | None, typer.Option(help="slurm: each worker's time limit in minutes.")
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option(help="slurm: workers running at once (the array's %K).")
    ] = None,
    account: Annotated[str | None, typer.Option(help="slurm: the account to charge.")] = None,
    qos: Annotated[str | None, typer.Option(help="slurm: the quality of service.")] = None,
    sbatch: Annotated[
        list[str] | None,
        typer.Option(help="slurm: one more sbatch directive as key=value (repeatable)."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(help="slurm: wait until the workers are done, then render the reports."),
    ] = False,
) -> None:
    """Run every trial of a study that has not finished yet, then render its reports."""
    from orchestrator.grid import expand
    from orchestrator.spec import check_size, load_spec

    with user_errors():
        spec = load_spec(experiments, output)
        # Each Slurm flag by its name on the command line and its launcher field.
        slurm_only = {
            ("--partition", "partition"): partition,
            ("--gpus-per-trial", "gpus_per_trial"): gpus_per_trial,
            ("--cpus-per-trial", "cpus_per_trial"): cpus_per_trial,
            ("--mem", "mem"): mem,
            ("--time-min", "time_min"): time_min,
            ("--max-parallel", "max_parallel"): max_parallel,
            ("--account", "account"): account,
            ("--qos", "qos"): qos,
            ("--sbatch", "extra"): tuple(sbatch or ()),
        }
        fields = {field: value for (_, field), value in slurm_only.items()}
        spec = _launcher_flags(spec, name=launcher, **fields)
        slurm_only[("--wait", "")] = wait or None
        given = [flag for (flag, _), value in slurm_only.items() if value not in (None, ())]
        if given and spec.launcher.name != "slurm":
            one = len(given) == 1
            raise AblError(
                f"{' '.join(given)}: {'a slurm flag' if one else 'slurm flags'}, but study "
                f"{spec.study} runs with the {spec.launcher.name} launcher; add --launcher "
                f"slurm (or launcher.name: slurm in {experiments}), or drop "
                f"{'it' if one else 'them'}"
            )
        if estimate and not dry_run:
            raise AblError("--estimate: it times cells for a dry run; add --dry-run")
        trials = expand(spec)
        if not dry_run:
            check_size(spec, len(trials), yes)
        if spec.launcher.name == "local":
            if jobs is not None and jobs < 1:
                raise AblError(f"--jobs {jobs}: use 1 or more worker processes")
            _check_memory(spec, trials, jobs)
        if dry_run:
            from orchestrator.prepare import check_output, check_roots, check_storage

            # What fails the real run before it starts fails the dry run too: a database
            # driver that is not installed, an output folder that cannot be one, a data set
            # that is not there (no server is reached, nothing is written).
            check_storage(spec, connect=False)
            check_output(spec)
            check_roots(spec)
            for t in trials:
                mark = "*" if t.provisional else " "
                _say(f"{t.key}{mark} seed={t.seed}  {t.axis}={t.setting}")
            _say(f"{len(trials)} trials in study {spec.study}")
            if estimate:
                for line in _estimate(spec, trials, jobs):
                    _say(line)
            unprepared = sorted(
                {n for t in trials for n in t.recipe.data.corpus if n not in t.contents}
            )
            if unprepared:
                _say(
                    f"* provisional key: pretraining data {', '.join(unprepared)} is not "
                    "prepared yet, and keys name data by its content; `abl run` prepares it first"
                )
            # What the planned design can detect, once earlier results give the noise.
            url = spec.results_url
            if not url.startswith("sqlite") or Path(url.removeprefix("sqlite:///")).exists():
                from sqlalchemy.exc import SQLAlchemyError

                from db.engine import make_engine
                from orchestrator.grid import baseline_settings
                from reports.plan import detectable_lines, planned_results

                planned = planned_results(
                    spec.study,
                    spec.design,
                    [a.name for a in spec.axes],
                    [a.name for a in spec.crossed_axes] if spec.design == "factorial" else [],
                    baseline_settings(spec),
                    list(spec.baseline.probe.tasks),
                    [
                        dict(
                            key=t.key,
                            seed=t.seed,
                            axis=t.axis,
                            setting=t.setting,
                            settings=t.settings,
                        )
                        for t in trials
                    ],
                )
                try:
                    lines = detectable_lines(make_engine(url), planned)
                except SQLAlchemyError as e:
                    lines = [
                        f"minimum detectable effect: results not readable ({e.__class__.__name__})"
                    ]
                for line in lines:
                    _say(line)
            if spec.launcher.name == "slurm":
                from orchestrator.slurm import batch_script

                lc = spec.launcher
                n = min(len(trials), lc.max_parallel or len(trials))
                _say(f"would submit {n} worker(s) (fewer if some are queued), as:\n")
                _say(batch_script(spec, n))
            return
        if spec.launcher.name == "slurm":
            _run_slurm(spec, experiments, wait, report)
            return
        from orchestrator.signals import stop_handled, stop_on_sigterm
        from orchestrator.workers import default_jobs, run_study

        if jobs is None:
            jobs = default_jobs()
        from orchestrator.prepare import prepare_study

        # Storage, output folder and data checked (and missing tasks prepared) before the
        # study writes anything.
        prepare_study(spec, _say)
        stop_on_sigterm()
        try:
            summary = run_study(spec, _say, jobs)
        except (KeyboardInterrupt, SystemExit):
            stop_handled()
            _say("stopped: the running trial was released; `abl run` again resumes it")
            raise typer.Exit(130) from None
        _say(
            f"study {spec.study}: ran {summary.ran}, failed {summary.failed}, "
            f"already finished {summary.skipped}, in {summary.seconds:.0f}s"
        )
        if report:
            pages = _render(spec)
            _attach_reports(spec, pages)
            _say(f"report:  {pages[-1]}")
        from db.engine import mask_url

        _say(f"results: {mask_url(spec.results_url)}")
        _say(f"mlflow:  {mask_url(spec.mlflow_uri)}")
        # The same study as this run: its --output too, where one was given.
        target = f"{experiments}" + (f" -o {output}" if output is not None else "")
        _say(f"browse:  abl ui {target}   (MLflow UI on http://127.0.0.1:5000)")
        _say(f"         abl dashboard {target}   (Optuna dashboard on http://127.0.0.1:8080)")


def status_line(study: str, total: int, counts: dict[str, int], mean: float | None) -> str:
    """`abl status`'s first line: each of the `total` trials counted once (a failed one stays
    failed until a run retries it), and the time the pending ones need at `mean` s a trial."""
    pruned = counts.get("pruned", 0)
    pending = max(0, total - counts["done"] - counts["running"] - counts["failed"] - pruned)
    eta = f", ETA {pending * mean / 60:.0f} min at {mean:.0f}s a trial" if mean else ""
    return (
        f"study {study}: {total} trials: {counts['done']} done, {counts['running']} "
        f"running, {counts['failed']} failed, {pending} pending{eta}"
        + (f" ({pruned} pruned)" if pruned else "")
    )


@app.command()
def worker(
    experiments: Experiments = Path("experiments.yaml"),
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL shared by the workers (overrides the file)."),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (overrides the file).")] = None,
    output: Output = None,
) -> None:
    """Join a study as one more worker (on this or another machine): claim and run its waiting
    trials until none is left. Point `storage:` of the experiments file (or --storage) at a
    PostgreSQL database every machine reaches; `abl run` there enqueues the trials."""
    import dataclasses

    from orchestrator.grid import expand
    from orchestrator.probing import probe_finished
    from orchestrator.signals import stop_handled, stop_on_sigterm
    from orchestrator.spec import load_spec
    from orchestrator.study import open_study, reap_lost
    from orchestrator.workers import work

    with user_errors():
        spec = load_spec(experiments, output)
        if storage is not None:
            from orchestrator.spec import check_storage_urls

            if not storage.strip():
                raise AblError(
                    "--storage is empty; give the Optuna storage URL the workers share, or "
                    "drop the flag to use the experiments file's"
                )
            spec = dataclasses.replace(
                spec, storage=dataclasses.replace(spec.storage, optuna=storage)
            )
            check_storage_urls(spec.storage, f"{experiments} (--storage)")
        if study:
            from orchestrator.spec import STUDY_NAME

            if not STUDY_NAME.fullmatch(study):
                raise AblError(
                    f"--study {study!r}: a study name is letters, digits, '-', '_' or '.'"
                )
            spec = dataclasses.replace(spec, study=study)
        from orchestrator.prepare import prepare_study

        prepare_study(spec, _say)
        st = open_study(spec)
        trials = expand(spec)
        reap_lost(st)
        st.ledger.sync(trials, spec.max_attempts)
        probe_finished(st, trials, _say)  # tasks added since they finished: no retraining
        stop_on_sigterm()
        try:
            ran, failed = work(st, trials, _say)
        except (KeyboardInterrupt, SystemExit):
            stop_handled()
            _say("stopped: the running trial was released; another worker resumes it")
            raise typer.Exit(130) from None
        _say(f"worker done: ran {ran}, failed {failed}")


def _local_workers(jobs: int | None, trials: list) -> int:
    """Local workers a run starts: --jobs (one per core by default), at most one a trial."""
    from orchestrator.workers import default_jobs

    return min(jobs if jobs and jobs > 0 else default_jobs(), len(trials))


def _cells(trials: list) -> dict:
    """Each recipe of a study once (its seeds share it), by its first trial, in run order."""
    first: dict = {}
    for t in trials:
        first.setdefault(t.recipe, t)
    return first


def _check_memory(spec, trials, jobs: int | None) -> None:  # noqa: ANN001
    """Refuse a study whose cells cannot train on this machine, before anything is written:
    the model's weights, gradients and optimiser state alone (`model.memory`) times the local
    workers training at once."""
    from model.memory import check_fits
    from model.train import pick_device

    workers = _local_workers(jobs, trials)
    device = pick_device()
    for recipe, t in _cells(trials).items():
        cell = "the baseline" if t.axis == "baseline" else f"cell {t.axis}={t.setting}"
        check_fits(recipe, f"{spec.source}: {cell}", device, workers, "pass fewer --jobs")


def _estimate(spec, trials, jobs: int | None) -> list[str]:  # noqa: ANN001
    """The study's training time on this machine, its cells timed (orchestrator.estimate):
    with its local workers, or with a Slurm worker's CPUs and the array's parallel workers."""
    from model.train import pick_device
    from orchestrator.estimate import estimate_lines
    from orchestrator.workers import threads_per_worker
    from reports.data import trial_label

    lc = spec.launcher
    if lc.name == "slurm":
        workers = min(lc.max_parallel or len(trials), len(trials))
        threads = lc.cpus_per_trial or 1
    else:
        workers = _local_workers(jobs, trials)
        threads = threads_per_worker(workers)
    first = _cells(trials)
    position = {recipe: i for i, recipe in enumerate(first)}
    cells = [(trial_label(t.axis, t.setting), recipe) for recipe, t in first.items()]
    per_trial = [position[t.recipe] for t in trials]
    device = pick_device()
    lines = estimate_lines(cells, per_trial, device, workers, threads)
    if lc.name == "slurm":
        lines.append("  (timed here with a worker's CPUs; the cluster's nodes may differ)")
    return lines


def _launcher_flags(spec, **flags):  # noqa: ANN001, ANN003, ANN202
    """The spec with `abl run`'s launcher flags over the file's `launcher:` section."""
    import dataclasses

    from orchestrator.launcher import with_overrides

    launcher = with_overrides(spec.launcher, spec.source, **flags)
    return dataclasses.replace(spec, launcher=launcher)


def _run_slurm(spec, experiments: Path, wait: bool, report: bool) -> None:  # noqa: ANN001
    """Submit the workers the study lacks; with `wait`, follow them and render the reports."""
    from orchestrator import slurm

    slurm.submit(spec, _say)
    if not wait:
        _say(f"follow:  abl status {experiments}   stop: abl stop {experiments}")
        return
    slurm.wait(spec, _say)
    from orchestrator.grid import expand
    from orchestrator.ledger import Ledger

    states = Ledger(spec.optuna_url, spec.study).states()
    done = sum(
        1 for t in expand(spec) if {"COMPLETE", "PRUNED"} & {s.name for s in states.get(t.key, [])}
    )
    _say(f"study {spec.study}: {done} of {len(expand(spec))} trials finished")
    if report:
        pages = _render(spec)
        _attach_reports(spec, pages)
        _say(f"report:  {pages[-1]}")


def _attach_reports(spec, pages: list[Path]) -> None:  # noqa: ANN001
    """The study's report pages as artifacts of its MLflow parent run."""
    from orchestrator.tracking import Tracker

    tracker = Tracker(spec.mlflow_uri, spec.study, spec.output / "mlartifacts")
    parent = tracker.study_run(spec.study)
    for page in pages:
        tracker.log_artifact(parent, page, "reports")


def _render(spec, axes: list[str] | None = None) -> list[Path]:  # noqa: ANN001
    """The axes' pages (default: every one) and the study overview, the overview last."""
    from db.engine import init_db, make_engine
    from orchestrator.grid import expand
    from reports.study import render_reports

    init_db(make_engine(spec.results_url))  # an older schema upgraded, a foreign one refused
    expected = [
        {"key": t.key, "seed": t.seed, "axis": t.axis, "setting": t.setting, "settings": t.settings}
        for t in expand(spec)
    ]
    return render_reports(
        make_engine(spec.results_url),
        spec.study,
        spec.output / "reports" / spec.study,
        axes=axes,
        expected=expected,
    )


@app.command()
def report(
    experiments: Experiments = Path("experiments.yaml"),
    axis: Annotated[
        str | None, typer.Option(help="One axis (name or dotted path); default: every axis.")
    ] = None,
    output: Output = None,
) -> None:
    """Render the ablation report (self-contained HTML) from the results table."""
    from orchestrator.spec import load_spec

    with user_errors():
        spec = load_spec(experiments, output)
        _require_results(spec, experiments)
        _reach_results(spec)
        if axis is None:
            axes = None  # every axis
        elif spec.design == "list":
            axes = ["config"]  # a list design's entries share one page
        else:
            axes = [spec.axis(axis).name]
        pages = _render(spec, axes)
        _attach_reports(spec, pages)
        for page in pages:
            _say(str(page))


@app.command()
def status(experiments: Experiments = Path("experiments.yaml"), output: Output = None) -> None:
    """Done / running / failed / pending trials of the study, with an ETA."""
    from db import queries
    from db.engine import init_db, make_engine
    from orchestrator.grid import expand
    from orchestrator.spec import load_spec

    with user_errors():
        spec = load_spec(experiments, output)
        total = len(expand(spec))
        from orchestrator.prepare import never_ran

        if never_ran(spec):  # every trial pending; nothing is created
            _say(
                f"study {spec.study}: {total} trials: 0 done, 0 running, 0 failed, {total} "
                f"pending (not started: `abl run {experiments}`)"
            )
            return
        _reach_results(spec)
        engine = make_engine(spec.results_url)
        init_db(engine)
        counts = queries.status_counts(engine, spec.study)
        mean = queries.mean_trial_seconds(engine, spec.study)
        _say(status_line(spec.study, total, counts, mean))
        from model.data.datasets import resolve_data_root
        from orchestrator.bank import DataBank
        from orchestrator.study import data_summary, skipped_line

        bank = DataBank(resolve_data_root(spec.baseline.data.cache), spec.baseline.data.tasks)
        data = data_summary(spec, bank)
        clips = sum(d["clips"] for d in data.values())
        _say(f"data: {clips} clips in {len(data)} tasks; " + (skipped_line(data) or "none skipped"))
        from orchestrator import slurm

        for line in slurm.status_lines(spec, engine):  # the study's Slurm workers, if any
            _say(line)


@app.command()
def stop(experiments: Experiments = Path("experiments.yaml"), output: Output = None) -> None:
    """Cancel the study's Slurm workers: each releases its running trial (not counted as an
    attempt; it resumes from its checkpoint on the next `abl run`)."""
    from orchestrator import slurm
    from orchestrator.spec import load_spec

    with user_errors():
        spec = load_spec(experiments, output)
        if not slurm.submitted(spec):
            raise AblError(f"{experiments}: study {spec.study} has submitted no Slurm workers")
        cancelled = slurm.stop(spec)
    if not cancelled:
        _say(f"study {spec.study}: no worker queued or running")
        return
    _say(
        f"cancelled {len(cancelled)} worker(s) of study {spec.study} ({', '.join(cancelled)}); "
        f"their trials are released: `abl run {experiments}` resumes them"
    )


@app.command()
def export(
    experiments: Experiments = Path("experiments.yaml"),
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv or parquet; default: the suffix of --out, else csv."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="File to write (.csv or .parquet; a missing folder is created); default: "
            "OUTPUT/STUDY-results.FORMAT.",
        ),
    ] = None,
    output: Output = None,
) -> None:
    """Write the results, one row per trial and metric: study, key, seed, axis, setting,
    status, task, metric, value (stable column names)."""
    from db import queries
    from db.engine import init_db, make_engine
    from orchestrator.outfile import write_frame
    from orchestrator.spec import load_spec

    with user_errors():
        fmt = _export_format(fmt, out)
        spec = load_spec(experiments, output)
        _require_results(spec, experiments)
        _reach_results(spec)
        engine = make_engine(spec.results_url)
        init_db(engine)
        df = queries.export_frame(engine, spec.study)
        target = out or spec.output / f"{spec.study}-results.{fmt}"
        write_frame(df, target, fmt)
        _say(f"{len(df)} rows -> {target}")


EXPORT_FORMATS = tuple(s.removeprefix(".") for s in TABLE_SUFFIXES)  # csv, parquet


def _export_format(fmt: str | None, out: Path | None) -> str:
    """The format `abl export` writes: --format, else the suffix of --out, else csv. A folder,
    an unknown suffix or one that contradicts --format is an AblError naming the flag."""
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise AblError(f"--format {fmt!r}: use csv or parquet")
    if out is None:
        return fmt or "csv"
    if out.is_dir():
        raise AblError(f"--out {out} is a folder; name a file, e.g. --out {out / 'results.csv'}")
    suffix = out.suffix.lower().removeprefix(".")
    if suffix in EXPORT_FORMATS:
        if fmt is not None and fmt != suffix:
            raise AblError(
                f"--out {out} names a .{suffix} file but --format is {fmt}; name a .{fmt} file "
                "or drop --format"
            )
        return suffix
    if suffix or fmt is None:
        raise AblError(f"--out {out}: name a .csv or .parquet file")
    return fmt  # no suffix (e.g. /dev/stdout): --format says what to write


@app.command()
def ui(
    experiments: Experiments = Path("experiments.yaml"),
    output: Output = None,
    port: Annotated[int, port_option("the MLflow UI")] = 5000,
    host: Annotated[str, HOST_OPTION] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the study's tracking backend (127.0.0.1 unless --host)."""
    from orchestrator.dashboard import check_free
    from orchestrator.spec import load_spec
    from orchestrator.tracking import ui_command

    with user_errors():
        spec = load_spec(experiments, output)
        landing = _mlflow_landing(spec)
        check_free(host, port)
    cmd = ui_command(spec.mlflow_uri, port, host)
    cmd[0] = str(Path(sys.executable).with_name("mlflow"))
    _say(f"MLflow UI: http://{host}:{port}/{landing}  (Ctrl-C to stop)")
    code, asked = _serve(cmd)
    if asked is not None:  # stopped as asked: Ctrl-C (exit 0), SIGTERM or SIGHUP (128 + it)
        if asked != signal.SIGINT:
            raise typer.Exit(128 + asked)
        return
    # A server stops by itself only when it failed (`mlflow ui` exits 0 even then).
    how = f" (exit {code})" if code else ""
    typer.echo(f"abl: error: the MLflow UI stopped{how}; its messages above say why", err=True)
    raise typer.Exit(code or 1)


SERVER_GRACE_S = 15.0  # a server told to stop gets this long before it is killed


def _serve(cmd: list[str]) -> tuple[int, int | None]:
    """Run a server command until it exits or this process is told to stop (Ctrl-C, SIGTERM,
    SIGHUP). The server runs in a process group of its own, and a stop is passed on to that
    whole group (`mlflow ui` starts uvicorn workers and job runners of its own, which would
    outlive a signal sent to it alone); what has not exited SERVER_GRACE_S later is killed.
    Returns (the server's exit code, the stop signal, or None when the server exited by
    itself)."""
    server = subprocess.Popen(cmd, env=dict(os.environ), start_new_session=True)
    asked: list[int] = []

    def stop(signum: int, _frame) -> None:  # noqa: ANN001
        asked.append(signum)
        _signal_group(server.pid, signal.SIGTERM)

    # SIGINT too, by a handler of its own: a process started with SIGINT ignored (as shells
    # start background jobs) keeps ignoring it, and no KeyboardInterrupt would come.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, stop) for s in stops}
    try:
        code = server.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _signal_group(server.pid, signal.SIGTERM)  # what the server left behind, if anything
        deadline = time.monotonic() + SERVER_GRACE_S
        while _group_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(server.pid, signal.SIGKILL)
    return code, (asked[0] if asked else None)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group has exited


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies that wait for a parent to reap
    them do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _mlflow_landing(spec) -> str:  # noqa: ANN001
    """The link's path to the study's runs in the MLflow UI (its experiment marked as model
    training, the trials' columns kept on it). A study with no MLflow data yet is an AblError
    (a SQLite store that does not exist is not created)."""
    from sqlalchemy.engine import make_url

    from db.engine import mask_url
    from orchestrator.grid import expand
    from orchestrator.prepare import check_storage
    from orchestrator.tracking import ui_landing

    uri = spec.mlflow_uri
    run_first = f"run `abl run {spec.source}` first"
    if uri.startswith("sqlite"):
        path = Path(make_url(uri).database or "")
        if not path.is_file():  # never run: nothing to show, and nothing is created
            raise AblError(
                f"{spec.source}: study {spec.study} has no MLflow runs yet ({path} does not "
                f"exist); {run_first}"
            )
    else:
        check_storage(spec, ("mlflow",))  # a server that does not answer: one line, at once
    tasks = dict.fromkeys(task for t in expand(spec) for task in t.recipe.probe.tasks)
    landing = ui_landing(uri, spec.study, list(tasks))
    if not landing:
        raise AblError(
            f"{spec.source}: study {spec.study} is not in the MLflow store {mask_url(uri)}; "
            f"{run_first}, or check `study:` and `storage.mlflow`"
        )
    return landing


@app.command()
def dashboard(
    experiments: Experiments = Path("experiments.yaml"),
    output: Output = None,
    port: Annotated[int, port_option("the Optuna dashboard")] = 8080,
    host: Annotated[str, HOST_OPTION] = "127.0.0.1",
    writable: Annotated[
        bool,
        typer.Option(
            "--writable",
            help="Let the page change the ledger (rename or delete the study, mark trials); "
            "read-only by default.",
        ),
    ] = False,
) -> None:
    """Serve optuna-dashboard on the study's Optuna storage, the ledger of its trials
    (127.0.0.1 unless --host; read-only unless --writable)."""
    from db.engine import mask_url
    from orchestrator.dashboard import listen, open_ledger, url
    from orchestrator.spec import load_spec

    with user_errors():
        spec = load_spec(experiments, output)
        storage, study_id = open_ledger(spec)
        server = listen(storage, host, port, writable)
    _say(
        f"Optuna dashboard: {url(host, server.server_address[1], study_id)}  "
        f"(study {spec.study} in {mask_url(spec.optuna_url)}; Ctrl-C to stop)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


ExperimentsOpt = Annotated[
    Path | None,
    typer.Option(
        "--experiments",
        "-e",
        help="Experiments file whose data.tasks (your own data sets) and data.cache to use; "
        "default: ./experiments.yaml when present.",
    ),
]


def _data_context(data: str | None, experiments: Path | None):  # noqa: ANN202
    """(data root, user task definitions, corpus tasks) from the options and the experiments
    file."""
    from model.data.datasets import resolve_data_root
    from orchestrator.spec import load_spec

    if data is not None and not data.strip():
        raise AblError("--data is empty; name the data cache folder, or drop the flag")
    if experiments is None and Path("experiments.yaml").is_file():
        experiments = Path("experiments.yaml")
    custom, cache, corpus = (), None, ()
    if experiments is not None:
        spec = load_spec(experiments)
        custom, cache = spec.baseline.data.tasks, spec.baseline.data.cache
        corpus = spec.baseline.data.corpus
    root = resolve_data_root(data or cache)
    if root.exists() and not root.is_dir():
        given = f"--data {data}" if data else f"{experiments}: data.cache {cache}" if cache else ""
        raise AblError(
            f"{given or f'the data cache {root}'}: it is a file, not a folder; point it at a "
            "folder (a missing one is made)"
        )
    return root, custom, corpus


@data_app.command("prepare")
def data_prepare(
    task: Annotated[list[str] | None, typer.Option(help="Prepare only this task.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when prepared.")] = False,
    data: DataRoot = None,
    experiments: ExperimentsOpt = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            help="Tasks prepared at once, each in its own process. Default: one per core.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Decode, split and cache the real-audio tasks (idempotent; seconds when done). A task
    whose files changed since it was prepared is prepared again."""
    from model.data.datasets import TASKS, load_task, write_corpus_manifest

    with user_errors():
        if jobs is not None and jobs < 1:
            raise AblError(f"--jobs {jobs}: prepare with 1 or more processes")
        root, custom, corpus = _data_context(data, experiments)
        names = list(dict.fromkeys(task or [*sorted(TASKS), *(t.name for t in custom)]))
        try:
            _prepare_tasks(names, root, custom, force, jobs or os.cpu_count() or 1)
        except KeyboardInterrupt:
            _say(
                "stopped: the tasks prepared so far are kept, none is half-written; "
                "`abl data prepare` again prepares the rest"
            )
            raise typer.Exit(130) from None
        if corpus and all((root / "tasks" / n / "task.json").is_file() for n in corpus):
            tasks = [load_task(n, root, custom) for n in corpus]
            hours = write_corpus_manifest(tasks, root / "corpus.csv")
            _say(
                f"pretraining corpus: {hours:.2f} h from {', '.join(corpus)} "
                f"(train splits only), listed in {root / 'corpus.csv'}"
            )


_PREPARE_LOG = None  # in a preparing worker process: the queue its progress lines go to


def _prepare_one(name: str, root: Path, custom: tuple, force: bool) -> None:
    """One task of `abl data prepare`, in this process or in a pool's worker (whose lines go
    to the parent through `_PREPARE_LOG`, so they reach wherever its own output goes)."""
    from model.data.datasets import CHANGED, changed_since_prepared, prepare_task

    say = _say if _PREPARE_LOG is None else _PREPARE_LOG.put
    again = not force and changed_since_prepared(name, root, custom)
    if again:
        say(f"{name}: {CHANGED}; preparing it again")
    t = prepare_task(name, root, force=force, log=say, custom=custom, again=again)
    say(f"{name}: {len(t.clips)} clips ready in {t.root}")


def _log_to(q) -> None:  # noqa: ANN001
    global _PREPARE_LOG
    _PREPARE_LOG = q


def _prepare_tasks(names: list[str], root: Path, custom: tuple, force: bool, jobs: int) -> None:
    """Prepare `names`, up to `jobs` at a time in worker processes (decoding and resampling
    run on one core each). The first error cancels the tasks still waiting; those running (and
    the one the pool queued ahead) finish or clean up after themselves, then it is raised.
    Each task takes its own lock, so this is as safe beside another `abl` as one at a time."""
    if jobs == 1 or len(names) == 1:
        for name in names:
            _prepare_one(name, root, custom, force)
        return
    import multiprocessing
    import queue
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork")  # quick to start; the parent runs no threads
    lines = ctx.Queue()

    def relay() -> None:
        while True:
            try:
                _say(lines.get(timeout=0.2))
            except queue.Empty:
                return

    with ProcessPoolExecutor(
        min(jobs, len(names)), mp_context=ctx, initializer=_log_to, initargs=(lines,)
    ) as pool:
        futures = [pool.submit(_prepare_one, n, root, custom, force) for n in names]
        try:
            while not all(f.done() for f in futures):
                relay()
                if any(f.done() and not f.cancelled() and f.exception() for f in futures):
                    break
        finally:  # an error or Ctrl-C: cancel what the pool has not handed to a worker yet
            for f in futures:  # (it queues one call ahead; that one and the running ones finish)
                f.cancel()
    relay()  # the workers have exited, so every line they put is in the queue
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()


@data_app.command("list")
def data_list(data: DataRoot = None, experiments: ExperimentsOpt = None) -> None:
    """Each task with its classes, clip counts per split and total duration."""
    from model.data.datasets import TASKS, load_task

    with user_errors():
        root, custom, _ = _data_context(data, experiments)
        if data is not None and not root.exists():  # a file: refused by _data_context
            raise AblError(
                f"--data {data}: does not exist; point it at the data cache folder (the one "
                "holding tasks/ that `abl data prepare` wrote), or leave it out for the default"
            )
        for name in [*sorted(TASKS), *(t.name for t in custom)]:
            try:
                t = load_task(name, root, custom)
            except AblError:
                _say(f"{name}: not prepared (run `abl data prepare --task {name}`)")
                continue
            counts = {s: len(t.split(s)) for s in ("train", "val", "test")}
            hours = sum(c.duration for c in t.clips) / 3600
            _say(
                f"{name}: {len(t.classes)} classes, train {counts['train']} / val "
                f"{counts['val']} / test {counts['test']} clips, {hours:.2f} h; "
                f"{t.meta.get('description', '')}"
            )
            _say(f"  classes: {', '.join(t.classes)}")


@app.command()
def embed(
    checkpoint: Annotated[
        Path, typer.Argument(help="A trial checkpoint (abl-out/checkpoints/KEY.pt) or export.")
    ],
    audio_dir: Annotated[Path, typer.Argument(help="Folder of audio files (searched deeply).")],
    out: Annotated[Path, typer.Option("--out", help="Output file: .parquet or .npz.")],
    encoder: Annotated[
        str, typer.Option(help="context (online) or target (EMA) encoder.")
    ] = "context",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="List undecodable files and go on.")
    ] = False,
) -> None:
    """Write one embedding per audio file (EVAR pooling: frequency tokens concatenated, mean
    over time and chunks), with the file names."""
    from orchestrator.embedding import embed_folder

    with user_errors():
        s = embed_folder(checkpoint, audio_dir, out, encoder, skip_bad, log=_say)
    extra = f", {len(s.skipped)} skipped" if s.skipped else ""
    _say(f"{s.files} files{extra} -> {s.out} ({s.dim}-d embeddings)")


@app.command()
def probe(
    target: Annotated[
        Path,
        typer.Argument(
            help="An experiments file (every finished trial of its study), or a trial "
            "checkpoint (abl-out/checkpoints/KEY.pt) or export (one encoder)."
        ),
    ] = Path("experiments.yaml"),
    task: Annotated[
        list[str], typer.Option("--task", help="A task to score on (repeat for more).")
    ] = [],  # noqa: B006
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the table (.csv or .parquet).")
    ] = None,
    encoder: Annotated[
        str, typer.Option(help="For a checkpoint: context (online) or target (EMA) encoder.")
    ] = "context",
    experiments: ExperimentsOpt = None,
    output: Output = None,
) -> None:
    """Score frozen encoders on tasks, without training: built-in tasks or your own. For a
    study, the scores are added to its results (table, MLflow) and printed; a trial that
    already has a task's score is not probed again."""
    import pandas as pd

    from orchestrator.evaluate import probe_checkpoint, probe_study
    from orchestrator.outfile import check_out, write_frame
    from orchestrator.spec import load_spec

    with user_errors():
        if not task:
            raise AblError("abl probe: name at least one task with --task, e.g. --task env-sfx")
        if out is not None:
            check_out(out, TABLE_SUFFIXES)  # before the probes run, not after
        tasks = list(dict.fromkeys(task))
        if target.suffix in (".yaml", ".yml"):
            df = probe_study(load_spec(target, output), tasks, _say)
        elif target.suffix == ".pt":
            data, declared, _ = _data_context(None, experiments)
            df = probe_checkpoint(target, tasks, encoder, data, declared, _say)
        else:
            raise AblError(
                f"{target}: pass an experiments file (.yaml) or a checkpoint or export (.pt)"
            )
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            _say(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if out is not None:
            write_frame(df, out, out.suffix.lower().removeprefix("."))
            _say(f"{len(df)} rows -> {out}")


@app.command("export-best")
def export_best(
    experiments: Experiments = Path("experiments.yaml"),
    out: Annotated[Path | None, typer.Option("--out", help="File to write (.pt).")] = None,
    output: Output = None,
) -> None:
    """Save the study's best encoder (by mean validation accuracy over its probe tasks) with
    its config, for `abl embed` and the HEAR-style module `model.hear`."""
    from orchestrator.embedding import export_best as run_export
    from orchestrator.spec import load_spec

    with user_errors():
        spec = load_spec(experiments, output)
        _require_results(spec, experiments)
        _reach_results(spec)
        b = run_export(spec, out)
    tests = ", ".join(f"{t} {v:.3f}" for t, v in b.test_accuracy.items())
    _say(
        f"best: {b.axis}={b.setting} seed={b.seed} (key {b.key[:10]}), mean validation "
        f"accuracy {b.val_accuracy:.3f}; test accuracy {tests} -> {b.out}"
    )
