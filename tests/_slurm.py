"""A real two-node Slurm on this machine, for tests of `study slurm`'s sbatch scripts.

`start_slurm` runs Debian's `munged`, `slurmctld` and two `slurmd -N nodeN` daemons (one
NodeName each, their own ports, NodeAddr=127.0.0.1, ProctrackType=proctrack/linuxproc,
TaskPlugin=task/none), everything under one short temp folder with its own munge key and
socket, so the machine's own Slurm or munge (if any) is never touched. Every process it starts
carries MARKER=<that folder> in its environment (the daemons, and through sbatch's environment
every job's processes, Ray's included); `stop_slurm` stops exactly those by PID and checks
that they are gone (`stop_marked` does the same for any processes so marked).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _proc import signal_pids

MARKER = "STUDY_SLURM_TEST"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "srun")
NODES = ("node1", "node2")

SLURM_CONF = """\
ClusterName=studytest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node1_port} CPUs=1 State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={node2_port} CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
"""


def missing_binaries() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    return [name for name in DAEMONS if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Slurm:
    root: Path  # config, munge key and socket, state, spools, logs; jobs' output
    env: dict[str, str]  # SLURM_CONF and the marker: for sbatch, scontrol and `study slurm`
    daemons: list[subprocess.Popen] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # ids of the jobs submitted
    locks_before: set[str] = field(default_factory=set)  # /tmp/ray-ports-*.lock already there

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, script: Path, *options: str) -> str:
        """`sbatch --parsable` the script (output in `root`); return the job id."""
        done = self.run("sbatch", "--parsable", f"--output={self.root}/job-%j.out",
                        f"--chdir={self.root}", *options, str(script))
        if done.returncode != 0:
            raise AssertionError(f"sbatch failed: {done.stderr}")
        self.jobs.append(done.stdout.strip().split(";")[0])
        return self.jobs[-1]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` of `job_id` as key=value pairs (empty if Slurm forgot it)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(word.split("=", 1) for word in out.split() if "=" in word)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted((self.root / "log").glob("*")))


def _marked(marker: str) -> set[int]:
    """Live (non-zombie) processes whose environment holds MARKER=marker."""
    found = set()
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] != "Z" and needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def start_slurm() -> Slurm:
    """Start munged, slurmctld and two slurmd; return once both nodes are idle.

    Raises RuntimeError (with the daemons' logs) if they do not come up; everything started
    is stopped first.
    """
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    for sub in ("munge", "state", "log", *(f"spool/{n}" for n in NODES)):
        (root / sub).mkdir(parents=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, ctld_port=_free_port(),
                                      node1_port=_free_port(), node2_port=_free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    env.update({"SLURM_CONF": str(conf), MARKER: str(root), "PYTHONUNBUFFERED": "1"})
    slurm = Slurm(root, env, locks_before={p.name for p in Path("/tmp").glob("ray-ports-*")})
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--socket={root}/munge/socket",
                   f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
                   f"--seed-file={root}/munge/seed", f"--log-file={root}/log/munged.log"],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)],
        **{f"slurmd-{n}": ["slurmd", "-D", "-N", n, "-f", str(conf)] for n in NODES},
    }
    try:
        for name, command in commands.items():
            with open(root / "log" / f"{name}.out", "w") as out:
                slurm.daemons.append(subprocess.Popen(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True))
            if name == "munged":
                _wait(lambda: (root / "munge" / "socket").exists(), 15, "munged's socket")
            if name == "slurmctld":
                _wait(lambda: slurm.run("scontrol", "ping").returncode == 0, 30, "slurmctld")
        _wait(lambda: _idle(slurm), 60, "both slurmd nodes idle")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        logs = slurm.logs()
        stop_slurm(slurm)
        raise RuntimeError(f"{exc}\n{logs}") from None
    return slurm


def _idle(slurm: Slurm) -> bool:
    out = slurm.run("sinfo", "--noheader", "--Node", "--format=%N %t").stdout.split()
    return out.count("idle") == len(NODES)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def stop_marked(marker: str, also: set[int] = frozenset(), grace_s: float = 10.0) -> set[int]:
    """SIGTERM the processes marked with `marker` (and `also`), SIGKILL what is left after
    `grace_s`; return the PIDs still alive."""
    signal_pids(_marked(marker) | set(also), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_pids(_marked(marker) | set(also), signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def stop_slurm(slurm: Slurm) -> set[int]:
    """Stop the daemons and every process of the jobs (by PID); remove what the jobs left in
    /tmp; return the PIDs still alive afterwards."""
    left = stop_marked(str(slurm.root), {p.pid for p in slurm.daemons if p.poll() is None})
    for proc in slurm.daemons:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            left.add(proc.pid)
    for job_id in slurm.jobs:  # each Ray node's folder, if its job was killed
        for folder in Path("/tmp").glob(f"ray-{job_id}-*"):
            shutil.rmtree(folder, ignore_errors=True)
    for lock in Path("/tmp").glob("ray-ports-*.lock"):
        if lock.name not in slurm.locks_before:
            lock.unlink(missing_ok=True)
    if not left:
        shutil.rmtree(slurm.root, ignore_errors=True)
    return left
