"""Starting a local Ray on 127.0.0.1, or connecting to the cluster at `--address`."""

from __future__ import annotations

import logging
import os
from typing import Any

from study.core.ray_compat import loopback_only, refused_token
from study.engine.cluster import check_address
from study.engine.options import RunOptions
from study.errors import StudyError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Each worker of the study imports PyTorch and warms it up as it starts (a module path, so a
# remote node imports its own installed `study`).
WORKER_SETUP = "study.engine.trainable.warm_up"


def init_ray(opts: RunOptions) -> bool:
    """Connect to `--address` or start a local Ray on 127.0.0.1; return True if we started it."""
    import ray

    # The engine attaches its logger callbacks itself (the JSON one that keeps a restarted
    # trial's results, TensorBoard's, W&B's and MLflow's when asked for); Ray's automatic ones
    # would add a second JSON logger and a CSV one nobody reads.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tiny trials checkpoint often; Ray would warn about it on every snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    check_address(opts.address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": opts.verbose > 1,
                              "runtime_env": {"worker_process_setup_hook": WORKER_SETUP}}
    if opts.address is None:
        with loopback_only():
            ray.init(num_cpus=opts.num_cpus, _node_ip_address=LOOPBACK, **kwargs)
        node_ip = ray.util.get_node_ip_address()
        if node_ip != LOOPBACK:
            log.warning("the local Ray listens on %s, not only on %s", node_ip, LOOPBACK)
        return True
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=opts.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as exc:
        if refused_token(exc):
            raise StudyError(
                f"--address {opts.address!r}: the Ray cluster refused this driver's "
                "authentication token (missing, or not the cluster's); set RAY_AUTH_MODE=token "
                "and give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(f"--address {opts.address!r}: cannot connect to Ray ({first})") from None
    return True


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials of this size the connected cluster runs at once (now)."""
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 0
    if gpus_per_trial:
        gpu_slots = int(resources.get("GPU", 0) // gpus_per_trial)
        slots = min(slots, gpu_slots) if cpus_per_trial else gpu_slots
    return slots
