"""Cluster job files for a study: an sbatch script for Slurm, a RayJob manifest for KubeRay.

Each renderer turns checked `RunOptions` and the job's own settings into text that starts Ray on
the cluster and runs `study run --resume-or-start` on its head, so a requeued or retried job
continues the experiment. Nothing here imports Ray or PyTorch, or runs anything on a cluster.
"""

from __future__ import annotations

from study.engine.jobs.kuberay import KubeRayJob, rayjob_yaml, render_rayjob
from study.engine.jobs.slurm import SlurmJob, render_sbatch

__all__ = ["KubeRayJob", "SlurmJob", "rayjob_yaml", "render_rayjob", "render_sbatch"]
