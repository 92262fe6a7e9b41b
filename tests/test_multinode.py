"""A real two-node Ray cluster on this machine, started the way users start one, with token auth.

The fixture starts a head and a second node with `ray start ... --node-ip-address 127.0.0.1`,
`RAY_AUTH_MODE=token` and a throwaway token (RAY_AUTH_TOKEN_PATH, so the user's own
~/.ray/auth_token is never read or written), each node in its own `--temp-dir` and its own
process session, so that other Ray instances on the machine are never touched: no `ray stop`,
which would stop every Ray on the machine. Teardown kills exactly the processes of those two
sessions (and anything whose command line names the temp dir) and checks that they are gone.

Ray replaces 127.0.0.1 with the machine's address when it registers a node, so both nodes
share one host address: the storage-path check must accept a local --storage-path.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _proc import signal_pids

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 120

# Batch 2 on 2,000 images: a trial takes about 2 s. Ray Tune gives a trial still waiting for
# its worker to a worker that has just finished one (actor reuse), and a new worker starts
# Python, Ray and PyTorch (2-3 s): trials of milliseconds could all run on the first node up.
SPACE = """\
metric: val_accuracy
mode: max
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
fixed:
  loss: ce
  batch_size: 2
  depth: 1
  width: 16
  image_size: 16
  epochs: 4
"""

# A driver that uses the token: waits for both nodes, then runs the trainable's device choice in
# Ray tasks holding half a GPU or none, and prints what it saw as JSON.
CLUSTER_PROBE = """\
import json, sys, time, ray
ray.init(address=sys.argv[1], include_dashboard=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[2])
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)

@ray.remote
def probe():
    import os
    from study.engine.trainable import trial_device
    ids = [str(i) for i in ray.get_gpu_ids()]
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_ids": ids,
            "device": str(trial_device(ids)), "node": ray.get_runtime_context().get_node_id()}

halves = [probe.options(num_cpus=0, num_gpus=0.5).remote() for _ in range(2)]
none = probe.options(num_cpus=1, num_gpus=0).remote()
print(json.dumps({
    "nodes": [{"id": n["NodeID"], "host": n["NodeManagerAddress"],
               "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0)}
              for n in nodes],
    "half": ray.get(halves), "none": ray.get(none)}))
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _cluster_pids(sessions: set[int], marker: str) -> set[int]:
    """Live (non-zombie) processes in one of `sessions` or whose command line holds `marker`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
        # stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces or parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if state != "Z" and (session in sessions or marker in cmdline):
            found.add(pid)
    return found


def stop_nodes(sessions: set[int], marker: str, grace_s: float = 3.0) -> set[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after `grace_s`; return survivors."""
    signal_pids(_cluster_pids(sessions, marker), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _cluster_pids(sessions, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_pids(_cluster_pids(sessions, marker), signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while (left := _cluster_pids(sessions, marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@dataclass
class TwoNodes:
    address: str  # 127.0.0.1:<GCS port>
    port: int
    env: dict[str, str]  # RAY_AUTH_MODE=token and the token, for drivers
    root: Path  # the temp dir: token, node temp dirs, results
    sessions: set[int]  # process sessions of the two `ray start`s
    nodes: list[dict]  # alive nodes as a driver saw them
    probe: dict  # CLUSTER_PROBE's device checks


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> int:
    """Run `ray start` in a new process session; return the session id (its pid)."""
    with log.open("w") as out:
        proc = subprocess.Popen([str(RAY), "start", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -1
    if rc != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed ({rc}):\n{log.read_text()}")
    return proc.pid


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    # A short path: Ray puts Unix sockets under it (at most 107 bytes each).
    root = Path(tempfile.mkdtemp(prefix="ray2n-", dir="/tmp" if Path("/tmp").is_dir() else None))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_gcs_server_port_wait_time_s")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--object-store-memory", str(100 * 1024**2), "--disable-usage-stats"]
    sessions: set[int] = set()
    marker = str(root)
    try:
        # A free port for the head's dashboard process (started even without the UI): its
        # default, 8265, may belong to another Ray on this machine.
        sessions.add(_ray_start(
            ["--head", "--port", str(port), "--include-dashboard=false",
             "--dashboard-port", str(_free_port()),
             "--num-gpus", "0", "--temp-dir", str(root / "head"), *common],
            env, root / "head.log"))
        # The second node declares one GPU (there is none): Ray schedules and assigns it all
        # the same, which exercises fractional-GPU placement and the trainable's CPU fallback.
        sessions.add(_ray_start(
            ["--address", address, "--num-gpus", "1", "--temp-dir", str(root / "worker"),
             *common], env, root / "worker.log"))
        probed = subprocess.run([sys.executable, "-c", CLUSTER_PROBE, address, "60"], env=env,
                                capture_output=True, text=True, timeout=START_TIMEOUT_S)
        assert probed.returncode == 0, probed.stderr[-3000:]
        probe = json.loads(probed.stdout.strip().splitlines()[-1])
        nodes = probe.pop("nodes")
        assert len(nodes) == 2, nodes
        yield TwoNodes(address, port, env, root, sessions, nodes, probe)
    finally:
        survivors = stop_nodes(sessions, marker)
        stopped = not survivors and not _listening(port)
        if stopped:
            shutil.rmtree(root, ignore_errors=True)
    assert stopped, f"Ray processes still running after teardown: {sorted(survivors)}"


def _study(env: dict[str, str], *args: str, cwd: Path,
           timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_study_runs_trials_on_both_nodes(two_nodes: TwoNodes) -> None:
    space = two_nodes.root / "space.yaml"
    space.write_text(SPACE)
    results = two_nodes.root / "results"
    # One CPU per trial on 1-CPU nodes: two trials run at once, one on each node.
    run = _study(two_nodes.env, "--address", two_nodes.address, "--space", str(space),
                 "--data", "synthetic:size=16,n=1000", "--search", "random",
                 "--scheduler", "fifo", "--num-samples", "4", "--cpus-per-trial", "1",
                 "--storage-path", str(results), "--name", "two-nodes", "--quiet",
                 cwd=two_nodes.root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (results / "two-nodes" / "summary" / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {row["status"] for row in rows} == {"completed"}, rows
    cluster_ids = {node["id"] for node in two_nodes.nodes}
    trial_nodes = {row["node_id"] for row in rows}
    assert trial_nodes == cluster_ids, (trial_nodes, cluster_ids)
    # Both nodes registered with one host address, so the local storage path was accepted.
    assert len({node["host"] for node in two_nodes.nodes}) == 1


def test_gpu_share_sets_cuda_visible_devices_and_falls_back_to_cpu(two_nodes: TwoNodes) -> None:
    out = two_nodes.probe
    gpu_node = next(node["id"] for node in two_nodes.nodes if node["gpus"] == 1)
    for half in out["half"]:
        # Ray hands each half-GPU task GPU 0 of the GPU node and shows it only that GPU; torch
        # has no CUDA here, so the trainable falls back to the CPU.
        assert half["node"] == gpu_node and half["gpu_ids"] == ["0"], half
        assert half["visible"] == "0", half
        assert half["device"] == ("cuda" if torch_cuda() else "cpu"), half
    # No GPU assigned: CPU even if the process could see a GPU (Ray 2.60 leaves
    # CUDA_VISIBLE_DEVICES alone for tasks without GPUs).
    assert out["none"]["gpu_ids"] == [] and out["none"]["device"] == "cpu", out["none"]


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_more_gpus_than_the_cluster_has_is_refused(two_nodes: TwoNodes) -> None:
    # The cluster has one (declared) GPU; a trial asking for two could never start.
    run = _study(two_nodes.env, "--address", two_nodes.address, "--gpus-per-trial", "2",
                 "--data", "synthetic:size=8,n=10", "--num-samples", "1",
                 "--storage-path", str(two_nodes.root / "gpu-refused"), "--quiet",
                 cwd=two_nodes.root, timeout=120)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "--gpus-per-trial 2" in last and "more than the cluster's 1 GPUs" in last, last


def test_wrong_token_is_refused_with_a_clear_error(two_nodes: TwoNodes) -> None:
    env = {k: v for k, v in two_nodes.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's connect retries: ~20 s by default
    run = _study(env, "--address", two_nodes.address, "--data", "synthetic:size=8,n=10",
                 "--num-samples", "1", "--storage-path", str(two_nodes.root / "refused"),
                 "--quiet", cwd=two_nodes.root, timeout=120)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert two_nodes.address in last and "authentication token" in last, last


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_address_fails_fast(scheme: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # In-process, with the CLI's modules already imported, so the time measured is the
    # study's own (in a fresh process, importing torch and Ray takes seconds on a busy machine).
    import ray

    import analysis.report  # noqa: F401
    import study.engine.run  # noqa: F401
    from study.cli.main import main

    address = f"{scheme}127.0.0.1:{_free_port()}"
    start = time.monotonic()
    status = main(["run", "--address", address, "--data", "synthetic:size=8,n=10",
                   "--num-samples", "1", "--storage-path", str(tmp_path / "results"), "--quiet"])
    elapsed = time.monotonic() - start
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and address in err[0] and "cannot connect" in err[0], err
    assert elapsed < 10.0, elapsed
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
