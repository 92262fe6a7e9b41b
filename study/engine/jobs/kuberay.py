"""The RayJob manifest of `study kuberay`: a KubeRay Ray cluster on Kubernetes that runs the study.

The manifest (apiVersion ray.io/v1, kind RayJob) describes a head pod, which runs the study's
driver and no trials, and one worker group with `workers` pods. Token authentication is the
cluster's `authOptions` (KubeRay 1.5.1+): the operator gives every container, and the
submitter pod that runs `ray job submit`, RAY_AUTH_MODE=token and the token from a Secret, and
sends the token itself when it asks the head how the job is doing. Results go to a
ReadWriteMany PVC mounted on every pod or to a bucket URI. The
entrypoint runs `study run --resume-or-start`, so a retried submission (`backoffLimit`, or
Kueue resuming a preempted job) continues the experiment instead of starting over.

Field names follow KubeRay's `ray-operator/apis/ray/v1` (rayjob_types.go, raycluster_types.go).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from study.engine.cluster import is_local_path
from study.engine.jobs.common import (
    check_trials_fit,
    plain_word,
    positive,
    printable,
    ray_start_args,
    study_run_words,
    whole,
)
from study.engine.options import RunOptions
from study.errors import StudyError

RAY_VERSION = "2.60.0"
TOKEN_KEY = "auth_token"  # the key of the token in its Secret
SPACE_ENV = "STUDY_SPACE_YAML"  # the search space file, carried in the head pod's environment
SPACE_FILE = "/tmp/study-space.yaml"  # where the entrypoint writes it back
MAX_NAME = 47  # KubeRay's longest RayJob name (its RayCluster and pods add suffixes)
# A Kubernetes quantity of memory, e.g. 16Gi, 500M.
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P|k)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def rayjob_name(study_name: str) -> str:
    """The study's name as a RayJob name: a DNS-1035 label of at most MAX_NAME characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", study_name.lower())
    name = re.sub(r"^[^a-z]+", "", name)[:MAX_NAME].strip("-")
    return name or "study"


def _label(flag: str, text: str | None) -> str | None:
    if text is not None and (len(text) > 253 or not _DNS_LABEL.match(text)):
        raise StudyError(f"{flag} must be a Kubernetes name (lowercase letters, digits and '-'), "
                         f"got {text!r}")
    return text


def _memory(flag: str, text: str) -> str:
    if not _MEMORY.match(text):
        raise StudyError(f"{flag} must be a Kubernetes memory quantity such as 16Gi, got {text!r}")
    return text


@dataclass(frozen=True)
class KubeRayJob:
    """The Kubernetes side of the job: pods, their resources, storage, secrets, retries."""

    image: str  # with xray-study and Ray 2.60 installed
    workers: int
    cpus_per_worker: float
    gpus_per_worker: int
    memory_per_worker: str
    head_cpus: float
    head_memory: str
    pvc: str | None = None  # a ReadWriteMany claim for the results, mounted on every pod
    pvc_mount: str = "/mnt/studies"
    token_secret: str | None = None  # None: NAME-ray-token
    env_secret: str | None = None  # its keys become every pod's environment (bucket keys)
    service_account: str | None = None
    namespace: str | None = None
    queue: str | None = None  # a Kueue LocalQueue
    backoff_limit: int = 3
    ttl: int = 300
    ray_args: tuple[str, ...] = ()

    @classmethod
    def from_flags(cls, image: str | None, workers: str, cpus_per_worker: str,
                   gpus_per_worker: str, memory_per_worker: str, head_cpus: str,
                   head_memory: str, pvc: str | None = None, pvc_mount: str = "/mnt/studies",
                   token_secret: str | None = None, env_secret: str | None = None,
                   service_account: str | None = None, namespace: str | None = None,
                   queue: str | None = None, backoff_limit: str = "3", ttl: str = "300",
                   ray_args: str = "") -> KubeRayJob:
        """The job of `study kuberay`'s flags (text, as typed), each one checked."""
        if not image or not image.strip() or any(c.isspace() for c in image):
            raise StudyError(f"--image must name the container image with xray-study and Ray "
                             f"{RAY_VERSION} installed (one word), got {image!r}")
        if not PurePosixPath(pvc_mount).is_absolute():
            raise StudyError(f"--pvc-mount must be an absolute path, got {pvc_mount!r}")
        return cls(image=image, workers=whole("--workers", workers),
                   cpus_per_worker=positive("--cpus-per-worker", cpus_per_worker),
                   gpus_per_worker=whole("--gpus-per-worker", gpus_per_worker, 0),
                   memory_per_worker=_memory("--memory-per-worker", memory_per_worker),
                   head_cpus=positive("--head-cpus", head_cpus),
                   head_memory=_memory("--head-memory", head_memory),
                   pvc=_label("--pvc", pvc), pvc_mount=pvc_mount,
                   token_secret=_label("--token-secret", token_secret),
                   env_secret=_label("--env-secret", env_secret),
                   service_account=_label("--service-account", service_account),
                   namespace=_label("--namespace", namespace),
                   queue=plain_word("--queue", queue),
                   backoff_limit=whole("--backoff-limit", backoff_limit, 0),
                   ttl=whole("--ttl", ttl, 0), ray_args=tuple(ray_start_args(ray_args)))

    def storage(self, opts: RunOptions) -> RunOptions:
        """`opts` with the storage path the pods write to; refused if only one pod sees it."""
        path = opts.storage_path
        if not is_local_path(path):
            return opts  # a bucket every pod reaches
        if self.pvc is None:
            raise StudyError(f"--storage-path {path}: a local path in a pod is seen by that pod "
                             "only; pass --pvc CLAIM (a ReadWriteMany volume mounted on every "
                             "pod) or a bucket URI such as s3://BUCKET/studies")
        if opts.storage_path == RunOptions.storage_path:  # not given: the volume itself
            return replace(opts, storage_path=self.pvc_mount)
        folder = PurePosixPath(path.removeprefix("file://"))
        mount = PurePosixPath(self.pvc_mount)
        if folder != mount and mount not in folder.parents:
            raise StudyError(f"--storage-path {path}: not on the volume --pvc {self.pvc} "
                             f"(mounted at {self.pvc_mount}), so only one pod would see it; "
                             f"use a path under {self.pvc_mount}")
        return replace(opts, storage_path=str(folder))

    def check_trials_fit(self, opts: RunOptions) -> None:
        """Refuse trials bigger than one worker pod (the head runs none)."""
        check_trials_fit(opts, self.cpus_per_worker, self.gpus_per_worker, "worker",
                         "--cpus-per-worker", "--gpus-per-worker")


def start_params(words: tuple[str, ...]) -> dict[str, str]:
    """`ray start` words as KubeRay's rayStartParams: `--key value` or `--key=value` as
    key: value, a switch as key: "true"."""
    params: dict[str, str] = {}
    key = None
    for word in words:
        if word.startswith("--"):
            key, has_value, value = word[2:].partition("=")
            params[key] = value if has_value else "true"
            key = None if has_value else key
        elif key is not None:
            params[key] = word
            key = None
        else:
            raise StudyError(f"--ray-args: {word!r} follows no option; give --key value pairs")
    return params


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _space_source(opts: RunOptions) -> tuple[RunOptions, dict[str, str] | None]:
    """A search space file travels in the head pod's environment (the pods cannot read this
    machine's files): the entrypoint writes it back to SPACE_FILE."""
    path = Path(opts.space).expanduser()
    if not path.is_file():  # a shipped space, or a path inside the image or on the volume
        return opts, None
    return replace(opts, space=SPACE_FILE), {"name": SPACE_ENV, "value": path.read_text()}


def entrypoint(opts: RunOptions, writes_space: bool) -> str:
    """The command the head pod runs: start the study, or resume it if it exists."""
    words = study_run_words(opts, shared=is_local_path(opts.storage_path))
    run = shlex.join([*words, "--address", "auto"])
    if not writes_space:
        return run
    return f'printf "%s\\n" "${SPACE_ENV}" > {SPACE_FILE} && exec {run}'


def _container(job: KubeRayJob, name: str, cpus: float, memory: str, gpus: int,
               extra_env: list[dict[str, Any]]) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": _quantity(cpus), "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": name, "image": job.image,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if extra_env:
        container["env"] = extra_env
    if job.env_secret:
        container["envFrom"] = [{"secretRef": {"name": job.env_secret}}]
    if job.pvc:
        container["volumeMounts"].append({"name": "studies", "mountPath": job.pvc_mount})
    return container


def _pod_spec(job: KubeRayJob, container: dict[str, Any]) -> dict[str, Any]:
    # Ray's object store lives in /dev/shm, which a container gets only 64 MB of by default.
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if job.pvc:
        volumes.append({"name": "studies", "persistentVolumeClaim": {"claimName": job.pvc}})
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if job.service_account:
        spec["serviceAccountName"] = job.service_account
    return spec


def render_rayjob(job: KubeRayJob, opts: RunOptions) -> dict[str, Any]:
    """The RayJob (as a dict) that runs the study `opts` (checked by `job_options`)."""
    job.check_trials_fit(opts)
    opts = job.storage(opts)
    name = rayjob_name(str(opts.name))
    job = replace(job, token_secret=job.token_secret or f"{name}-ray-token")
    opts, space_env = _space_source(opts)
    head = _container(job, "ray-head", job.head_cpus, job.head_memory, 0,
                      [space_env] if space_env else [])
    head["ports"] = [{"containerPort": 6379, "name": "gcs-server"},
                     {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}]
    worker = _container(job, "ray-worker", job.cpus_per_worker, job.memory_per_worker,
                        job.gpus_per_worker, [])
    extra = start_params(job.ray_args)
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "xray-study",
                                                         "xray-study/study": name}}
    if job.namespace:
        metadata["namespace"] = job.namespace
    if job.queue:
        metadata["labels"]["kueue.x-k8s.io/queue-name"] = job.queue
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": entrypoint(opts, writes_space=space_env is not None),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": job.ttl,
            "backoffLimit": job.backoff_limit,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token", "secretName": job.token_secret},
                "headGroupSpec": {
                    # No trials on the head: it runs the driver (and the submitter's job).
                    "rayStartParams": {"num-cpus": "0", "num-gpus": "0", **extra},
                    "template": {"spec": _pod_spec(job, head)},
                },
                "workerGroupSpecs": [{
                    "groupName": "trials",
                    "replicas": job.workers, "minReplicas": job.workers,
                    "maxReplicas": job.workers,
                    "rayStartParams": {"num-cpus": _quantity(job.cpus_per_worker),
                                       "num-gpus": str(job.gpus_per_worker), **extra},
                    "template": {"spec": _pod_spec(job, worker)},
                }],
            },
        },
    }


def rayjob_yaml(manifest: dict[str, Any], opts: RunOptions) -> str:
    """The manifest as YAML, after a comment saying what it is and how to use it."""
    name = manifest["metadata"]["name"]
    secret_name = manifest["spec"]["rayClusterSpec"]["authOptions"]["secretName"]
    head = (f"# Written by `study kuberay`: the study {printable(str(opts.name))} as a KubeRay "
            "RayJob.\n"
            f"# Once: kubectl create secret generic {secret_name} \\\n"
            f"#         --from-literal={TOKEN_KEY}=$(python -c 'import secrets; "
            "print(secrets.token_hex(32))')\n"
            f"# Submit: kubectl apply -f THIS_FILE    Watch: kubectl logs -f "
            f"job/{name}   (or kubectl get rayjob {name})\n"
            "# A retried submission resumes the study. To change it, run `study kuberay` "
            "again.\n")
    return head + yaml.safe_dump(manifest, sort_keys=False, width=99)
