"""The sbatch script of `study slurm`: a Ray cluster on a Slurm allocation that runs the study.

One Ray node per Slurm node (`srun`, one task per node, `ray start --block`, so Slurm stops it
with the job): the head on the first node, where the batch shell also runs the study's driver.
Each Ray node takes a block of ports chosen from the job id and holds it with a lock file, so
jobs sharing a node never clash; a fresh token per run authenticates every connection.

Preemption and time limits: the script asks Slurm for SIGUSR1 `stop_before` seconds before the
time limit (`--signal=B:USR1@...`), then sends the driver SIGTERM (the study saves, exit 143)
and requeues the job itself (`--requeue`). A preempted or `scontrol requeue`d job gets SIGTERM
from Slurm directly. Either way the next run's `study run --resume-or-start` resumes the study.

Ray's own `ray symmetric-run` is not used: it runs `ray stop`, which stops every Ray of the
user on the node (another job's too), and refuses to start where any Ray already runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace

from study.engine.jobs.common import (
    check_shared_storage,
    check_trials_fit,
    local_storage,
    plain_word,
    printable,
    ray_start_args,
    study_run_words,
    whole,
)
from study.engine.options import RunOptions
from study.errors import StudyError

# Ports the Ray nodes take: below Linux's ephemeral range (32768+), above Ray's default
# worker ports (10002-19999). A block holds FIXED_PORTS named ports and then worker ports.
PORT_LOW, PORT_HIGH = 20000, 32767
FIXED_PORTS = 10

# Slurm's time limit formats: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS,
# DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS.
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")


def time_limit_seconds(text: str) -> int:
    """Seconds of a Slurm time limit; StudyError unless it is a positive Slurm time."""
    match = _TIME.match(text.strip())
    seconds = 0
    if match:
        days, first, second, third = (int(g) if g is not None else None for g in match.groups())
        if days is not None:  # D-H, D-H:M, D-H:M:S
            seconds = ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
        elif third is not None:  # H:M:S
            seconds = (first * 60 + (second or 0)) * 60 + third
        else:  # M or M:S
            seconds = first * 60 + (second or 0)
    if seconds <= 0:
        raise StudyError(f"--time must be a positive Slurm time limit (MINUTES, HH:MM:SS, D-HH "
                         f"or D-HH:MM:SS), got {text!r}")
    return seconds


def check_partition(partition: str | None) -> None:
    """Refuse a --partition this machine's Slurm does not have (where `sinfo` answers)."""
    if partition is None or shutil.which("sinfo") is None:
        return
    try:
        done = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return  # no answer: the job's own submission will say
    known = sorted(set(done.stdout.split()))
    if done.returncode != 0 or not known:
        return
    unknown = [p for p in partition.split(",") if p not in known]
    if unknown:
        raise StudyError(f"--partition {partition}: no partition {unknown[0]!r} on this "
                         f"cluster (sinfo lists {', '.join(known)})")


@dataclass(frozen=True)
class SlurmJob:
    """The Slurm side of the job: the allocation, its limits, and what runs before the study."""

    nodes: int  # Slurm nodes, one Ray node each
    cpus_per_node: int  # CPUs each Ray node offers (the one task per node gets them all)
    gpus_per_node: int  # GPUs each Ray node offers (0: CPU nodes)
    time: str  # Slurm's time limit, as given
    stop_before: int  # seconds before the time limit at which the study saves and requeues
    partition: str | None = None
    account: str | None = None
    mem_per_node: str | None = None  # Slurm's --mem, e.g. 32G
    setup: tuple[str, ...] = ()  # shell lines run first (module load, venv activation)
    ray_args: tuple[str, ...] = ()  # more `ray start` words for every node

    @classmethod
    def from_flags(cls, nodes: str, cpus_per_node: str, gpus_per_node: str, time: str,
                   stop_before: str, partition: str | None = None, account: str | None = None,
                   mem_per_node: str | None = None, setup: tuple[str, ...] = (),
                   ray_args: str = "") -> SlurmJob:
        """The job of `study slurm`'s flags (text, as typed), each one checked."""
        limit = time_limit_seconds(time)
        before = whole("--stop-before", stop_before)
        if before >= limit:
            raise StudyError(f"--stop-before {before} must be shorter than the time limit "
                             f"(--time {time}: {limit} s)")
        if before > 65535:  # the most Slurm's --signal takes
            raise StudyError(f"--stop-before must be at most 65535 seconds, got {before}")
        if mem_per_node is not None and not _MEMORY.match(mem_per_node):
            raise StudyError(f"--mem-per-node must be a Slurm memory size such as 16G or "
                             f"64000M, got {mem_per_node!r}")
        return cls(nodes=whole("--nodes", nodes), cpus_per_node=whole("--cpus-per-node",
                   cpus_per_node), gpus_per_node=whole("--gpus-per-node", gpus_per_node, 0),
                   time=time.strip(), stop_before=before,
                   partition=plain_word("--partition", partition),
                   account=plain_word("--account", account), mem_per_node=mem_per_node,
                   setup=tuple(setup), ray_args=tuple(ray_start_args(ray_args)))

    @property
    def block(self) -> int:
        """Ports per Ray node: the named ones and workers' (several per CPU, 64 at least)."""
        return FIXED_PORTS + max(64, 4 * self.cpus_per_node)

    def check_trials_fit(self, opts: RunOptions) -> None:
        """Refuse trials bigger than one node: a trial runs on one node, or never."""
        check_trials_fit(opts, self.cpus_per_node, self.gpus_per_node, "node",
                         "--cpus-per-node", "--gpus-per-node")


def _job_name(name: str) -> str:
    """The study name as a Slurm job name (one word in an #SBATCH line)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "study"


def render_sbatch(job: SlurmJob, opts: RunOptions) -> str:
    """The sbatch script that runs the study `opts` (checked by `job_options`) as `job`."""
    job.check_trials_fit(opts)
    shared = check_shared_storage(opts, job.nodes)
    storage = local_storage(opts) or opts.storage_path
    opts = replace(opts, storage_path=storage)
    sbatch = [f"--{key}={value}" for key, value in (
        ("gpus-per-node", job.gpus_per_node or None), ("mem", job.mem_per_node),
        ("partition", job.partition), ("account", job.account)) if value is not None]
    setup = "\n".join(job.setup) + "\n" if job.setup else ""
    slots = (PORT_HIGH - PORT_LOW + 1) // job.block
    values = {
        "JOB_NAME": _job_name(str(opts.name)), "NAME": printable(str(opts.name)),
        "STORAGE": printable(storage),
        "NODES": str(job.nodes), "CPUS": str(job.cpus_per_node), "GPUS": str(job.gpus_per_node),
        "TIME": job.time, "STOP_BEFORE": str(job.stop_before),
        "MORE_SBATCH": "".join(f"#SBATCH {line}\n" for line in sbatch),
        "SETUP": setup, "BLOCK": str(job.block), "SLOTS": str(slots),
        "PORT_LOW": str(PORT_LOW), "PORT_HIGH": str(PORT_LOW + slots * job.block - 1),
        "RAY_ARGS": shlex.join(job.ray_args),
        "STUDY_RUN": " \\\n  ".join(_pairs(study_run_words(opts, shared))),
    }
    text = SBATCH_TEMPLATE
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    return text


def _pairs(words: list[str]) -> list[str]:
    """The command's words quoted, a flag and its value on one line."""
    lines: list[str] = []
    for word in words:
        if lines and not word.startswith("--") and lines[-1].startswith("--"):
            lines[-1] += " " + shlex.quote(word)
        else:
            lines.append(shlex.quote(word))
    head = [" ".join(lines[:3])] if lines[:3] == ["study", "run", "--resume-or-start"] else []
    return head + lines[len(head) * 3:]


SBATCH_TEMPLATE = r"""#!/bin/bash
#SBATCH --job-name=__JOB_NAME__
#SBATCH --nodes=__NODES__
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=__CPUS__
__MORE_SBATCH__#SBATCH --time=__TIME__
#SBATCH --requeue
#SBATCH --signal=B:USR1@__STOP_BEFORE__
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# Written by `study slurm`: the study __NAME__ on __NODES__ Slurm node(s), one Ray node on each
# (the head, and the study's driver, on the first).
#   submit: sbatch THIS_FILE     watch: tail -f __JOB_NAME__-JOBID.out     stop: scancel JOBID
#   results: __STORAGE__/__NAME__
# Preempted, requeued, or stopped __STOP_BEFORE__ s before the time limit (this script then
# requeues itself), the job runs `study run --resume-or-start` again, which resumes the study.
# To change the study, run `study slurm` again rather than editing the flags below.

__SETUP__set -euo pipefail  # after the set-up lines: module scripts often use unset variables

# Token authentication: a new random token for each run of the job, given to every Ray node
# and to the driver in the environment (srun passes it on); it is never written to a file.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_TOKEN RAY_USAGE_STATS_ENABLED=0

# Ports: each Ray node takes a block of __BLOCK__ ports in __PORT_LOW__-__PORT_HIGH__, starting
# with a block chosen from the job id, and holds it with a lock in /tmp while it runs, so that
# two jobs (or two users) on one node never take the same ports.
claim_ports() {
  local i slot
  for ((i = 0; i < __SLOTS__; i++)); do
    slot=$(( (SLURM_JOB_ID * __NODES__ + ${SLURM_NODEID:-0} + i) % __SLOTS__ ))
    if { exec {PORT_LOCK}>>"/tmp/ray-ports-$slot.lock"; } 2>/dev/null; then
      if flock -n "$PORT_LOCK"; then
        PORT_BASE=$(( __PORT_LOW__ + slot * __BLOCK__ ))
        return 0
      fi
      exec {PORT_LOCK}>&-
    fi
  done
  echo "$(hostname): no free block of Ray ports" >&2
  return 1
}

# One Ray node per Slurm node (srun runs this once on each): the head on node 0 with the ports
# the batch shell holds, a worker elsewhere. `--block` keeps Ray inside the job's step, so
# Slurm stops it with the job; the node's Ray folder is removed when it stops.
ray_node() {
  set -euo pipefail
  local base temp="/tmp/ray-$SLURM_JOB_ID-$SLURM_NODEID" t
  if [ "$SLURM_NODEID" = 0 ]; then base=$HEAD_PORT_BASE; else claim_ports; base=$PORT_BASE; fi
  rm -rf "$temp"  # an earlier run's, if this job was requeued
  trap 'rm -rf "$temp"' EXIT
  trap 'exit 143' TERM
  trap 'exit 0' USR2  # the study is over (srun passes SIGUSR2 on to every process of the step)
  local args=(--block --temp-dir "$temp" --num-cpus __CPUS__ --num-gpus __GPUS__
    --node-manager-port $((base + 3)) --object-manager-port $((base + 4))
    --metrics-export-port $((base + 5)) --dashboard-agent-listen-port $((base + 6))
    --dashboard-agent-grpc-port $((base + 7)) --runtime-env-agent-port $((base + 8))
    --min-worker-port $((base + 10)) --max-worker-port $((base + __BLOCK__ - 1))
    --disable-usage-stats __RAY_ARGS__)
  if [ "$SLURM_NODEID" = 0 ]; then
    ray start --head --node-ip-address "$HEAD_IP" --port "$HEAD_PORT" \
      --ray-client-server-port $((base + 1)) --dashboard-port $((base + 2)) \
      --include-dashboard=false "${args[@]}"
  else
    for ((t = 0; t < 150; t++)); do
      (exec 3<>"/dev/tcp/$HEAD_IP/$HEAD_PORT") 2>/dev/null && break
      sleep 2
    done
    ray start --address "$HEAD_IP:$HEAD_PORT" "${args[@]}"
  fi
}
export -f claim_ports ray_node

claim_ports  # the batch shell, on the first node, holds the head's ports for the whole job
HEAD_IP=$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')
export HEAD_IP HEAD_PORT_BASE=$PORT_BASE HEAD_PORT=$PORT_BASE
echo "$(date '+%F %T') job $SLURM_JOB_ID, run $(( ${SLURM_RESTART_COUNT:-0} + 1 )):" \
  "Ray head at $HEAD_IP:$HEAD_PORT, $SLURM_JOB_NUM_NODES node(s)"
srun --nodes=__NODES__ --ntasks=__NODES__ --ntasks-per-node=1 --cpus-per-task=__CPUS__ \
  --kill-on-bad-exit=1 bash -c ray_node &
ray_nodes=$!

# Wait for the head, then for every node to join.
for ((t = 0; ; t++)); do
  (exec 3<>"/dev/tcp/$HEAD_IP/$HEAD_PORT") 2>/dev/null && break
  if ! kill -0 "$ray_nodes" 2>/dev/null || ((t > 150)); then
    echo "the Ray head did not start on $HEAD_IP:$HEAD_PORT" >&2
    exit 1
  fi
  sleep 2
done
python - "$HEAD_IP:$HEAD_PORT" __NODES__ <<'PY'
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.monotonic() + 300
while (alive := sum(node["Alive"] for node in ray.nodes())) < want:
    if time.monotonic() > deadline:
        sys.exit(f"only {alive} of {want} Ray nodes joined within 300 s")
    time.sleep(2)
print(f"{alive} Ray node(s) up", flush=True)
PY

# The study's driver. SIGUSR1 (the time limit is near): stop it (SIGTERM: the study saves and
# exits 143) and requeue the job. SIGTERM from Slurm (preemption, requeue, scancel) reaches the
# driver itself: the study saves what it has.
driver="" requeue=no
on_time_limit() {
  echo "$(date '+%F %T') the time limit is near: stopping the study to requeue the job"
  requeue=yes
  if [ -n "$driver" ]; then kill -TERM "$driver" 2>/dev/null || true; fi
}
trap on_time_limit USR1
trap 'echo "$(date "+%F %T") Slurm is stopping the job: the study saves what it has"' TERM
__STUDY_RUN__ \
  --address "$HEAD_IP:$HEAD_PORT" &
driver=$!
status=0
wait "$driver" || status=$?
while kill -0 "$driver" 2>/dev/null; do  # woken by a signal while the study saves
  status=0
  wait "$driver" || status=$?
done
echo "$(date '+%F %T') study run exited with status $status"
# Stop the Ray nodes: srun passes SIGUSR2 on (SIGTERM would make it kill them at once).
kill -USR2 "$ray_nodes" 2>/dev/null || true
wait "$ray_nodes" 2>/dev/null || true
if [ "$requeue" = yes ] && [ "$status" = 143 ]; then
  echo "$(date '+%F %T') requeueing job $SLURM_JOB_ID: its next run resumes the study"
  # Requeued, this run has done its part: a non-zero exit could mark the job FAILED before
  # Slurm has moved it back to the queue.
  scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
exit "$status"
"""
