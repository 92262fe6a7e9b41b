"""Every use of Ray's private names, in one place, each checked against the Ray it was made for.

Ray Tune offers no public way to do what these do. Each hook is named in HOOKS and looked up
through `hook`, which fails with a `RayCompatError` naming the installed Ray and the missing
name instead of running without it; `tests/test_ray_compat.py` checks every one against the
installed Ray, and pyproject.toml pins Ray to the minor version they were checked with
(CHECKED_RAY). The patches of Ray's code are context managers, undone when the study ends.
Elsewhere the project uses Ray's public API only.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from study.errors import StudyError

log = logging.getLogger(__name__)

CHECKED_RAY = "2.60"  # the minor version every hook below was checked against

# Each private name used, with what it is used for.
HOOKS = {
    "ray._private.ray_constants.ENABLE_RAY_CLUSTER":
        "a local Ray that listens on 127.0.0.1 only (loopback_only)",
    "ray._private.worker._global_node":
        "the processes of the Ray this driver started, its monitor stopped first (shutdown_ray)",
    "ray._private.node.Node.kill_monitor":
        "the processes of the Ray this driver started, its monitor stopped first (shutdown_ray)",
    "ray._private.state.state.get_max_resources_from_cluster_config":
        "the autoscaler's bound on the cluster's resources (cluster_config_max_resources)",
    "ray.train._internal.checkpoint_manager._delete_fs_path":
        "checkpoint deletion held back until the experiment state is saved "
        "(safe_checkpoint_deletion)",
    "ray.tune.logger.JsonLoggerCallback._restore_from_remote":
        "keeping a restarted trial's local result.json (fresh_json_logger)",
    "ray.tune.impl.tuner_internal._TUNER_PKL":
        "the restore-time pickles --resume checks (restore_pickle_globs)",
    "ray.tune.trainable.trainable._DICT_CHECKPOINT_FILE_NAME":
        "the restore-time pickles --resume checks (restore_pickle_globs)",
    "ray.tune.search.optuna.OptunaSearch()._ot_trials":
        "the Optuna trial of a Ray trial (optuna_trial_open, tell_optuna)",
    "ray.tune.search.optuna.OptunaSearch()._ot_study":
        "the Optuna study an early-stopped trial is told to as PRUNED (tell_optuna)",
    "ray.tune.search.optuna.OptunaSearch()._completed_trials":
        "the Ray trials already told to Optuna (optuna_trial_open, tell_optuna)",
    "ray.tune.execution.tune_controller.TuneController._maybe_reuse_cached_actor":
        "a trial keeping its starting worker (keep_starting_workers)",
    "ray.tune.execution.tune_controller.TuneController()._trial_to_actor":
        "a trial keeping its starting worker (keep_starting_workers)",
    "ray.tune.execution.tune_controller.TuneController()._started_actors":
        "a trial keeping its starting worker (keep_starting_workers)",
    "ray.tune.execution.tune_controller.TuneController()._actor_manager":
        "a trial keeping its starting worker (keep_starting_workers)",
    "ray.air.integrations.wandb.WandbLoggerCallback._start_logging_actor":
        "W&B's logging actors started without the API key in Ray's runtime_env "
        "(wandb_key_kept_from_runtime_env)",
    "ray.tune.execution.tune_controller.TuneController._trial_task_failure":
        "a trial failed by a refused write, read off the log it writes (fault_logs)",
    "ray.tune.execution.experiment_state._ExperimentCheckpointManager":
        "a refused save of the experiment state, read off the log it writes (fault_logs)",
}
# Ray resolves `_node_ip_address="127.0.0.1"` to the machine's network address (and its
# servers then listen on every interface) unless it believes it runs without a cluster, which
# this variable, read when Ray is imported, and its module constant decide.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Text by which a refused authentication token shows inside a ConnectionError's cause.
TOKEN_REFUSED_MARKS = ("InvalidAuthToken", "Unauthenticated")


class RayCompatError(StudyError):
    """The installed Ray lacks a private name this project relies on."""


def _missing(name: str) -> RayCompatError:
    import ray

    return RayCompatError(
        f"Ray {ray.__version__} has no {name}, which this study uses for {HOOKS[name]}; "
        f"it was checked against Ray {CHECKED_RAY}.x: install ray[tune]=={CHECKED_RAY}.*"
    )


def hook(name: str) -> Any:
    """Return the object at the dotted `name` (a key of HOOKS without `()`); RayCompatError if
    the installed Ray has no such module or attribute."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                raise _missing(name)
            obj = getattr(obj, attr)
        return obj
    raise _missing(name)


def _attr(obj: Any, name: str) -> Any:
    """The private attribute of a Ray object that the HOOKS key `name` ends with."""
    attr = name.rsplit(".", 1)[1]
    if not hasattr(obj, attr):
        raise _missing(name)
    return getattr(obj, attr)


@contextmanager
def loopback_only() -> Iterator[None]:
    """While starting a local Ray, make it keep 127.0.0.1 instead of the network address.

    Ray turns a loopback `_node_ip_address` into the machine's address unless it thinks
    clusters are disabled; then its GCS, raylet and agents listen on 127.0.0.1 only. The GCS,
    raylet and workers it starts inherit the variable; the driver's settings are restored after,
    so a later `ray.init(address=...)` in this process still finds its own address.
    """
    hook("ray._private.ray_constants.ENABLE_RAY_CLUSTER")
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


def shutdown_ray() -> None:
    """`ray.shutdown()`, the autoscaler monitor of a Ray this process started stopped first.

    ray.shutdown stops the GCS before the monitor, whose SIGTERM handler then waits on the
    gone GCS until Ray kills it a second later: a second at the end of every study. The
    monitor of a local Ray has nothing to save; stopped first, nothing waits. (A driver
    connected to a cluster started no monitor, and stops none.)
    """
    import ray

    node = hook("ray._private.worker._global_node")
    if node is not None:
        hook("ray._private.node.Node.kill_monitor")(node, check_alive=False)
    ray.shutdown()


def refused_token(exc: BaseException) -> bool:
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
                mark in str(seen) for mark in TOKEN_REFUSED_MARKS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def cluster_config_max_resources() -> dict[str, float] | None:
    """The autoscaler's bound on the cluster's resources as the GCS reports it (None: none).

    Requires `ray.init` to have been called.
    """
    return hook("ray._private.state.state.get_max_resources_from_cluster_config")()


def fresh_json_logger() -> Any:
    """Ray's JSON logger, except that a trial restarted by this driver keeps its result.json.

    On every trial start Ray copies result.json back from the storage path, whose copy is
    synced only now and then; a trial paused and restarted within the run (PBT, a retry after
    a failure) so lost the epochs reported since the last sync (ray-project/ray#41668). The local
    copy is the freshest one whenever it exists; after a `--resume` it does not, and the stored
    copy is used as before. (An override in a subclass: nothing of Ray's is changed.)
    """
    hook("ray.tune.logger.JsonLoggerCallback._restore_from_remote")
    from ray.tune.logger import JsonLoggerCallback

    class FreshJsonLoggerCallback(JsonLoggerCallback):
        def _restore_from_remote(self, file_name: str, trial: Any) -> None:
            if not Path(trial.local_path, file_name).exists():
                super()._restore_from_remote(file_name, trial)

    return FreshJsonLoggerCallback()


class StateSavedGate:
    """Runs actions once an experiment state saved after they were requested is on disk.

    Ray copies the state to the storage path in a background thread, one copy at a time, and
    saves it just before launching a copy. A write that began after a request may belong to a
    copy launched before it (an older state); the next completed write belongs to a later copy,
    so two state writes that began after the request include one saved after it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state_writes: list[float] = []  # when each completed state write began
        self._deferred: list[tuple[float, Callable[[], None]]] = []  # (requested at, action)

    def defer(self, action: Callable[[], None], now: float) -> None:
        """Run `action` once two state writes that began after `now` have completed."""
        with self._lock:
            self._deferred.append((now, action))

    def file_written(self, path: str, began: float) -> None:
        """An observer for `study.core.atomic_fs.observe_writes`."""
        from study.core.names import STATE_PREFIX

        if not os.path.basename(path).startswith(STATE_PREFIX):
            return
        with self._lock:
            self._state_writes.append(began)
            del self._state_writes[:-100]  # only recent ones matter
        self.run_due()

    def run_due(self, everything: bool = False) -> None:
        """Run the actions whose condition holds (all of them after a final save)."""
        with self._lock:
            due = [a for t, a in self._deferred
                   if everything or sum(1 for w in self._state_writes if w > t) >= 2]
            self._deferred = [(t, a) for t, a in self._deferred if a not in due]
        for action in due:
            action()


@contextmanager
def safe_checkpoint_deletion() -> Iterator[StateSavedGate]:
    """Make Ray's removal of a trial's old checkpoints (`num_to_keep`) safe against crashes.

    Ray deletes an old checkpoint as soon as a new one is registered, while the experiment
    state naming it reaches the disk only later. A driver killed in between left a state whose
    latest checkpoint was gone, and `--resume` failed that trial. Inside this block, a deletion
    on the local storage (`study.core.atomic_fs`) waits until a saved state no longer names the
    checkpoint, and a checkpoint already gone (one a crashed driver deleted) counts as deleted,
    where Ray logged a traceback. Leaving the block normally (after `fit`, which saved the
    final state) runs the deletions still held back; Ray's function is restored either way.
    """
    import time

    from study.core.atomic_fs import AtomicLocalHandler, observe_writes

    hook("ray.train._internal.checkpoint_manager._delete_fs_path")
    from ray.train._internal import checkpoint_manager

    original = checkpoint_manager._delete_fs_path
    gate = StateSavedGate()

    def delete_now(fs: Any, fs_path: str) -> None:
        try:
            original(fs=fs, fs_path=fs_path)
        except FileNotFoundError:
            log.info("checkpoint %s was already deleted", fs_path)

    def delete(fs: Any, fs_path: str) -> None:
        if isinstance(getattr(fs, "handler", None), AtomicLocalHandler):
            gate.defer(lambda: delete_now(fs, fs_path), time.monotonic())
        else:
            delete_now(fs, fs_path)

    checkpoint_manager._delete_fs_path = delete
    try:
        with observe_writes(gate.file_written):
            yield gate
        gate.run_due(everything=True)
    finally:
        checkpoint_manager._delete_fs_path = original


_OT_TRIALS = "ray.tune.search.optuna.OptunaSearch()._ot_trials"
_OT_STUDY = "ray.tune.search.optuna.OptunaSearch()._ot_study"
_COMPLETED = "ray.tune.search.optuna.OptunaSearch()._completed_trials"


def optuna_trial_open(search: Any, trial_id: str) -> bool:
    """True if Ray's OptunaSearch holds an Optuna trial for `trial_id` not yet told."""
    trials, completed = _attr(search, _OT_TRIALS), _attr(search, _COMPLETED)
    return trial_id in trials and trial_id not in completed


def tell_optuna(search: Any, trial_id: str, state: Any) -> None:
    """Tell Optuna how `trial_id` ended (`state`, an optuna TrialState), through OptunaSearch."""
    # skip_if_finished: a live storage may already hold the trial as told (a killed driver's
    # restored searcher state is older than the storage).
    _attr(search, _OT_STUDY).tell(_attr(search, _OT_TRIALS)[trial_id], state=state,
                                  skip_if_finished=True)
    _attr(search, _COMPLETED).add(trial_id)


def optuna_trial(search: Any, trial_id: str) -> Any:
    """The live Optuna trial Ray's OptunaSearch asked for `trial_id` (None if it has none)."""
    return _attr(search, _OT_TRIALS).get(trial_id)


def restore_pickle_globs() -> tuple[str, ...]:
    """Glob patterns (relative to an experiment folder) of every file that Ray unpickles when
    `Tuner.restore` and `fit` resume an experiment, taken from Ray's own names:

    - `tuner.pkl` (`TunerInternal._restore_from_path_or_uri`: pickle);
    - the experiment state (`TuneController.CKPT_FILE_TMPL`), JSON holding cloudpickled fields;
    - the search state: `BasicVariantGenerator`, `SearchGenerator` and `Searcher` (Optuna,
      ConcurrencyLimiter, Repeater) `CKPT_FILE_TMPL`, each read with cloudpickle whatever its
      suffix (`basic-variant-state-*.json` is a pickle);
    - callback state (`CallbackList.CKPT_FILE_TMPL`);
    - each trial's pickled error (`EXPR_ERROR_PICKLE_FILE`, read for the results' errors) and a
      class trainable's dict checkpoint (`_DICT_CHECKPOINT_FILE_NAME`);
    - each trial's `params.pkl` (`EXPR_PARAM_PICKLE_FILE`): Ray 2.60 only writes it, but it is
      the one other pickle in an experiment, so it is held to the same rule.
    """
    from ray.air.constants import EXPR_ERROR_PICKLE_FILE, EXPR_PARAM_PICKLE_FILE
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import BasicVariantGenerator, Searcher
    from ray.tune.search.search_generator import SearchGenerator

    tuner_pkl = hook("ray.tune.impl.tuner_internal._TUNER_PKL")
    dict_checkpoint = hook("ray.tune.trainable.trainable._DICT_CHECKPOINT_FILE_NAME")
    classes = (TuneController, BasicVariantGenerator, SearchGenerator, Searcher, CallbackList)
    return (*(cls.CKPT_FILE_TMPL.format("*") for cls in classes), tuner_pkl, "*.pkl",
            f"*/{EXPR_ERROR_PICKLE_FILE}", f"*/{EXPR_PARAM_PICKLE_FILE}",
            f"*/checkpoint_*/{dict_checkpoint}")


_CONTROLLER = "ray.tune.execution.tune_controller.TuneController"
_REUSE = f"{_CONTROLLER}._maybe_reuse_cached_actor"
_CONTROLLER_ATTRS = tuple(f"{_CONTROLLER}().{a}"
                          for a in ("_trial_to_actor", "_started_actors", "_actor_manager"))
# How long a pending trial waits for its starting worker while another worker is free; past it
# Ray Tune's own choice (the free worker, the starting one stopped) is taken, so a worker that
# never comes up (a set-up hook that hangs) cannot hold a trial back for ever.
KEEP_STARTING_S = 600.0


def controller_attrs_exist() -> None:
    """RayCompatError unless TuneController's __init__ still sets the attributes
    `keep_starting_workers` reads (they exist only on a running controller)."""
    import inspect

    init = inspect.getsource(hook(_CONTROLLER).__init__)
    for name in _CONTROLLER_ATTRS:
        attr = name.rsplit(".", 1)[1]
        if f"self.{attr} " not in init and f"self.{attr}:" not in init:
            raise _missing(name)


@contextmanager
def keep_starting_workers() -> Iterator[None]:
    """Inside this block, Ray Tune keeps a trial's new worker while it starts.

    With actor reuse, when a trial ends Ray Tune caches its worker and hands it to the next
    pending trial (`TuneController._maybe_reuse_cached_actor`). If that trial already has a
    new worker of its own starting (resources granted, the process up and running the set-up
    hook, PyTorch's import and warm-up), Tune stops that worker, and the next trial asks for
    another new one. With trials shorter than a worker's start, every new worker is stopped
    before it is up and a slot never gets a trial. Here a trial whose worker is starting keeps
    it (for up to KEEP_STARTING_S) and the free worker goes to the next pending trial; a trial
    still waiting for resources (no worker started) takes the free worker as before.
    """
    original = hook(_REUSE)  # checked before anything is patched
    controller_attrs_exist()
    controller = hook(_CONTROLLER)
    method = _REUSE.rsplit(".", 1)[1]
    first_kept: dict[Any, float] = {}  # a starting worker: when a trial first kept it
    given_up: set[Any] = set()

    def reuse_cached_actor(self: Any, trial: Any) -> bool:
        actor = self._trial_to_actor.get(trial)
        starting = (actor is not None and actor not in self._started_actors
                    and self._actor_manager.is_actor_started(actor))  # placed, not up
        if starting:
            since = first_kept.setdefault(actor, time.monotonic())
            if time.monotonic() - since < KEEP_STARTING_S:
                return False
            if actor not in given_up:
                given_up.add(actor)
                log.warning("a trial's worker has been starting for %.0f s; the trial "
                            "takes a free worker instead", time.monotonic() - since)
        return original(self, trial)

    setattr(controller, method, reuse_cached_actor)
    try:
        yield
    finally:
        setattr(controller, method, original)


_WANDB_START = "ray.air.integrations.wandb.WandbLoggerCallback._start_logging_actor"
WANDB_KEY_ENV = "WANDB_API_KEY"


@contextmanager
def wandb_key_kept_from_runtime_env() -> Iterator[None]:
    """Inside this block, Ray's W&B logger starts its logging actors without the API key.

    Ray's WandbLoggerCallback copies WANDB_API_KEY into the actors' `runtime_env`, which Ray's
    runtime-env agent writes in plain text into session_*/logs/runtime_env_agent.log (a
    file others may read). The actors run on the driver's node: on a local Ray they inherit
    the key from the environment the driver started Ray with; on a cluster, the node's own
    environment or `wandb login` there provides it (see README).
    """
    original = hook(_WANDB_START)  # checked before anything is patched
    owner = hook(_WANDB_START.rsplit(".", 1)[0])
    method = _WANDB_START.rsplit(".", 1)[1]

    def start_logging_actor(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = os.environ.pop(WANDB_KEY_ENV, None)
        try:
            return original(self, *args, **kwargs)
        finally:
            if key is not None:
                os.environ[WANDB_KEY_ENV] = key

    setattr(owner, method, start_logging_actor)
    try:
        yield
    finally:
        setattr(owner, method, original)


def fault_logs() -> tuple[str, ...]:
    """The loggers to which Ray's run loop logs, with a traceback, a trial's failure
    (TuneController._trial_task_failure) and a failed save of the experiment state (the
    checkpoint manager's): their modules' loggers."""
    names = ("ray.tune.execution.tune_controller.TuneController._trial_task_failure",
             "ray.tune.execution.experiment_state._ExperimentCheckpointManager")
    return tuple(hook(name).__module__ for name in names)
