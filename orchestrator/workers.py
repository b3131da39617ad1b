"""Local workers: sync the grid into the ledger, then claim and run trials until none is left, in
this process or in several spawned ones.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits

from orchestrator import pretraining
from orchestrator.grid import TrialSpec, expand
from orchestrator.pretraining import run_trial
from orchestrator.probing import probe_finished
from orchestrator.references import run_references
from orchestrator.signals import stop_handled, stop_on_sigterm
from orchestrator.spec import StudySpec
from orchestrator.study import Log, Study, check_no_leak, open_study, reap_lost


@dataclass(frozen=True)
class RunSummary:
    planned: int
    ran: int
    failed: int
    skipped: int  # finished before this run
    seconds: float


def time_left(per_trial_s: float, waiting: int, workers: int) -> str:
    """The time a worker has left: the trial it starts and its part of those waiting, which
    `workers` workers share."""
    share = 1 + waiting / max(1, workers)
    return f"about {per_trial_s * share / 60:.0f} min left for this worker's share"


def work(
    st: Study, trials: list[TrialSpec], log: Log, name: str = "", workers: int = 1
) -> tuple[int, int]:
    """Claim and run trials of `trials` until none is waiting; returns (finished, failed).

    Each claimed trial beats a heartbeat while it runs; before each claim, trials of workers
    that stopped beating are failed, so the ledger hands them out again. `workers`: how many
    share the queue, for the time left of this worker's share (its trial and 1/workers of
    those waiting)."""
    by_key = {t.key: t for t in trials}
    ran = failed = 0
    t_start = time.perf_counter()
    while True:
        lost = [by_key[k] for k in reap_lost(st) if k in by_key]
        for t in lost:
            log(f"{name}  worker lost on {t.label}: failed; enqueued again if attempts remain")
        st.ledger.sync(lost, st.spec.max_attempts)
        claim = st.ledger.claim(set(by_key))
        if claim is None:
            return ran, failed
        trial = by_key[claim.key]
        waiting = st.ledger.waiting()
        eta = ""
        if ran + failed:
            per = (time.perf_counter() - t_start) / (ran + failed)
            eta = ", " + time_left(per, waiting, workers)
        log(
            f"{name}[{ran + failed + 1}] {trial.label} (key {trial.key[:10]}; "
            f"{waiting} more waiting{eta})"
        )
        with st.ledger.heartbeat(claim):
            ok = run_trial(st, trial, claim, log)
        ran += ok
        failed += not ok


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (a coordinator
    killed with -9 must not leave workers training on). Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took hold
        raise SystemExit(128 + signal.SIGTERM)


def _worker_process(
    spec: StudySpec,
    threads: int,
    index: int,
    jobs: int,
    queue,  # noqa: ANN001
    parent: int,
) -> None:
    """Entry point of a local worker process (spawned: no state shared with the parent): its
    share of the references, then trials until none is waiting."""
    stop_on_sigterm()
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy's and scikit-learn's pools too: one core each
    pretraining.SHOW_PROGRESS = False  # several bars on one terminal would overwrite each other
    name = f"w{index} "
    say = lambda m: print(m, flush=True)  # noqa: E731
    try:
        st = open_study(spec)
        run_references(st, lambda m: say(name + m.strip()), (index, jobs))
        ran, failed = work(st, expand(spec), say, name, workers=jobs)
        queue.put((ran, failed))
    except (KeyboardInterrupt, SystemExit):
        stop_handled()
        queue.put((0, 0))


def default_jobs() -> int:
    """Local workers when `-j` is not given. On a GPU, one (one device). On CPUs, one
    single-thread worker per core: `bench.workers` measured it faster than one worker using
    every core, on the default study (docs/performance.md)."""
    if torch.cuda.is_available():
        return 1
    return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def run_study(spec: StudySpec, log: Log = print, jobs: int = 1) -> RunSummary:
    """Sync the grid into the ledger, run the references, then work through the trials with
    `jobs` local workers (separate processes when more than one, threads split between them).
    Everything shared (databases, the MLflow experiment and parent run) is created here once,
    before any worker starts."""
    t0 = time.perf_counter()
    trials = expand(spec)
    check_no_leak(spec, trials)
    st = open_study(spec)
    reap_lost(st)  # trials of workers that died since the last run
    todo = st.ledger.sync(trials, spec.max_attempts)
    log(
        f"study {spec.study}: {len(trials)} trials, {len(trials) - len(todo)} already finished, "
        f"{len(todo)} to run" + (f" on {jobs} workers" if jobs > 1 else "")
    )
    if probe_finished(st, trials, log):
        log("finished trials probed on their new tasks; no training was needed for them")
    if jobs <= 1 or len(todo) <= 1:
        run_references(st, log)
        ran, failed = work(st, trials, log)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        threads = threads_per_worker(jobs)
        n = min(jobs, len(todo))
        procs = [
            ctx.Process(
                target=_worker_process, args=(spec, threads, i, n, queue, os.getpid()), daemon=False
            )
            for i in range(n)
        ]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except (KeyboardInterrupt, SystemExit) as e:
            # Ctrl-C reached the workers too; a SIGTERM (SystemExit) reached only this process,
            # so pass it on. Each worker releases its trial and exits.
            for p in procs:
                if isinstance(e, SystemExit) and p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=60)
            raise
        ran = failed = 0
        while not queue.empty():
            r, f = queue.get()
            ran, failed = ran + r, failed + f
        lost = [p.exitcode for p in procs if p.exitcode]
        if lost:
            log(f"{len(lost)} worker(s) exited abnormally (codes {lost}); their trials run again")
    return RunSummary(len(trials), ran, failed, len(trials) - len(todo), time.perf_counter() - t0)
