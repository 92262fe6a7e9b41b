"""`study kuberay`'s RayJob manifest, checked against KubeRay's documented RayJob fields, and
its entrypoint run on this machine twice: the second run resumes the first one's experiment.

No Kubernetes runs here. The field lists are the json tags of KubeRay's Go types
(ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go, KubeRay 1.x), so a
misspelt or invented field fails the test rather than being dropped by the API server.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _proc import finished_trials, saved_finished_trials, trial_results
from _slurm import MARKER, stop_marked

from study.cli.main import main

RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "authOptions",
}
AUTH_OPTIONS_FIELDS = {"mode", "secretName"}  # KubeRay 1.5.1+: mode "token"
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts",
                       "rayStartParams", "template", "scaleStrategy"}
WORKER_GROUP_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

SPACE = """\
metric: val_accuracy
mode: max
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
fixed: {loss: ce, batch_size: 2, depth: 1, width: 16, image_size: 16, epochs: 3}
"""


def _manifest(tmp_path: Path, *flags: str) -> dict[str, Any]:
    out = tmp_path / "rayjob.yaml"
    argv = ["kuberay", "--image", "registry.example.org/xray-study:0.1", "--out", str(out),
            *flags]
    assert main(argv) == 0
    text = out.read_text()
    assert text.startswith("# Written by `study kuberay`")
    return yaml.safe_load(text)


def _containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_manifest_has_kuberays_rayjob_structure(tmp_path: Path) -> None:
    job = _manifest(tmp_path, "--name", "Chest_XRay", "--workers", "3", "--gpus-per-worker", "1",
                    "--cpus-per-worker", "8", "--memory-per-worker", "32Gi",
                    "--gpus-per-trial", "0.25", "--pvc", "studies", "--queue", "team-a",
                    "--backoff-limit", "4", "--ttl", "600", "--namespace", "radiology",
                    "--ray-args=--object-store-memory=2000000000")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    name = job["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 47 and name == "chest-xray"
    assert job["metadata"]["namespace"] == "radiology"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["shutdownAfterJobFinishes"] is True
    assert (spec["ttlSecondsAfterFinished"], spec["backoffLimit"]) == (600, 4)
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS and cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS and {"rayStartParams", "template"} <= set(head)
    assert head["rayStartParams"]["num-cpus"] == "0"  # trials only on the workers
    (workers,) = cluster["workerGroupSpecs"]
    assert set(workers) <= WORKER_GROUP_FIELDS and WORKER_GROUP_REQUIRED <= set(workers)
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3
    assert workers["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1",
                                         "object-store-memory": "2000000000"}
    for group in (head, workers):  # KubeRay's rayStartParams is a map of strings
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    # Resources: requests and limits per group, GPUs on the workers only.
    head_c, worker_c = _containers(job)
    assert worker_c["resources"]["requests"] == worker_c["resources"]["limits"] == {
        "cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert head_c["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    # Token authentication from a Secret: KubeRay gives it to every container and the
    # submitter, and uses it itself.
    auth = cluster["authOptions"]
    assert set(auth) <= AUTH_OPTIONS_FIELDS
    assert auth == {"mode": "token", "secretName": "chest-xray-ray-token"}
    # Shared storage: the PVC mounted on every pod, the study writing under the mount.
    for group in (head, workers):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["studies"]["persistentVolumeClaim"] == {"claimName": "studies"}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert set(mounts) <= set(volumes) and mounts["studies"] == "/mnt/studies"
    entry = spec["entrypoint"]
    for words in ("study run --resume-or-start", "--storage-path /mnt/studies",
                  "--shared-storage", "--name Chest_XRay", "--address auto",
                  "--gpus-per-trial 0.25", "--max-failures 3"):
        assert words in entry, entry


def test_bucket_storage_and_a_space_file_travel_in_the_manifest(tmp_path: Path) -> None:
    space = tmp_path / "mine.yaml"
    space.write_text(SPACE)
    job = _manifest(tmp_path, "--name", "xray", "--storage-path", "s3://bucket/studies",
                    "--env-secret", "bucket-keys", "--service-account", "trainer",
                    "--space", str(space))
    head_c, worker_c = _containers(job)
    assert all(m["name"] != "studies" for c in (head_c, worker_c) for m in c["volumeMounts"])
    assert head_c["envFrom"] == worker_c["envFrom"] == [{"secretRef": {"name": "bucket-keys"}}]
    head_pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head_pod["serviceAccountName"] == "trainer"
    env = {e["name"]: e.get("value") for e in head_c["env"]}
    assert env["STUDY_SPACE_YAML"] == SPACE
    entry = job["spec"]["entrypoint"]
    assert entry.startswith('printf "%s\\n" "$STUDY_SPACE_YAML" > /tmp/study-space.yaml && exec ')
    assert "--storage-path s3://bucket/studies" in entry and "--shared-storage" not in entry
    assert "--space /tmp/study-space.yaml" in entry


@pytest.mark.parametrize(("flags", "message"), [
    (["--workers", "0"], "--workers must be a positive whole number, got '0'"),
    (["--gpus-per-worker", "one"], "--gpus-per-worker must be a whole number >= 0"),
    (["--cpus-per-worker", "-2"], "--cpus-per-worker must be a positive number, got '-2'"),
    (["--memory-per-worker", "lots"], "--memory-per-worker must be a Kubernetes memory"),
    (["--backoff-limit", "-1"], "--backoff-limit must be a whole number >= 0, got '-1'"),
    (["--ttl", "1h"], "--ttl must be a whole number >= 0, got '1h'"),
    (["--storage-path", "/results"], "a local path in a pod is seen by that pod only"),
    (["--pvc", "studies", "--storage-path", "/tmp/r"], "not on the volume --pvc studies"),
    (["--pvc", "Studies!"], "--pvc must be a Kubernetes name"),
    (["--data", "data/xray.npz", "--pvc", "s"], "--data data/xray.npz: must be an absolute"),
    (["--gpus-per-trial", "2", "--gpus-per-worker", "1", "--pvc", "s"],
     "--gpus-per-trial 2 is more than a worker's 1 GPUs"),
    (["--image", ""], "--image must name the container image"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        flags: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rayjob.yaml"
    argv = ["kuberay", "--image", "xray-study:0.1", "--out", str(out), *flags]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert captured.out == "" and not out.exists()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict[str, str]]:
    """A one-node Ray started as a RayJob's head is (`ray start --head`, token auth), in its
    own temp folder; its processes and the studies' carry MARKER and are stopped by PID."""
    root = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    port = _free_port()
    env.update({MARKER: str(root), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_ADDRESS": f"127.0.0.1:{port}",  # as the Ray job's entrypoint gets it
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1"})
    try:
        started = subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard=false",
             "--dashboard-port", str(_free_port()), "--temp-dir", str(root / "ray"),
             "--object-store-memory", str(100 * 1024**2), "--disable-usage-stats"],
            env={k: v for k, v in env.items() if k != "RAY_ADDRESS"}, capture_output=True,
            text=True, timeout=120, start_new_session=True)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield {**env, "STUDY_ROOT": str(root)}
    finally:
        left = stop_marked(str(root), grace_s=3.0)
        if not left:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    assert not left, f"Ray processes still running after teardown: {sorted(left)}"


@pytest.mark.slow
def test_entrypoint_run_again_resumes_the_experiment(ray_head: dict[str, str],
                                                     tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("epochs: 3", "epochs: 6"))
    volume = Path(ray_head["STUDY_ROOT"]) / "volume"  # the PVC, here a local folder
    job = _manifest(tmp_path, "--name", "again", "--pvc", "studies", "--pvc-mount", str(volume),
                    "--space", str(space), "--data", "synthetic:size=16,n=300",
                    "--search", "random", "--scheduler", "fifo", "--num-samples", "4",
                    "--checkpoint-every", "1", "--quiet")
    env = {**ray_head, **{e["name"]: e["value"] for e in _containers(job)[0]["env"]}}
    command = ["sh", "-c", job["spec"]["entrypoint"]]
    exp = volume / "again"
    # First submission: stopped (as `ray job stop` does: SIGTERM to its process group) once
    # a trial has finished and Ray's saved experiment state says so.
    logs = tmp_path / "first.log"
    with logs.open("w") as out:
        first = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + 180
    while not (exp.is_dir() and saved_finished_trials(exp)):
        assert first.poll() is None and time.monotonic() < deadline, logs.read_text()[-4000:]
        time.sleep(0.3)
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=120) == 143, logs.read_text()[-4000:]
    assert "Starting the study again" in logs.read_text()
    before = {name: (exp / name / "result.json").read_bytes()
              for name in saved_finished_trials(exp)}
    assert before, trial_results(exp)
    record = (exp / "study.json").read_bytes()
    # The retried submission runs the same entrypoint: it resumes and finishes the study.
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "Resuming the study again" in second.stdout, second.stdout[-3000:]
    assert (exp / "study.json").read_bytes() == record
    results = trial_results(exp)
    assert len(results) == 4 and len(finished_trials(exp)) == 4, sorted(results)
    for name, content in before.items():  # finished before the stop: not run again
        assert (exp / name / "result.json").read_bytes() == content, name
    assert (exp / "summary" / "leaderboard.csv").is_file()
