"""A throwaway one-node Slurm cluster for the tests.

`slurm_cluster` (a session fixture) starts `munged`, `slurmctld` and `slurmd` as background
processes, all state, spool, logs and the munge key under a temp directory, the daemons on free
ports of 127.0.0.1 with one node called `localhost` and one partition `debug`. The Slurm client
commands (sbatch, squeue, scancel, scontrol) find the cluster through `SLURM_CONF`, which the
fixture sets for the test process and its children; everything is stopped and deleted at the
end. No accounting daemon runs (`sacct` fails): state is read from `squeue` and abl's ledger.
The binaries come from the Debian packages `slurm-wlm` and `munge` (scripts/setup.sh installs
them). No cluster means the Slurm tests fail with the reason: they never skip. Use it with
`from tests.slurm import slurm_cluster  # noqa: F401` in a test module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "debug"
NODE_CPUS = 4  # declared, not real: enough slots for the tests' workers on a 2-core machine
CONF = """\
ClusterName=abltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2048 State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """One running throwaway cluster; `env` is what a client command needs to reach it."""

    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def partition(self) -> str:
        return PARTITION

    def logs(self) -> str:
        """The daemons' log tails, for a failure message."""
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {name}\n" + p.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, and end any job step they left behind."""
        if self.procs and self.procs[-1].poll() is None:
            _cancel_all(self)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for pid in _steps_of(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _cancel_all(cluster: SlurmCluster, timeout: float = 90) -> None:
    """scancel every job, then wait until the node has ended them (their steps exit)."""
    env = cluster.env
    subprocess.run(["scancel", "--full", "--partition", PARTITION], env=env, timeout=30)
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = subprocess.run(
            ["squeue", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
        )
        if r.returncode or not r.stdout.strip():
            return
        time.sleep(1)


def _steps_of(root: Path) -> list[int]:
    """Processes whose working folder is the cluster's (slurmstepd, started by its slurmd)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == str(root) or cwd.startswith(f"{root}/"):
                pids.append(int(entry.name))
    return pids


def start_slurm() -> SlurmCluster:
    """Start a cluster (see the module docstring); raises RuntimeError saying what is missing."""
    binaries = {b: shutil.which(b, path="/usr/sbin:/usr/bin") for b in _BINARIES}
    missing = [b for b, p in binaries.items() if p is None]
    if missing:
        raise RuntimeError(
            f"Slurm binaries not found ({', '.join(missing)}); install the Debian packages "
            "`slurm-wlm` and `munge` (bash scripts/setup.sh does)"
        )
    root = Path(tempfile.mkdtemp(prefix="abl-slurm-"))
    cluster = SlurmCluster(root)
    try:
        for d in ("munge", "state", "spool"):
            (root / d).mkdir()
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        (root / "munge").chmod(0o700)
        sock = root / "munge" / "munge.socket"
        cluster.procs.append(
            _spawn(
                [
                    binaries["munged"],
                    "--foreground",
                    "--force",  # as root, with a key in a temp folder
                    f"--socket={sock}",
                    f"--key-file={key}",
                    f"--pid-file={root / 'munge' / 'munged.pid'}",
                    f"--log-file={root / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'munged.seed'}",
                    "--num-threads=2",
                ],
                root / "munged.out",
            )
        )
        _wait(lambda: sock.exists(), 30, "munged did not create its socket", cluster)
        cluster.conf.write_text(
            CONF.format(
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                user=_user(),
                root=root,
                cpus=NODE_CPUS,
                partition=PARTITION,
            )
        )
        env = cluster.env
        cluster.procs.append(
            _spawn([binaries["slurmctld"], "-D", "-i", "-f", str(cluster.conf)], root / "ctld.out")
        )
        cluster.procs.append(
            _spawn(
                [binaries["slurmd"], "-D", "-N", "localhost", "-f", str(cluster.conf)],
                root / "slurmd.out",
            )
        )
        _wait(lambda: _node_idle(env), 120, "the node did not come up idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as f:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log.parent
        )


def _node_idle(env: dict[str, str]) -> bool:
    r = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
    )
    return r.returncode == 0 and r.stdout.strip() == "idle"


def _wait(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:  # noqa: ANN001
    t0 = time.time()
    while not predicate():
        dead = [p.args[0] for p in cluster.procs if p.poll() is not None]
        if dead or time.time() - t0 > timeout:
            why = f"{', '.join(map(str, dead))} exited" if dead else f"{timeout:.0f} s passed"
            raise RuntimeError(f"{what} ({why}):\n{cluster.logs()}")
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node cluster for the session, SLURM_CONF set while it runs; the tests that use
    it fail (never skip) when it cannot start."""
    try:
        cluster = start_slurm()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        pytest.fail(f"Slurm test cluster: {e}", pytrace=False)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        cluster.stop()
