"""`study.engine.cluster`: storage, address and resource checks on constructed cluster data."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.engine.cluster import (
    autoscaler_max_resources,
    check_address,
    check_storage_path,
    check_trial_resources,
    is_local_path,
    merge_reachable,
    parse_address,
    storage_needs_sharing,
)
from study.errors import StudyError

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _node(host: str, alive: bool = True, gpus: float = 0.0) -> dict[str, Any]:
    """One entry shaped like those `ray.nodes()` returns."""
    return {
        "NodeID": f"{host}-{alive}-{gpus}",
        "NodeManagerAddress": host,
        "Alive": alive,
        "Resources": {"CPU": 4.0, "GPU": gpus} if gpus else {"CPU": 4.0},
    }


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ONE_HOST = [_node("10.0.0.1"), _node("10.0.0.1", gpus=1)]
TWO_HOSTS = [_node("10.0.0.1"), _node("10.0.0.2", gpus=1)]


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("results", True),
        ("/mnt/efs/studies", True),
        ("~/ray_results", True),
        ("file:///tmp/studies", True),
        ("C:\\results", True),
        ("s3://bucket/studies", False),
        ("gs://bucket/studies", False),
        ("abfs://container@account.dfs.core.windows.net/studies", False),
        ("hdfs://namenode:8020/studies", False),
    ],
)
def test_is_local_path(path: str, local: bool) -> None:
    assert is_local_path(path) is local


def test_local_path_on_one_host_is_fine() -> None:
    assert not storage_needs_sharing(ONE_HOST, "/home/ubuntu/results")
    check_storage_path("/home/ubuntu/results", ONE_HOST, shared_storage=False)


def test_local_path_on_two_hosts_is_refused() -> None:
    assert storage_needs_sharing(TWO_HOSTS, "/home/ubuntu/results")
    with pytest.raises(StudyError) as info:
        check_storage_path("/home/ubuntu/results", TWO_HOSTS, shared_storage=False)
    message = str(info.value)
    assert "\n" not in message
    for part in ("--storage-path", "/home/ubuntu/results", "2 hosts", "s3://", "--shared-storage"):
        assert part in message


def test_file_uri_on_two_hosts_is_refused() -> None:
    with pytest.raises(StudyError, match="file:///tmp/studies"):
        check_storage_path("file:///tmp/studies", TWO_HOSTS, shared_storage=False)


def test_bucket_uri_on_two_hosts_is_fine() -> None:
    assert not storage_needs_sharing(TWO_HOSTS, "s3://bucket/studies")
    check_storage_path("s3://bucket/studies", TWO_HOSTS, shared_storage=False)


def test_shared_flag_allows_local_path_on_two_hosts() -> None:
    check_storage_path("/mnt/efs/studies", TWO_HOSTS, shared_storage=True)


def test_dead_nodes_do_not_count_as_hosts() -> None:
    nodes = [_node("10.0.0.1"), _node("10.0.0.2", alive=False)]
    assert not storage_needs_sharing(nodes, "results")
    check_storage_path("results", nodes, shared_storage=False)


@pytest.mark.parametrize("address", [None, "auto", "local", "anyscale://my-cluster"])
def test_addresses_ray_resolves_pass_through(address: str | None) -> None:
    # No connection is attempted: a 0 s timeout would fail any that were.
    check_address(address, timeout_s=0.0)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("head.example.org:6380", ("head.example.org", 6380)),
        ("ray://10.0.0.5:10001", ("10.0.0.5", 10001)),
        ("ray://10.0.0.5", ("10.0.0.5", 10001)),
        ("[::1]:6379", ("::1", 6379)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:notaport", ":6379"])
def test_malformed_address_is_refused(address: str) -> None:
    with pytest.raises(StudyError, match="--address"):
        check_address(address)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_address_fails_fast(scheme: str) -> None:
    address = f"{scheme}127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(StudyError) as info:
        check_address(address, timeout_s=5.0)
    assert time.monotonic() - start < 6.0
    message = str(info.value)
    assert address in message
    assert "\n" not in message


def test_reachable_address_passes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        check_address(f"127.0.0.1:{port}", timeout_s=5.0)


def test_module_does_not_import_ray() -> None:
    # Importing the helpers must stay cheap: the CLI checks input before Ray starts.
    code = "import sys, study.engine.cluster; sys.exit('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=CLUSTER_YAML.parent, check=False)
    assert result.returncode == 0


@pytest.mark.parametrize(
    ("cpus", "gpus", "resources"),
    [
        (1, 0, {"CPU": 2.0}),
        (1, 0.25, {"CPU": 4.0, "GPU": 1.0}),
        (1, 1, {"CPU": 4.0, "GPU": 1.0}),
        (2, 2, {"CPU": 8.0, "GPU": 4.0}),
        (0.5, 0, {"CPU": 1.0}),
    ],
)
def test_trial_resources_that_fit(cpus: float, gpus: float, resources: dict[str, float]) -> None:
    check_trial_resources(cpus, gpus, resources)


def test_gpu_request_on_cpu_cluster_is_refused() -> None:
    with pytest.raises(StudyError) as info:
        check_trial_resources(1, 0.25, {"CPU": 8.0})
    message = str(info.value)
    assert "--gpus-per-trial" in message and "0.25" in message and "0 GPUs" in message


def test_gpu_request_above_cluster_gpus_is_refused() -> None:
    with pytest.raises(StudyError, match=r"--gpus-per-trial 2 .* 1 GPUs"):
        check_trial_resources(1, 2, {"CPU": 8.0, "GPU": 1.0})


def test_fractional_gpu_above_one_is_refused() -> None:
    with pytest.raises(StudyError, match=r"--gpus-per-trial .*1\.5"):
        check_trial_resources(1, 1.5, {"CPU": 8.0, "GPU": 4.0})


def test_cpu_request_above_cluster_cpus_is_refused() -> None:
    with pytest.raises(StudyError, match=r"--cpus-per-trial 16 .* 8 CPUs"):
        check_trial_resources(16, 0, {"CPU": 8.0})


@pytest.mark.parametrize(("cpus", "gpus"), [(-1, 0), (1, -0.5), (float("nan"), 0)])
def test_negative_or_nan_request_is_refused(cpus: float, gpus: float) -> None:
    with pytest.raises(StudyError, match="must be a number >= 0"):
        check_trial_resources(cpus, gpus, {"CPU": 8.0, "GPU": 1.0})


def test_merge_reachable_takes_the_larger_amount() -> None:
    merged = merge_reachable({"CPU": 4.0, "memory": 1e9}, {"CPU": 16.0, "GPU": 4.0}, None)
    assert merged == {"CPU": 16.0, "GPU": 4.0, "memory": 1e9}
    assert merge_reachable({"CPU": 4.0}, None) == {"CPU": 4.0}


def test_autoscaler_bound_of_the_repository_cluster_yaml() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    bound = autoscaler_max_resources(config)
    gpu_type = config["available_node_types"]["worker.gpu"]
    assert bound["GPU"] == gpu_type["max_workers"] * gpu_type["resources"]["GPU"]
    # The freshly launched cluster (a CPU head, no workers) accepts a GPU study...
    head_only = {"CPU": 4.0}
    check_trial_resources(1, 0.25, merge_reachable(head_only, bound))
    # ...which its current resources alone would refuse.
    with pytest.raises(StudyError):
        check_trial_resources(1, 0.25, head_only)


def test_autoscaler_bound_is_capped_by_cluster_max_workers() -> None:
    config = {
        "max_workers": 2,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 8}},
            "gpu": {"max_workers": 10, "resources": {"CPU": 4, "GPU": 1}},
            "detected": {"max_workers": 1, "resources": {}},
        },
    }
    assert autoscaler_max_resources(config) == {"CPU": 8.0, "GPU": 2.0}
