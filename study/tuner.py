"""Builds and runs the Ray Tune study: search, scheduler, resources, storage, resume.

Only this module (called from the CLI) starts Ray. metric and mode are set in one place,
`TuneConfig`; schedulers and searchers inherit them from there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.data import Dataset, load_data, resolve_spec
from study.errors import StudyError
from study.io import read_trial_states
from study.space import (
    SearchSpace,
    fit_image_size,
    grid_size,
    grid_space,
    load_space,
    optuna_space,
    tune_space,
)

log = logging.getLogger(__name__)

SEARCHES = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "hyperband", "median", "pbt", "fifo")
META_FILE = "study.json"  # the study's own record beside Ray's files; read by analysis/
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
DEFAULT_SAMPLES = 20
PBT_MUTATIONS = {"lr": ("loguniform", 1e-5, 1e-1), "dropout": ("uniform", 0.0, 0.7),
                 "weight_decay": ("loguniform", 1e-6, 1e-2)}
# Options fixed when a study starts: Ray restores its searcher, scheduler, sample count and
# failure policy from the experiment folder, and the space and data must stay those it began
# with. `--resume` takes them from study.json; a different value given with it is refused.
FIXED_ON_RESUME = ("space", "data", "search", "scheduler", "num_samples", "max_epochs",
                   "image_size", "repeats", "seed", "max_concurrent", "max_failures")
# Options a resumed study takes from study.json unless given again (they may change).
INHERITED_ON_RESUME = ("cpus_per_trial", "gpus_per_trial", "checkpoint_every", "num_cpus")
# Ray resolves `_node_ip_address="127.0.0.1"` to the machine's network address (and its
# servers then listen on every interface) unless it believes it runs without a cluster, which
# this variable, read when Ray is imported, and its module constant decide.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RunOptions:
    """Everything `study run` was asked for (the CLI's flags, checked by `check_options`)."""

    space: str = "default"
    data: str = "synthetic"
    search: str | None = None  # None: optuna, or random under PBT (PBT takes no searcher)
    scheduler: str = "asha"
    num_samples: int | None = None  # None: 20 for optuna/random, 1 pass for grid
    max_epochs: int | None = None
    image_size: int | None = None
    repeats: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    storage_path: str = "./results"
    shared_storage: bool = False
    name: str | None = None
    resume: bool = False
    seed: int = 0
    max_failures: int = 0
    checkpoint_every: int = 5
    num_cpus: int | None = None  # local Ray only: CPUs to offer (default: all)
    verbose: int = 1


@dataclass(frozen=True)
class StudyRun:
    """A finished (or interrupted) study: where it lives and how its trials ended."""

    path: Path  # the experiment folder: Ray's files plus study.json and summary/
    num_trials: int
    num_errors: int
    interrupted: bool


def space_path(space: str) -> Path:
    """Resolve `--space`: a file, or the name of a shipped space (`default`, `homework`)."""
    path = Path(space).expanduser()
    if not path.exists() and (SPACES_DIR / f"{space}.yaml").exists():
        path = SPACES_DIR / f"{space}.yaml"
    return path.resolve() if path.exists() else path


def check_options(opts: RunOptions) -> None:
    """Refuse impossible requests with one line naming the flag and the value."""
    if opts.search is not None and opts.search not in SEARCHES:
        raise StudyError(f"--search must be one of {', '.join(SEARCHES)}, got {opts.search!r}")
    if opts.scheduler not in SCHEDULERS:
        raise StudyError(
            f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {opts.scheduler!r}"
        )
    if opts.scheduler == "pbt" and opts.search in ("grid", "optuna"):
        raise StudyError(
            f"--scheduler pbt cannot be combined with --search {opts.search}: PBT evolves a "
            "randomly sampled population itself; use --search random (the default under PBT)"
        )
    for flag, value, low in (("--num-samples", opts.num_samples, 1),
                             ("--repeats", opts.repeats, 1),
                             ("--max-epochs", opts.max_epochs, 1),
                             ("--image-size", opts.image_size, 1),
                             ("--max-concurrent", opts.max_concurrent, 1),
                             ("--max-failures", opts.max_failures, 0),
                             ("--checkpoint-every", opts.checkpoint_every, 0),
                             ("--seed", opts.seed, 0)):
        if value is not None and value < low:
            raise StudyError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--cpus-per-trial", opts.cpus_per_trial),
                        ("--gpus-per-trial", opts.gpus_per_trial)):
        if not math.isfinite(value) or value < 0:
            raise StudyError(f"{flag} must be a number >= 0, got {value:g}")
    if opts.cpus_per_trial == 0 and opts.gpus_per_trial == 0:
        raise StudyError("--cpus-per-trial and --gpus-per-trial are both 0: a trial needs one")
    if opts.name is not None and (not opts.name or "/" in opts.name or "\\" in opts.name
                                  or opts.name in (".", "..")):
        raise StudyError(f"--name must be a plain folder name without path separators, "
                         f"got {opts.name!r}")
    if opts.resume and not opts.name:
        raise StudyError("--resume needs --name: the experiment to continue")


def storage_root(storage_path: str) -> str:
    """Return the storage path as Ray should get it: URIs as they are, local paths absolute."""
    from study.cluster import is_local_path

    if not is_local_path(storage_path):
        return storage_path
    path = storage_path[len("file://"):] if storage_path.startswith("file://") else storage_path
    return str(Path(path).expanduser().resolve())


def check_writable(root: Path) -> None:
    """Fail before any trial starts if results cannot be written under `root`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-check-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(
            f"--storage-path {root}: results cannot be written there ({exc.strerror})"
        ) from None


def check_local_gpus(opts: RunOptions) -> None:
    """For a local Ray, refuse more GPUs per trial than PyTorch sees, before Ray starts.

    A trial trains on CUDA only where PyTorch sees it, so that is the machine's count.
    (On a cluster, `check_trial_resources` asks Ray once connected.)
    """
    if opts.address is not None or opts.gpus_per_trial <= 0:
        return
    import torch

    visible = torch.cuda.device_count()
    if opts.gpus_per_trial > visible:
        raise StudyError(
            f"--gpus-per-trial {opts.gpus_per_trial:g} is more than the {visible} GPU(s) "
            "PyTorch sees on this machine, so no trial could start; lower it (0 trains on "
            "CPUs) or pass the --address of a Ray cluster with GPUs"
        )


def experiment_dir(opts: RunOptions) -> Path | None:
    """The experiment folder of `opts` (None for a remote --storage-path or no --name)."""
    from study.cluster import is_local_path

    if not opts.name or not is_local_path(opts.storage_path):
        return None
    return Path(storage_root(opts.storage_path)) / opts.name


def read_study_meta(exp_dir: Path) -> dict[str, Any]:
    """Return the study.json of an experiment to resume; StudyError if absent or unreadable."""
    if not exp_dir.is_dir():
        raise StudyError(f"--resume --name {exp_dir.name}: no experiment at {exp_dir}")
    meta_path = exp_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise StudyError(
            f"--resume: {meta_path} is missing, so {exp_dir} is not a study that `study run` "
            "can continue"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(
            f"--resume: {meta_path} is corrupted ({type(exc).__name__}); {exp_dir} cannot be "
            "resumed"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("options"), dict):
        raise StudyError(
            f"--resume: {meta_path} is corrupted (no options recorded); {exp_dir} cannot be "
            "resumed"
        )
    return meta


def resume_options(given: dict[str, Any]) -> RunOptions:
    """Return the options of `study run --resume`: the study's own, from its study.json.

    `given` maps RunOptions fields to the values given on the command line, None where a flag
    was left out. Options fixed when the study started (FIXED_ON_RESUME) come from study.json;
    one given with a different value is refused, since Ray would ignore it. The space and data
    are compared by content and source in `run_study`. INHERITED_ON_RESUME options come from
    study.json unless given; the rest (address, storage, verbosity) are this run's.
    """
    defaults = RunOptions()
    if not given.get("name"):
        raise StudyError("--resume needs --name: the experiment to continue")
    probe = RunOptions(name=given["name"],
                       storage_path=given.get("storage_path") or defaults.storage_path)
    check_options(probe)
    exp_dir = experiment_dir(probe)
    meta = read_study_meta(exp_dir) if exp_dir is not None else {"options": {}}
    stored = dict(meta["options"])
    if meta.get("space_file"):
        stored["space"] = meta["space_file"]  # absolute: the study may have run elsewhere
    if meta.get("data"):
        stored["data"] = meta["data"]
    values: dict[str, Any] = {}
    for f in fields(RunOptions):
        value = given.get(f.name)
        if f.name in FIXED_ON_RESUME or f.name in INHERITED_ON_RESUME:
            if value is None and f.name in stored:
                value = stored[f.name]
            elif (f.name in FIXED_ON_RESUME and f.name not in ("space", "data")
                  and f.name in stored and value != stored[f.name]):
                raise StudyError(
                    f"--resume: --{f.name.replace('_', '-')} {value} differs from the study's "
                    f"{stored[f.name]}; a study keeps the options it started with (leave the "
                    "flag out)"
                )
        values[f.name] = getattr(defaults, f.name) if value is None else value
    values["resume"] = True
    return RunOptions(**values)


def prepared_space(opts: RunOptions) -> SearchSpace:
    """Load `--space` and apply `--max-epochs` / `--image-size` and the trial seed."""
    space = load_space(space_path(opts.space))
    overrides: dict[str, Any] = {}
    if opts.max_epochs is not None:
        overrides["epochs"] = opts.max_epochs
    if opts.image_size is not None:
        overrides["image_size"] = opts.image_size
    if "seed" not in space.params and "seed" not in space.fixed:
        overrides["seed"] = opts.seed
    return space.with_fixed(**overrides)


def _epochs(space: SearchSpace) -> int:
    p = space.fixed.get("epochs") or space.params.get("epochs")
    if p is None:
        from study.config import TrialConfig

        return TrialConfig().epochs
    if p.kind != "fixed":
        raise StudyError(f"{space.source}: epochs must be fixed (schedulers need a budget)")
    return int(p.value)


def make_scheduler(opts: RunOptions, space: SearchSpace, epochs: int) -> Any:
    """Return the trial scheduler for `--scheduler` (metric/mode come from TuneConfig)."""
    from ray import tune
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    grace = max(1, epochs // 5)
    if opts.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=grace,
                             reduction_factor=3)
    if opts.scheduler == "hyperband":
        # Asynchronous Hyperband: ASHA over Hyperband's brackets (Li et al., 2020). Ray's
        # synchronous HyperBandScheduler pauses trials at its milestones and, with fewer trials
        # than its brackets hold, ends the study with some of them still PAUSED
        # (ray-project/ray#37605), so `study run` reported it unfinished.
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                             reduction_factor=3, brackets=int(math.log(epochs, 3)) + 1)
    if opts.scheduler == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=grace,
                                  min_samples_required=3)
    if opts.scheduler == "pbt":
        mutations, bounds = {}, []
        for name, (kind, low, high) in PBT_MUTATIONS.items():
            p = space.params.get(name)
            if p is not None and p.kind in ("uniform", "loguniform"):
                kind, low, high = p.kind, p.low, p.high
            mutations[name] = (tune.loguniform(low, high) if kind == "loguniform"
                               else tune.uniform(low, high))
            bounds.append((name, low, high))
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=pbt_interval(epochs),
                                       hyperparam_mutations=mutations, quantile_fraction=0.25,
                                       custom_explore_fn=ClipToBounds(tuple(bounds)))
    return FIFOScheduler()


@dataclass(frozen=True)
class ClipToBounds:
    """PBT's explore step multiplies a value by 0.8 or 1.2 without bounds; keep it in its range.

    Unclipped, a dropout of 0.7 reaches 1.008 after two steps up and the trial fails.
    """

    bounds: tuple[tuple[str, float, float], ...]  # (name, low, high)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, low, high in self.bounds:
            if isinstance(config.get(name), float):
                config[name] = min(max(config[name], low), high)
        return config


def fresh_json_logger() -> Any:
    """Ray's JSON logger, except that a trial restarted by this driver keeps its result.json.

    On every trial start Ray copies result.json back from the storage path, whose copy is
    synced only now and then; a trial paused and restarted within the run (PBT, a retry after
    a failure) so lost the epochs reported since the last sync (ray-project/ray#41668). The local
    copy is the freshest one whenever it exists; after a `--resume` it does not, and the stored
    copy is used as before.
    """
    from ray.tune.logger import JsonLoggerCallback

    class FreshJsonLoggerCallback(JsonLoggerCallback):
        def _restore_from_remote(self, file_name: str, trial: Any) -> None:
            if not Path(trial.local_path, file_name).exists():
                super()._restore_from_remote(file_name, trial)

    return FreshJsonLoggerCallback()


def pbt_interval(epochs: int) -> int:
    """Epochs between PBT perturbations (and so between checkpoints under PBT)."""
    return max(1, epochs // 5)


def _optuna_searcher(space: SearchSpace, opts: RunOptions, num_samples: int) -> Any:
    import optuna

    from study.searcher import StudyOptunaSearch

    startup = max(4, min(10, num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=startup,
                                         multivariate=True, group=True, constant_liar=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Ray never hands TuneConfig's metric/mode to a searcher built with a define-by-run space
    # (it has no param_space to pass), so OptunaSearch takes them from the same SearchSpace.
    return StudyOptunaSearch(space=optuna_space(space), sampler=sampler, metric=space.metric,
                             mode=space.mode)


def build_search(opts: RunOptions, space: SearchSpace, slots: int
                 ) -> tuple[Any, dict[str, Any], int]:
    """Return (search algorithm, param_space, num_samples) for the Tuner."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Repeater

    search = opts.search or ("random" if opts.scheduler == "pbt" else "optuna")
    seeds = list(range(opts.seed, opts.seed + opts.repeats))
    if search == "optuna":
        n = opts.num_samples or DEFAULT_SAMPLES
        searcher = _optuna_searcher(space, opts, n)
        if opts.repeats > 1:
            # Each configuration Optuna proposes trains with `repeats` seeds (seed + index);
            # Optuna is told the mean over them.
            searcher = Repeater(searcher, repeat=opts.repeats, set_index=True)
        limit = opts.max_concurrent or max(slots, 1)
        return ConcurrencyLimiter(searcher, max_concurrent=limit), {}, n * opts.repeats
    if search == "grid":
        param_space = grid_space(space)
        n = opts.num_samples or 1
    else:
        param_space = tune_space(space)
        n = opts.num_samples or DEFAULT_SAMPLES
    if opts.repeats > 1:
        param_space["seed"] = tune.grid_search(seeds)
    # constant_grid_search: a random sample is held fixed across the seed grid (repeats).
    generator = BasicVariantGenerator(random_state=opts.seed, constant_grid_search=True,
                                      max_concurrent=opts.max_concurrent or 0)
    return generator, param_space, n


def expected_trials(opts: RunOptions, space: SearchSpace) -> int:
    """Number of trials the study will run."""
    search = opts.search or ("random" if opts.scheduler == "pbt" else "optuna")
    if search == "grid":
        return grid_size(space) * (opts.num_samples or 1) * opts.repeats
    return (opts.num_samples or DEFAULT_SAMPLES) * opts.repeats


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While starting a local Ray, make it keep 127.0.0.1 instead of the network address.

    Ray turns a loopback `_node_ip_address` into the machine's address unless it thinks
    clusters are disabled; then its GCS, raylet and agents listen on 127.0.0.1 only. The GCS,
    raylet and workers it starts inherit the variable; the driver's settings are restored after,
    so a later `ray.init(address=...)` in this process still finds its own address.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(LOCAL_ONLY_ENV)
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def _init_ray(opts: RunOptions) -> bool:
    """Connect to `--address` or start a local Ray on 127.0.0.1; return True if we started it."""
    import ray

    from study.cluster import check_address

    # Ray adds CSV and TensorBoard loggers beside the JSON one; analysis/ reads only
    # result.json, and on 2 cores the driver's time writing the others (TensorBoard's writer
    # thread and queue) is taken from the trials. Set to 0 to have them back.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tiny trials checkpoint often; Ray would warn about it on every snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    check_address(opts.address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": opts.verbose > 1}
    if opts.address is None:
        with _loopback_only():
            ray.init(num_cpus=opts.num_cpus, _node_ip_address=LOOPBACK, **kwargs)
        node_ip = ray.util.get_node_ip_address()
        if node_ip != LOOPBACK:
            log.warning("the local Ray listens on %s, not only on %s", node_ip, LOOPBACK)
        return True
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=opts.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as exc:
        if _refused_token(exc):
            raise StudyError(
                f"--address {opts.address!r}: the Ray cluster refused this driver's "
                "authentication token (missing, or not the cluster's); set RAY_AUTH_MODE=token "
                "and give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(f"--address {opts.address!r}: cannot connect to Ray ({first})") from None
    return True


def _refused_token(exc: BaseException) -> bool:
    """True if `ray.init` failed on token authentication (no token, or the wrong one).

    Ray raises AuthenticationError itself when RAY_AUTH_MODE=token finds no token; a wrong
    token (or none sent) surfaces only as text inside the ConnectionError's cause.
    """
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, AuthenticationError) or any(
                mark in str(seen) for mark in ("InvalidAuthToken", "Unauthenticated")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _meta(opts: RunOptions, space: SearchSpace, data: Dataset, expected: int) -> dict[str, Any]:
    import ray

    return {
        "command": "study " + " ".join(sys.argv[1:]) if sys.argv[1:] else "study run",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": asdict(opts),
        "search": opts.search or ("random" if opts.scheduler == "pbt" else "optuna"),
        "scheduler": opts.scheduler,
        "space_file": space.source,
        "space": space.raw,
        "searched": space.searched,
        "metric": space.metric,
        "mode": space.mode,
        "epochs": _epochs(space),
        "repeats": opts.repeats,
        "expected_trials": expected,
        "data": data.source,
        "data_image_size": data.image_size,
        "data_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "ray_version": ray.__version__,
    }


def _reporter(space: SearchSpace) -> Any:
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={"epoch": "epoch", "val_accuracy": "val acc", "val_loss": "val loss",
                        "val_auroc": "val AUROC"},
        parameter_columns=space.searched,
        max_progress_rows=12, max_error_rows=3, max_report_frequency=15,
        sort_by_metric=True,
    )


def default_name() -> str:
    """`--name` when none is given: study-<date>-<time>."""
    return datetime.now().strftime("study-%Y%m%d-%H%M%S")


class _NoRestoreHint(logging.Filter):
    """Drops Ray's "Resume experiment with: Tuner.restore(...)": the CLI prints `study run
    --resume ...` instead, which is what a user of this tool runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def _safe_checkpoint_deletion() -> None:
    """Make Ray's removal of a trial's old checkpoints (`num_to_keep`) safe against crashes.

    Ray deletes an old checkpoint as soon as a new one is registered, while the experiment
    state naming it reaches the disk only later. A driver killed in between left a state whose
    latest checkpoint was gone, and `--resume` failed that trial. On the local storage this
    deletion waits until a saved state no longer names the checkpoint (see study.atomic_fs);
    and a checkpoint already gone (one a crashed driver deleted) counts as deleted, where Ray
    logged a traceback.
    """
    try:
        from ray.train._internal import checkpoint_manager
    except ImportError:
        return
    original = getattr(checkpoint_manager, "_delete_fs_path", None)
    if original is None or getattr(original, "study_safe", False):
        return
    from study.atomic_fs import AtomicLocalHandler, defer_until_state_saved

    def delete_now(fs: Any, fs_path: str) -> None:
        try:
            original(fs=fs, fs_path=fs_path)
        except FileNotFoundError:
            log.info("checkpoint %s was already deleted", fs_path)

    def delete(fs: Any, fs_path: str) -> None:
        if isinstance(getattr(fs, "handler", None), AtomicLocalHandler):
            defer_until_state_saved(lambda: delete_now(fs, fs_path))
        else:
            delete_now(fs, fs_path)

    delete.study_safe = True  # type: ignore[attr-defined]
    checkpoint_manager._delete_fs_path = delete


def _remove_unstarted(exp_dir: Path) -> None:
    """Remove a folder this run created if interrupted before Ray saved any experiment state.

    Only the files written before the first snapshot are expected there; anything else keeps
    the folder, so nothing a user made is ever deleted.
    """
    import shutil

    if not exp_dir.is_dir() or any(exp_dir.glob("experiment_state-*.json")):
        return
    expected = (META_FILE, "tuner.pkl", ".validate_storage_marker", "search_gen_state-*",
                "searcher-state-*")
    if all(any(p.match(pattern) for pattern in expected) for p in exp_dir.iterdir()):
        shutil.rmtree(exp_dir, ignore_errors=True)


def run_study(opts: RunOptions) -> StudyRun:
    """Run (or resume) a study and return where its results are."""
    from study.cluster import check_address

    check_options(opts)
    check_address(opts.address)  # an unreachable --address fails before data or Ray load
    space = prepared_space(opts)
    epochs = _epochs(space)
    name = opts.name or default_name()
    root = storage_root(opts.storage_path)
    local = not root.startswith(tuple(f"{s}://" for s in ("s3", "gs", "abfs", "hdfs", "gcs")))
    exp_dir = Path(root) / name
    data_spec = resolve_spec(opts.data)
    if local:
        check_writable(Path(root))
        if opts.resume:
            _check_resumable(exp_dir, space, data_spec)
        elif exp_dir.exists():
            raise StudyError(
                f"--name {name}: {exp_dir} already exists; pass --resume to continue it or "
                "choose another --name (nothing was overwritten)"
            )
    check_local_gpus(opts)
    data = load_data(data_spec)
    space = fit_image_size(space, data.image_size)

    import ray
    from ray import tune

    from study.atomic_fs import atomic_local_filesystem, run_deferred
    from study.cluster import check_storage_path, check_trial_resources, reachable_resources
    from study.trainable import train_trial

    started = _init_ray(opts)
    try:
        check_trial_resources(opts.cpus_per_trial, opts.gpus_per_trial, reachable_resources())
        check_storage_path(root, ray.nodes(), opts.shared_storage)
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // opts.cpus_per_trial) if opts.cpus_per_trial else 0
        if opts.gpus_per_trial:
            gpu_slots = int(resources.get("GPU", 0) // opts.gpus_per_trial)
            slots = min(slots, gpu_slots) if opts.cpus_per_trial else gpu_slots
        checkpoint_every = (pbt_interval(epochs) if opts.scheduler == "pbt"
                            else opts.checkpoint_every)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=data, data_key=uuid.uuid4().hex,
                                 checkpoint_every=checkpoint_every,
                                 threads=max(1, int(opts.cpus_per_trial))),
            {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial},
        )
        # Locally, every file Ray writes to the storage path appears whole or not at all, so
        # a driver killed mid-sync leaves the last experiment state and result.json intact.
        storage_fs = atomic_local_filesystem() if local else None
        run_config = tune.RunConfig(
            name=name,
            storage_path=root,
            storage_filesystem=storage_fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            progress_reporter=_reporter(space),
            verbose=opts.verbose,
            callbacks=[fresh_json_logger()],
        )
        expected = expected_trials(opts, space)
        if opts.resume:
            try:
                tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable,
                                           resume_errored=False, storage_filesystem=storage_fs)
            except Exception as exc:  # Ray raises many kinds for a damaged experiment folder
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise StudyError(f"--resume: {exp_dir} cannot be restored ({first})") from None
        else:
            search_alg, param_space, num_samples = build_search(opts, space, slots)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=space.metric, mode=space.mode, search_alg=search_alg,
                    scheduler=make_scheduler(opts, space, epochs), num_samples=num_samples,
                    reuse_actors=True,
                ),
                run_config=run_config,
            )
            if local:
                exp_dir.mkdir(parents=True, exist_ok=True)
                from study.io import write_json_atomic

                write_json_atomic(exp_dir / META_FILE, _meta(opts, space, data, expected))
        _safe_checkpoint_deletion()
        hint = _NoRestoreHint()
        logging.getLogger("ray.tune.tune").addFilter(hint)
        try:
            # On Ctrl-C, Ray stops the trials, saves the experiment state and returns.
            results = tuner.fit()
        finally:
            logging.getLogger("ray.tune.tune").removeFilter(hint)
        # fit saved the final experiment state: no checkpoint held back is named in it now.
        run_deferred(everything=True)
        statuses = ({k: v["status"] for k, v in read_trial_states(exp_dir).items()}
                    if local else {})
        unfinished = sum(1 for s in statuses.values() if s not in ("TERMINATED", "ERROR"))
        return StudyRun(exp_dir, len(results), len(results.errors),
                        interrupted=unfinished > 0 or len(statuses) < expected)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Ray's own handler was set
        if local and not opts.resume:
            _remove_unstarted(exp_dir)  # so that the same command can simply be run again
        raise
    finally:
        if started:
            ray.shutdown()


def _check_resumable(exp_dir: Path, space: SearchSpace, data_spec: str) -> None:
    """Refuse `--resume` of a missing, damaged, foreign or different experiment."""
    meta = read_study_meta(exp_dir)
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        raise StudyError(
            f"--resume: {exp_dir} holds no Ray Tune experiment state (experiment_state-*.json); "
            "it was stopped before its first trial or is damaged, and cannot be resumed"
        )
    try:
        json.loads(states[-1].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(
            f"--resume: {states[-1]} is corrupted ({type(exc).__name__}); {exp_dir} cannot be "
            "resumed"
        ) from None
    if not (exp_dir / "tuner.pkl").is_file():
        raise StudyError(f"--resume: {exp_dir} holds no tuner.pkl, so Ray cannot restore it")
    _check_trusted(exp_dir)
    # JSON turns integer keys (width.by_depth) into strings: compare the space as stored.
    if meta.get("space") != json.loads(json.dumps(space.raw)):
        raise StudyError(
            f"--resume: the search space {space.source} differs from the one the study "
            f"started with ({meta.get('space_file')}); resume with the same --space, or leave "
            "--space out"
        )
    if meta.get("data") is not None and data_spec != meta["data"]:
        raise StudyError(
            f"--resume: --data {data_spec} differs from the data the study started with "
            f"({meta['data']}); resume with the same --data, or leave --data out"
        )


def _check_trusted(exp_dir: Path) -> None:
    """Refuse to restore Ray's pickled state if another user could have written it.

    Ray's tuner.pkl and searcher state are pickles, which run code when loaded; a study
    resumes only from files that this user (or root) owns and others cannot write.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    # The experiment state is JSON, but Ray keeps parts of each trial in it as pickles.
    pickled = [*exp_dir.glob("*.pkl"), *exp_dir.glob("experiment_state-*.json")]
    for path in (exp_dir, *sorted(pickled)):
        st = path.stat()
        if st.st_mode & 0o002 or (uid is not None and st.st_uid not in (uid, 0)):
            raise StudyError(
                f"--resume: {path} is writable by other users or owned by another user "
                f"(mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}); Ray's saved state is "
                "pickled and runs code when loaded, so only your own experiments are resumed"
            )
