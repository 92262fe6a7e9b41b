"""Checks that a study can run on the Ray cluster it is pointed at, before any trial starts.

Each check turns a failure that Ray would report late (a driver hanging on an unreachable
address, trials waiting forever for GPUs the cluster cannot have, results scattered over the
local disks of several machines) into one `StudyError` line naming the option, the value and
the fix. The checks are pure functions of plain data (`ray.nodes()` entries, resource dicts);
only `reachable_resources` talks to Ray, and it imports Ray when called, not at import time.

Pass `reachable_resources()` rather than `ray.cluster_resources()` to `check_trial_resources`:
the cluster of `cluster.yaml` has no GPU until the autoscaler adds a worker for a waiting trial.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from study.errors import StudyError

# Ray's default ports: the GCS of a head started by `ray start --head`, and the Ray Client
# server that `ray://` addresses reach.
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001

# `scheme://` at the start of a storage path or address. One letter is not a scheme, so a
# Windows drive (`C:\results`) stays a local path.
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")

# Addresses that `ray.init` resolves itself (find a running cluster, or start a local one).
_PASS_THROUGH_ADDRESSES = frozenset({"auto", "local"})


def is_local_path(storage_path: str) -> bool:
    """Return True if `storage_path` lies on the local disk of whichever node writes to it.

    Plain paths and `file://` URIs are local; any other `scheme://` URI (s3://, gs://, abfs://,
    hdfs://, ...) names storage every node reaches over the network.
    """
    match = _URI_SCHEME.match(storage_path)
    return match is None or match.group(1).lower() == "file"


def alive_hosts(nodes: Sequence[Mapping[str, Any]]) -> set[str]:
    """Return the distinct host addresses of the alive nodes in a `ray.nodes()` list."""
    return {str(node["NodeManagerAddress"]) for node in nodes if node.get("Alive", False)}


def storage_needs_sharing(nodes: Sequence[Mapping[str, Any]], storage_path: str) -> bool:
    """Return True if `storage_path` is local while the alive nodes sit on several hosts.

    Trials write their results and checkpoints under the storage path on the node they run on,
    so a local path on a multi-host cluster leaves each host with part of the experiment.
    Nodes on one host share its disk, so any path works there.
    """
    return is_local_path(storage_path) and len(alive_hosts(nodes)) > 1


def check_storage_path(
    storage_path: str, nodes: Sequence[Mapping[str, Any]], shared_storage: bool
) -> None:
    """Raise `StudyError` if results would be split over the local disks of several hosts.

    `shared_storage` is the user's statement (`--shared-storage`) that the local path is a
    network file system (NFS, EFS) mounted at the same place on every node.
    """
    if shared_storage or not storage_needs_sharing(nodes, storage_path):
        return
    n_hosts = len(alive_hosts(nodes))
    raise StudyError(
        f"--storage-path {storage_path!r} is a local path but the cluster's nodes are on "
        f"{n_hosts} hosts, so each host would keep part of the results; use a bucket URI "
        "(e.g. s3://BUCKET/studies) or, if the path is an NFS mount shared by every node, "
        "pass --shared-storage"
    )


def parse_address(address: str) -> tuple[str, int] | None:
    """Return the (host, port) a Ray address connects to, or None if Ray resolves it itself.

    None for `auto`, `local` and URIs other than `ray://`, which `ray.init` handles. A
    `ray://host` address without a port gets Ray Client's default port. Raise `StudyError` if
    a plain address is not `host:port`.
    """
    if address in _PASS_THROUGH_ADDRESSES:
        return None
    scheme_match = _URI_SCHEME.match(address)
    if scheme_match is not None and scheme_match.group(1).lower() != "ray":
        return None
    is_client = scheme_match is not None
    netloc = address[scheme_match.end() :] if scheme_match is not None else address
    try:
        # urlsplit understands "host:port" and "[ipv6]:port" once given a "//" prefix.
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise StudyError(
            f"--address {address!r} is not host:port, ray://host:port or auto ({exc})"
        ) from None
    if not host:
        raise StudyError(f"--address {address!r} is not host:port, ray://host:port or auto")
    if port is None:
        if not is_client:
            raise StudyError(
                f"--address {address!r} has no port; the head's Ray port is usually "
                f"{host}:{DEFAULT_GCS_PORT}, or use auto on a cluster node"
            )
        port = DEFAULT_CLIENT_PORT
    return host, port


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise `StudyError` if a `host:port` or `ray://host:port` address cannot be reached.

    Opens (and closes) one TCP connection, so a wrong or firewalled address fails within
    `timeout_s` instead of leaving `ray.init` retrying. None, `auto` and `local` pass
    through: `ray.init` resolves them itself.
    """
    if address is None:
        return
    target = parse_address(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = str(exc) or type(exc).__name__
        raise StudyError(
            f"--address {address!r}: cannot connect to {host}:{port} within {timeout_s:g} s "
            f"({reason}); check that the Ray head is running there and the port is reachable "
            "(on a cluster started with `ray up`, submit with `ray job submit` and use "
            "--address auto)"
        ) from None


def check_trial_resources(
    cpus_per_trial: float, gpus_per_trial: float, cluster_resources: Mapping[str, float]
) -> None:
    """Raise `StudyError` if one trial asks for more CPUs or GPUs than the cluster can offer.

    `cluster_resources` is a resource dict as `ray.cluster_resources()` returns it; on an
    autoscaling cluster pass `reachable_resources()`, which adds the nodes the autoscaler can
    still start. Such a trial would otherwise wait forever. GPU fractions are allowed below 1
    (trials share a GPU); above 1 a trial takes whole GPUs, so 1.5 is refused.
    """
    requests = (("--cpus-per-trial", cpus_per_trial), ("--gpus-per-trial", gpus_per_trial))
    for option, value in requests:
        if not math.isfinite(value) or value < 0:
            raise StudyError(f"{option} must be a number >= 0, but got {value:g}")
    if gpus_per_trial > 1 and not float(gpus_per_trial).is_integer():
        raise StudyError(
            f"--gpus-per-trial must be a fraction below 1 or a whole number, but got "
            f"{gpus_per_trial:g}; Ray shares a GPU between trials only in fractions below 1"
        )
    cluster_gpus = float(cluster_resources.get("GPU", 0.0))
    if gpus_per_trial > cluster_gpus:
        raise StudyError(
            f"--gpus-per-trial {gpus_per_trial:g} is more than the cluster's {cluster_gpus:g} "
            "GPUs, so no trial could start; lower it (0 trains on CPUs) or add GPU nodes"
        )
    cluster_cpus = float(cluster_resources.get("CPU", 0.0))
    if cpus_per_trial > cluster_cpus:
        raise StudyError(
            f"--cpus-per-trial {cpus_per_trial:g} is more than the cluster's {cluster_cpus:g} "
            "CPUs, so no trial could start; lower it or add nodes"
        )


def autoscaler_max_resources(launcher_config: Mapping[str, Any]) -> dict[str, float]:
    """Return the resources a cluster-launcher config's worker nodes add at most, per resource.

    `launcher_config` is a `cluster.yaml` as loaded, or the `~/ray_bootstrap_config.yaml` that
    `ray up` leaves on the head node (where Ray has filled in each type's detected
    resources). Each worker type counts `resources` times its `max_workers`, capped by the
    cluster's `max_workers`; a type without stated resources counts nothing.
    """
    head_type = launcher_config.get("head_node_type")
    cluster_max = int(launcher_config.get("max_workers", 0))
    totals: dict[str, float] = {}
    for name, node_type in launcher_config.get("available_node_types", {}).items():
        if name == head_type:
            continue
        count = min(int(node_type.get("max_workers", cluster_max)), cluster_max)
        for resource, amount in (node_type.get("resources") or {}).items():
            totals[resource] = totals.get(resource, 0.0) + count * float(amount)
    return totals


def merge_reachable(
    current: Mapping[str, float], *bounds: Mapping[str, float] | None
) -> dict[str, float]:
    """Return, per resource, the largest of what the cluster has now and each autoscaling bound.

    A bound is None for a cluster without that source of autoscaling information (a laptop,
    `ray start` by hand): there the current resources are all there will be.
    """
    merged = {name: float(amount) for name, amount in current.items()}
    for bound in bounds:
        for name, amount in (bound or {}).items():
            merged[name] = max(merged.get(name, 0.0), float(amount))
    return merged


def reachable_resources(
    bootstrap_config_path: str = "~/ray_bootstrap_config.yaml",
) -> dict[str, float]:
    """Return the resources of the connected Ray cluster, counting nodes it may autoscale to.

    A cluster launched from `cluster.yaml` starts with no GPU worker, so
    `ray.cluster_resources()` alone shows no GPU until a trial asks for one. The autoscaler's
    bound comes from the GCS where the platform reports it (KubeRay, for one), and from the
    config that `ray up` writes on the head node, where `ray job submit` runs the driver.
    Requires `ray.init` to have been called.
    """
    import ray

    from study.core.ray_compat import cluster_config_max_resources

    bounds: list[Mapping[str, float] | None] = [cluster_config_max_resources()]
    path = Path(bootstrap_config_path).expanduser()
    if path.is_file():
        # Written by `ray up` as JSON, which YAML reads too.
        bounds.append(autoscaler_max_resources(yaml.safe_load(path.read_text())))
    return merge_reachable(ray.cluster_resources(), *bounds)
