"""What `study slurm` and `study kuberay` do: check everything, then write the job file.

The job's `study run` options are checked as `study run` checks them (`check_options`, the
search space loaded), and the job's own flags by study.engine.jobs; only then is the sbatch
script or RayJob manifest written, to standard output or `--out`. Nothing is submitted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from study.engine.options import RunOptions
from study.errors import StudyError


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The `study run` options of a job command's flags (RunOptions' defaults for the rest)."""
    values = {f.name: getattr(args, f.name) for f in fields(RunOptions) if hasattr(args, f.name)}
    asked = bool(getattr(args, "verbose", False)) or bool(getattr(args, "run_verbose", False))
    values["verbose"] = 0 if args.quiet else 2 if asked else 1
    return RunOptions(**values)


def _write(text: str, out: str | None, what: str) -> None:
    """`text` to standard output, or to the file `out` (whole, or not at all)."""
    if out is None:
        sys.stdout.write(text)
        return
    from study.core.files import write_text_atomic

    path = Path(out)
    if path.is_dir():
        raise StudyError(f"--out {out}: is a folder; give the file to write the {what} to")
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot be written ({exc.strerror})") from None
    print(f"Wrote the {what} to {out}.", file=sys.stderr)


def cmd_slurm(args: argparse.Namespace) -> int:
    """`study slurm`: write the sbatch script of a study on a Slurm allocation."""
    from study.engine.jobs.common import job_options
    from study.engine.jobs.slurm import SlurmJob, check_partition, render_sbatch

    job = SlurmJob.from_flags(
        nodes=args.nodes, cpus_per_node=args.cpus_per_node, gpus_per_node=args.gpus_per_node,
        time=args.time, stop_before=args.stop_before, partition=args.partition,
        account=args.account, mem_per_node=args.mem_per_node,
        setup=tuple(args.setup) or (_path_line(),), ray_args=args.ray_args)
    opts = job_options(_run_options(args), local_inputs=True)
    check_partition(job.partition)
    _write(render_sbatch(job, opts), args.out, "sbatch script")
    return 0


def _path_line() -> str:
    """The default --setup: this environment's `study`, `ray` and `python` first on PATH."""
    import shlex

    return f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"'


def cmd_kuberay(args: argparse.Namespace) -> int:
    """`study kuberay`: write the KubeRay RayJob manifest of a study on Kubernetes."""
    from study.engine.jobs.common import job_options
    from study.engine.jobs.kuberay import KubeRayJob, rayjob_yaml, render_rayjob

    job = KubeRayJob.from_flags(
        image=args.image, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, memory_per_worker=args.memory_per_worker,
        head_cpus=args.head_cpus, head_memory=args.head_memory, pvc=args.pvc,
        pvc_mount=args.pvc_mount, token_secret=args.token_secret, env_secret=args.env_secret,
        service_account=args.service_account, namespace=args.namespace, queue=args.queue,
        backoff_limit=args.backoff_limit, ttl=args.ttl, ray_args=args.ray_args)
    opts = job_options(_run_options(args), local_inputs=False)
    _write(rayjob_yaml(render_rayjob(job, opts), opts), args.out, "RayJob manifest")
    return 0
