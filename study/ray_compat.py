"""Every use of Ray's private names, in one place.

Ray Tune offers no public way to do what these do; each is checked against the Ray version
pinned in pyproject.toml. Elsewhere the project uses Ray's public API only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Ray resolves `_node_ip_address="127.0.0.1"` to the machine's network address (and its
# servers then listen on every interface) unless it believes it runs without a cluster, which
# this variable, read when Ray is imported, and its module constant decide.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only() -> Iterator[None]:
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
                mark in str(seen) for mark in ("InvalidAuthToken", "Unauthenticated")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def cluster_config_max_resources() -> dict[str, float] | None:
    """The autoscaler's bound on the cluster's resources as the GCS reports it (None: none).

    Requires `ray.init` to have been called.
    """
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config()


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


def safe_checkpoint_deletion() -> None:
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


def optuna_trial_open(search: Any, trial_id: str) -> bool:
    """True if Ray's OptunaSearch holds an Optuna trial for `trial_id` not yet told."""
    return trial_id in search._ot_trials and trial_id not in search._completed_trials


def tell_optuna(search: Any, trial_id: str, state: Any) -> None:
    """Tell Optuna how `trial_id` ended (`state`, an optuna TrialState), through OptunaSearch."""
    search._ot_study.tell(search._ot_trials[trial_id], state=state)
    search._completed_trials.add(trial_id)


def optuna_trial(search: Any, trial_id: str) -> Any:
    """The live Optuna trial Ray's OptunaSearch asked for `trial_id` (None if it has none)."""
    return search._ot_trials.get(trial_id)


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
    try:
        from ray.air.constants import EXPR_ERROR_PICKLE_FILE, EXPR_PARAM_PICKLE_FILE
        from ray.tune.callback import CallbackList
        from ray.tune.execution.tune_controller import TuneController
        from ray.tune.impl.tuner_internal import _TUNER_PKL
        from ray.tune.search import BasicVariantGenerator, Searcher
        from ray.tune.search.search_generator import SearchGenerator
        from ray.tune.trainable.trainable import _DICT_CHECKPOINT_FILE_NAME
    except ImportError as exc:
        raise RuntimeError(f"Ray's names for its restore-time pickles moved ({exc}); update "
                           "study.ray_compat.restore_pickle_globs for this Ray version") from exc
    classes = (TuneController, BasicVariantGenerator, SearchGenerator, Searcher, CallbackList)
    return (*(cls.CKPT_FILE_TMPL.format("*") for cls in classes), _TUNER_PKL, "*.pkl",
            f"*/{EXPR_ERROR_PICKLE_FILE}", f"*/{EXPR_PARAM_PICKLE_FILE}",
            f"*/checkpoint_*/{_DICT_CHECKPOINT_FILE_NAME}")
