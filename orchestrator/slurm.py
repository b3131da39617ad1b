"""The Slurm launcher: a study's workers as a Slurm job array, submitted through submitit.

The Optuna ledger stays the one record of which trials exist and which are done; Slurm only
supplies workers. Each array task is a pull worker (`SlurmWorker`): it claims waiting trials
from the study's shared storage until none is left. A worker handles three stops:

- SIGUSR2, which Slurm sends `launcher.signal_s` before the time limit or a preemption: the
  running trial is released (not counted as an attempt; it resumes from its last checkpoint)
  and the worker requeues itself, so a study outlives any one time limit;
- SIGTERM (`abl stop`, `scancel`): the trial is released and the worker exits;
- SIGKILL or a lost node: nothing runs; the trial's heartbeat goes stale and a live worker
  fails it, and the ledger hands it out again.

A worker with nothing left to claim stays while trials of other workers still run, so that one
whose worker is lost still finishes; it leaves when none is running.

The job ids a study submitted are kept in `OUTPUT/slurm/jobs.txt`, with every worker's log
(`JOBID_TASK_log.out`) beside them: `abl status` reads their live state from `squeue`, and
`abl stop` cancels them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from db.engine import mask_url
from model.errors import AblError
from orchestrator.launcher import LauncherSpec
from orchestrator.spec import StudySpec

Log = Callable[[str], None]
# squeue states of a worker that holds or will hold a slot (a finished job leaves squeue).
QUEUED = ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD")
QUEUED += ("SUSPENDED", "RESIZING", "SIGNALING", "STOPPED", "SPECIAL_EXIT")
# ... and of one still ending: a requeued job passes through COMPLETING on its way back.
LIVE = (*QUEUED, "COMPLETING", "STAGE_OUT")
# Filesystems every node of a cluster usually mounts; anything else gets a warning.
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.sshfs", "cifs")
SHARED_FS += ("smb3", "panfs", "wekafs", "fuse.glusterfs", "glusterfs", "fuse.juicefs", "9p")


def job_name(spec: StudySpec) -> str:
    return f"abl-{spec.study}"


def slurm_folder(spec: StudySpec) -> Path:
    """Where the workers' logs, submitit's pickles and the study's job ids live."""
    return spec.output / "slurm"


def log_file(spec: StudySpec, job: str) -> Path:
    """A worker's log (stdout and stderr) by its job id, `12_0` for array task 0 of job 12
    (submitit adds the task rank within the job, always 0 here)."""
    return slurm_folder(spec) / f"{job}_0_log.out"


def parameters(lc: LauncherSpec, spec: StudySpec, workers: int) -> dict:
    """submitit's SlurmExecutor parameters for `workers` array tasks of the study."""
    params: dict = {
        "job_name": job_name(spec),
        "time": lc.time_min,
        "cpus_per_task": lc.cpus_per_trial,
        "signal_delay_s": lc.signal_s,  # --signal=USR2@signal_s
        "array_parallelism": lc.max_parallel or workers,  # the array's %K
        "stderr_to_stdout": True,
        "additional_parameters": {"requeue": True, **dict(_split(e) for e in lc.extra)},
    }
    if lc.partition:
        params["partition"] = lc.partition
    if lc.gpus_per_trial:
        # Slurm sets CUDA_VISIBLE_DEVICES to the job's GPUs: trials sharing a node never collide.
        params["gpus_per_node"] = lc.gpus_per_trial
    if lc.mem:
        params["mem"] = lc.mem
    if lc.account:
        params["account"] = lc.account
    if lc.qos:
        params["qos"] = lc.qos
    return params


def _split(entry: str) -> tuple[str, str | bool]:
    key, value = entry.split("=", 1)
    return key, True if value == "true" else value


def batch_script(spec: StudySpec, workers: int) -> str:
    """The sbatch script submitit would submit for `workers` workers (for --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = parameters(spec.launcher, spec, workers)
    return _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit {slurm_folder(spec)}",
        folder=slurm_folder(spec),
        map_count=workers,
        **params,
    )


# --- checks before anything is submitted --------------------------------------------------


def check_cluster(spec: StudySpec) -> None:
    """Refuse what cannot work on a cluster, each as one line: SQLite as the ledger, no Slurm
    here, an unknown partition, storage or folders this host cannot reach."""
    url = spec.optuna_url
    if url.startswith("sqlite"):
        which = "the default" if not spec.storage.optuna else mask_url(url)
        raise AblError(
            f"{spec.source}: storage.optuna is SQLite ({which}), which the Slurm launcher "
            "refuses: SQLite on a network filesystem corrupts under "
            "workers on many nodes; set storage.optuna to a PostgreSQL URL or to a journal file "
            "on the shared filesystem (journal:///shared/abl-out/optuna.journal)"
        )
    if shutil.which("sbatch") is None:
        raise AblError(
            "--launcher slurm: sbatch is not on PATH; run abl on the cluster's login node"
        )
    lc = spec.launcher
    if lc.partition:
        known = partitions()
        if lc.partition not in known:
            raise AblError(
                f"{spec.source}: launcher.partition = {lc.partition!r} is not a partition of "
                f"this cluster; partitions: {', '.join(known) or 'none'}"
            )
    from orchestrator.prepare import check_storage

    check_storage(spec)  # database servers and an MLflow server answer, before submitting
    if url.startswith("journal://"):
        _check_folder(Path(url.removeprefix("journal://")).parent, "storage.optuna", spec)


def partitions() -> list[str]:
    r = _slurm(["sinfo", "-h", "-o", "%P"])
    return sorted({p.rstrip("*") for p in r.split()})


def _check_folder(folder: Path, key: str, spec: StudySpec) -> None:
    """The nearest existing folder of `folder` must be writable from here."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise AblError(
            f"{spec.source}: {key}: {folder} cannot be written from this host; choose a folder "
            "on the shared filesystem that every node mounts"
        )


def check_data(spec: StudySpec) -> Path:
    """The data cache, with every task the study reads prepared: a worker must never prepare
    data (many would at once, on the shared filesystem)."""
    from model.data.datasets import resolve_data_root
    from orchestrator.prepare import check_probes, unprepared

    root = resolve_data_root(spec.baseline.data.cache)
    missing, changed = unprepared(spec, root)
    if missing:
        raise AblError(
            f"{spec.source}: task(s) {', '.join(missing)} are not prepared in the data cache "
            f"{root}; run `abl data prepare -e {spec.source}` once on this host first"
        )
    if changed:
        raise AblError(
            f"{spec.source}: the files of task(s) {', '.join(changed)}, or how abl prepares "
            f"them, changed since they were prepared in {root}; run "
            f"`abl data prepare -e {spec.source}` once on this host to prepare them again"
        )
    check_probes(spec, root)  # what the probes need: found before any worker pretrains
    return root


def filesystem(path: Path) -> str:
    """The filesystem type of the mount holding `path` (from /proc/mounts; '' elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    path = path.resolve()
    best, kind = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def shared_notes(spec: StudySpec, data_root: Path) -> list[str]:
    """Warnings for folders on a local filesystem: other nodes would not see them."""
    notes = []
    for what, path in (("output folder", spec.output), ("data cache", data_root)):
        fs = filesystem(path)
        if fs and fs not in SHARED_FS:
            notes.append(
                f"note: the {what} {path} is on a local filesystem ({fs}); workers on other "
                "nodes will not see it (fine on a one-node cluster)"
            )
    return notes


# --- submitting ---------------------------------------------------------------------------


def live_jobs(spec: StudySpec) -> list[dict[str, str]]:
    """The study's array tasks Slurm still holds (pending, running, ...), from squeue."""
    return [j for j in study_jobs(spec) if j["state"] in LIVE]


def submitted(spec: StudySpec) -> list[str]:
    """Job ids the study submitted, oldest first."""
    path = slurm_folder(spec) / "jobs.txt"
    if not path.is_file():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def study_jobs(spec: StudySpec) -> list[dict[str, str]]:
    """One entry per array task of the study's jobs that squeue still knows (finished jobs
    leave it after the cluster's MinJobAge): job, state, elapsed time, node or reason."""
    ids = submitted(spec)
    if not ids:
        return []
    out = _slurm(
        ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%M|%R"],
        ok_codes=(0, 1),  # 1: every id has left squeue
    )
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            jobs.append(dict(zip(("job", "state", "elapsed", "where"), parts, strict=True)))
    return jobs


def status_lines(spec: StudySpec, engine) -> list[str]:  # noqa: ANN001
    """For `abl status`: the study's Slurm workers with their states, and the log file of
    each failed trial that ran in one."""
    from sqlalchemy import select

    from db.schema import Study, Trial

    ids = submitted(spec)
    if not ids:
        return []
    try:
        jobs = study_jobs(spec)
    except AblError as e:  # e.g. looking from a machine outside the cluster
        jobs, why = [], f" (no live state: {e})"
    else:
        why = ""
    live = sum(j["state"] in LIVE for j in jobs)
    lines = [f"slurm: job arrays {', '.join(ids)}; {live} worker(s) live{why}"]
    for j in jobs:
        lines.append(f"  {j['job']:<12} {j['state']:<11} {j['elapsed']:>10}  {j['where']}")
    stmt = (
        select(Trial.axis, Trial.setting, Trial.seed, Trial.worker, Trial.error)
        .join(Study, Trial.study_id == Study.id)
        .where(Study.name == spec.study, Trial.status == "failed")
    )
    with engine.connect() as conn:
        failed = conn.execute(stmt).all()
    for axis, setting, seed, worker, error in failed:
        if worker and worker.startswith("slurm:"):
            job = worker.removeprefix("slurm:").split("@")[0]
            lines.append(
                f"  failed {axis}={setting} seed={seed}: {(error or '')[:120]}; "
                f"log: {log_file(spec, job)}"
            )
    return lines


def submit(spec: StudySpec, log: Log) -> list[str]:
    """Sync the grid into the ledger, then submit the workers the study still lacks: one per
    trial to run, at most `max_parallel` at once counting the study's queued and running
    workers. Returns the array job ids submitted (none when enough are queued)."""
    import submitit

    from orchestrator.grid import expand
    from orchestrator.study import open_study, reap_lost

    check_cluster(spec)
    data_root = check_data(spec)
    for note in shared_notes(spec, data_root):
        log(note)
    trials = expand(spec)
    st = open_study(spec)  # databases, MLflow experiment and parent run: once, here
    reap_lost(st)
    todo = st.ledger.sync(trials, spec.max_attempts)
    lc = spec.launcher
    live = sum(j["state"] in QUEUED for j in study_jobs(spec))
    want = min(len(todo), lc.max_parallel or len(todo))
    log(
        f"study {spec.study}: {len(trials)} trials, {len(trials) - len(todo)} already finished, "
        f"{len(todo)} to run; {live} worker(s) already queued or running"
    )
    workers = want - live
    if workers <= 0:
        log("nothing submitted: the study's queued workers are enough")
        return []
    folder = slurm_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**parameters(lc, spec, workers))
    entry = SlurmWorker(spec, workers)
    try:
        jobs = executor.map_array(entry, range(workers))
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
        raise AblError(f"sbatch refused the job array: {_last_line(e)}") from None
    array = str(jobs[0].job_id).split("_")[0]
    with (folder / "jobs.txt").open("a") as f:
        f.write(f"{array} {workers} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    where = f" on partition {lc.partition}" if lc.partition else ""
    cap = f", at most {lc.max_parallel} at once" if lc.max_parallel else ""
    log(f"submitted job array {array}: {workers} worker(s){cap}{where}")
    log(f"logs:    {folder}/{array}_*_log.out")
    return [array]


def wait(spec: StudySpec, log: Log, poll_s: float = 5.0) -> None:
    """Return once none of the study's workers is queued or running, saying what changed."""
    last = None
    while True:
        live = live_jobs(spec)
        now = (sum(j["state"] == "RUNNING" for j in live), len(live))
        if now != last:
            log(f"workers: {now[0]} running, {now[1] - now[0]} waiting")
            last = now
        if not live:
            return
        time.sleep(poll_s)


def stop(spec: StudySpec) -> list[str]:
    """Cancel the study's queued and running workers (SIGTERM: each releases its trial, which
    does not count as an attempt). Returns the cancelled array tasks."""
    live = [j["job"] for j in live_jobs(spec)]
    if live:
        _slurm(["scancel", *live])
    return live


def _slurm(cmd: list[str], ok_codes: tuple[int, ...] = (0,)) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise AblError(f"{cmd[0]} is not on PATH; run abl on the cluster's login node") from None
    except subprocess.TimeoutExpired:
        raise AblError(f"{cmd[0]} did not answer in 60 s; is slurmctld up?") from None
    if r.returncode not in ok_codes:
        raise AblError(f"{' '.join(cmd[:2])} failed: {_last_line(r.stderr or r.stdout)}")
    return r.stdout


def _last_line(e: object) -> str:
    text = str(getattr(e, "stderr", None) or e).strip()
    return text.splitlines()[-1] if text else "no message"


# --- the worker, on a compute node ----------------------------------------------------------


class Preempted(SystemExit):
    """Slurm's warning signal: the time limit or a preemption is near."""


@dataclass(frozen=True)
class SlurmWorker:
    """One array task: a pull worker on the study's shared ledger. Pickled by submitit with
    the validated spec, so editing the experiments file later changes no queued worker."""

    spec: StudySpec
    workers: int  # array tasks submitted with this one (they split the references)

    def __call__(self, index: int) -> tuple[int, int]:
        import torch
        from threadpoolctl import threadpool_limits

        from orchestrator.grid import expand
        from orchestrator.ledger import HEARTBEAT_S
        from orchestrator.probing import probe_finished
        from orchestrator.references import run_references
        from orchestrator.signals import raise_on, stop_handled, stop_on_sigterm
        from orchestrator.study import open_study

        stop_on_sigterm()  # replaces submitit's handler, which ignores SIGTERM

        raise_on(signal.SIGUSR2, Preempted)
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", self.spec.launcher.cpus_per_trial))
        torch.set_num_threads(threads)
        threadpool_limits(threads)
        job = slurm_job_id()
        say = lambda m: print(m, flush=True)  # noqa: E731
        try:
            st = open_study(self.spec)
            gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
            st.worker = f"slurm:{job}@{socket.gethostname()}:{os.getpid()}"
            st.worker += f" gpu={gpus}" if gpus else ""
            say(f"worker {st.worker}: study {self.spec.study}, {threads} thread(s)")
            if index == 0:  # finished trials missing a task added since: probed, not retrained
                probe_finished(st, expand(self.spec), say)
            run_references(st, say, (index, self.workers))
            ran, failed = self._work(st, say, HEARTBEAT_S)
        except Preempted:
            stop_handled()
            say(f"worker {job}: warned of the time limit or a preemption; trial released")
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue's own stop: done already
            requeue(job)
            return 0, 0
        say(f"worker done: ran {ran}, failed {failed}")
        return ran, failed

    def _work(self, st, say: Log, poll_s: float) -> tuple[int, int]:  # noqa: ANN001
        from optuna.trial import TrialState

        from orchestrator.grid import expand
        from orchestrator.study import reap_lost
        from orchestrator.workers import work

        trials = expand(self.spec)
        keys = {t.key for t in trials}

        def ours(state: TrialState) -> int:
            found = st.ledger.study.get_trials(deepcopy=False, states=(state,))
            return sum(t.user_attrs.get("key") in keys for t in found)

        ran = failed = 0
        while True:
            reap_lost(st)
            st.ledger.sync(trials, self.spec.max_attempts)  # released trials wait again
            if ours(TrialState.WAITING):
                r, f = work(st, trials, say, workers=self.workers)
                ran, failed = ran + r, failed + f
                continue
            if not ours(TrialState.RUNNING):
                return ran, failed
            time.sleep(poll_s)  # take over any of them whose worker is lost or stopped

    def checkpoint(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """submitit's preemption hook: the same worker starts again (its state is the ledger)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_job_id() -> str:
    """This array task's id (12_3), or the job's id outside an array."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def requeue(job: str) -> None:
    """Put this worker back in the queue (it restarts from the top, on the shared ledger)."""
    r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if r.returncode:
        print(f"worker {job}: requeue failed: {_last_line(r.stderr)}", flush=True)


def with_launcher(spec: StudySpec, launcher: LauncherSpec) -> StudySpec:
    return dataclasses.replace(spec, launcher=launcher)
