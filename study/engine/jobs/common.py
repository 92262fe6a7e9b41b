"""What every cluster job needs from a study: checked counts, its inputs, storage, `study run`.

The counts and sizes of a job's flags arrive as text and are checked here, so a bad one stops
with one `StudyError` line (flag, problem, value) like every other bad input, before any job
text is made.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import replace
from pathlib import Path

from study.engine.builders import budget_epochs, prepared_space
from study.engine.cluster import is_local_path
from study.engine.options import RunOptions, check_options, default_name, run_arguments
from study.errors import StudyError
from study.search.space import SPACES_DIR

# File systems that every node of a cluster mounts over the network (types in /proc/mounts).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "fuse.glusterfs",
    "wekafs", "panfs", "pvfs2", "orangefs", "fuse.beegfs", "fuse.ceph", "fuse.juicefs",
    "fuse.sshfs", "smb3", "cifs", "9p", "virtiofs", "fuse.s3fs", "fuse.gcsfuse",
})

# `ray start` options the job files set themselves (ports, addresses, resources, folders):
# given again through --ray-args they would clash with the job's own.
RAY_ARGS_SET_BY_JOB = frozenset({
    "--head", "--address", "--port", "--node-ip-address", "--block", "--temp-dir",
    "--num-cpus", "--num-gpus", "--node-manager-port", "--object-manager-port",
    "--min-worker-port", "--max-worker-port", "--worker-port-list", "--dashboard-port",
    "--ray-client-server-port", "--metrics-export-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--include-dashboard",
})

# A name that can stand unquoted in an #SBATCH line or a Kubernetes field.
PLAIN_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,:=@+-]*$")


def whole(flag: str, text: str | int, low: int = 1) -> int:
    """`text` as a whole number of at least `low`; StudyError naming `flag` otherwise."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < low:
        kind = "a positive whole number" if low == 1 else f"a whole number >= {low}"
        raise StudyError(f"{flag} must be {kind}, got {str(text)!r}")
    return value


def positive(flag: str, text: str | float) -> float:
    """`text` as a finite number above 0; StudyError naming `flag` otherwise."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise StudyError(f"{flag} must be a positive number, got {str(text)!r}")
    return value


def plain_word(flag: str, text: str | None) -> str | None:
    """`text` if it is one plain word (letters, digits, `_.,:=@+-`), so it cannot break the
    line it is written into; None stays None."""
    if text is not None and not PLAIN_WORD.match(text):
        raise StudyError(f"{flag} must be one word of letters, digits and _.,:=@+-, got {text!r}")
    return text


def printable(text: str) -> str:
    """`text` fit for a comment line of a job file: control characters (a newline would end
    the comment and make the rest code) shown as '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def ray_start_args(text: str) -> list[str]:
    """The extra `ray start` words of --ray-args, refusing the options the job sets itself."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise StudyError(f"--ray-args {text!r}: cannot be split into words ({exc})") from None
    for word in words:
        option = word.split("=", 1)[0]
        if option in RAY_ARGS_SET_BY_JOB:
            raise StudyError(f"--ray-args: {option} is set by the job itself (ports, addresses, "
                             f"CPUs, GPUs and folders), got {text!r}")
    return words


def check_trials_fit(opts: RunOptions, cpus: float, gpus: float, host: str,
                     cpus_flag: str, gpus_flag: str) -> None:
    """Refuse trials bigger than one `host` (a node, a worker pod) of `cpus` CPUs and `gpus`
    GPUs: a trial runs on one, or never starts."""
    for option, want, have, flag, unit in (("--cpus-per-trial", opts.cpus_per_trial, cpus,
                                            cpus_flag, "CPUs"),
                                           ("--gpus-per-trial", opts.gpus_per_trial, gpus,
                                            gpus_flag, "GPUs")):
        if want > have:
            raise StudyError(f"{option} {want:g} is more than a {host}'s {have:g} {unit} "
                             f"({flag}), so no trial could start")


def job_options(opts: RunOptions, local_inputs: bool) -> RunOptions:
    """`opts` checked and ready for a job: named, the space checked, local paths absolute.

    `local_inputs`: the job's nodes read --space and --data files from the same paths as this
    machine (a Slurm cluster's shared home), so they must exist here. Otherwise (pods) a file
    path is passed on as it is, and must be absolute.
    """
    check_options(opts)
    opts = replace(opts, name=opts.name or default_name())
    space, data = opts.space, opts.data
    shipped = not Path(space).expanduser().exists() and (SPACES_DIR / f"{space}.yaml").is_file()
    if local_inputs and not shipped:
        space = str(Path(space).expanduser().resolve())
    budget_epochs(prepared_space(replace(opts, space=space)))  # a bad space stops here
    if data != "synthetic" and not data.startswith("synthetic:"):
        path = Path(data).expanduser()
        if local_inputs:
            if not path.exists():
                raise StudyError(f"--data {data}: no such file or folder on this machine; the "
                                 "job's nodes read it from the same path, so it must be there")
            data = str(path.resolve())
        elif not path.is_absolute():
            raise StudyError(f"--data {data}: must be an absolute path inside the pods (on the "
                             "volume or in the image), or synthetic")
    return replace(opts, space=space, data=data)


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding `path` (or its nearest existing
    parent), from /proc/mounts; ("", "") where that cannot be read."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        real = probe.resolve()
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "", ""
    best = ("", "")
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (real == Path(point) or Path(point) in real.parents) and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def local_storage(opts: RunOptions) -> str | None:
    """The absolute local folder of --storage-path, or None for a bucket URI."""
    if not is_local_path(opts.storage_path):
        return None
    path = opts.storage_path.removeprefix("file://")
    return str(Path(path).expanduser().resolve())


def check_shared_storage(opts: RunOptions, nodes: int) -> bool:
    """Refuse a local --storage-path that only one of `nodes` Slurm nodes would see; return
    whether the job's `study run` needs --shared-storage (a local path on several nodes)."""
    folder = local_storage(opts)
    if folder is None or nodes == 1:
        return False
    point, kind = mount_of(Path(folder))
    if opts.shared_storage or kind in NETWORK_FILESYSTEMS:
        return True
    on = f"{kind or 'an unknown'} file system at {point or '?'}"
    raise StudyError(
        f"--storage-path {opts.storage_path}: is on this machine's {on}, not a network file "
        f"system, so the job's other {nodes - 1} node(s) cannot see it; use a folder on a "
        "shared file system (NFS, Lustre, GPFS, BeeGFS, CephFS), a bucket URI such as "
        "s3://BUCKET/studies, or pass --shared-storage if this path is mounted on every node"
    )


def study_run_words(opts: RunOptions, shared: bool) -> list[str]:
    """`study run --resume-or-start ...` for the job's driver (its --address follows)."""
    flags = replace(opts, address=None, resume=False, num_cpus=None, shared_storage=shared)
    return ["study", "run", "--resume-or-start", *run_arguments(flags)]
