"""`study.core.ray_compat`: every private Ray name it uses exists in the installed Ray, each patch
undone, and a missing one fails with a message naming the Ray version and the name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import ray

from study.core import ray_compat
from study.core.ray_compat import CHECKED_RAY, HOOKS, RayCompatError, hook

ROOT = Path(__file__).resolve().parents[1]


def _optuna_search() -> object:
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)},
                        metric="val_accuracy", mode="max")


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_exists_in_the_installed_ray(name: str) -> None:
    if "OptunaSearch()." in name:  # an attribute of an instance
        attr = name.rsplit(".", 1)[1]
        assert hasattr(_optuna_search(), attr), name
    elif "TuneController()." in name:  # set by a running controller's __init__
        ray_compat.controller_attrs_exist()
    else:
        hook(name)  # RayCompatError if the module or attribute is missing (None is a value:
        #             ray._private.worker._global_node while no Ray is started)


def test_ray_is_pinned_to_the_minor_version_the_hooks_were_checked_against() -> None:
    assert ray.__version__.startswith(f"{CHECKED_RAY}."), ray.__version__
    spec = re.search(r'"(ray\[[^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    major, minor = map(int, CHECKED_RAY.split("."))
    assert re.sub(r"\s", "", spec) == f"ray[tune]>={CHECKED_RAY},<{major}.{minor + 1}", spec


def test_a_missing_hook_fails_naming_the_ray_version_and_the_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.logger.logger import LoggerCallback

    monkeypatch.delattr(LoggerCallback, "_restore_from_remote")
    with pytest.raises(RayCompatError) as caught:
        ray_compat.fresh_json_logger()
    message = str(caught.value)
    assert f"Ray {ray.__version__} has no ray.tune.logger.JsonLoggerCallback." \
           "_restore_from_remote" in message
    assert f"checked against Ray {CHECKED_RAY}.x" in message


def test_a_missing_patched_function_fails_before_anything_is_patched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.train._internal import checkpoint_manager

    monkeypatch.delattr(checkpoint_manager, "_delete_fs_path")
    with pytest.raises(RayCompatError, match="_delete_fs_path"), \
            ray_compat.safe_checkpoint_deletion():
        pass


def test_a_controller_attribute_gone_from_ray_fails_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource",
                        lambda obj: real(obj).replace("self._started_actors", "self._begun"))
    with pytest.raises(RayCompatError, match=r"TuneController\(\)\._started_actors"):
        with ray_compat.keep_starting_workers():
            pass


def test_a_missing_optuna_attribute_fails_loudly() -> None:
    search = _optuna_search()
    del search._completed_trials
    with pytest.raises(RayCompatError, match=r"OptunaSearch\(\)\._completed_trials"):
        ray_compat.optuna_trial_open(search, "t1")


def test_checkpoint_deletion_patch_is_undone_when_the_study_ends() -> None:
    from ray.train._internal import checkpoint_manager

    original = checkpoint_manager._delete_fs_path
    with ray_compat.safe_checkpoint_deletion():
        assert checkpoint_manager._delete_fs_path is not original
    assert checkpoint_manager._delete_fs_path is original
    with pytest.raises(KeyboardInterrupt), ray_compat.safe_checkpoint_deletion():
        raise KeyboardInterrupt
    assert checkpoint_manager._delete_fs_path is original


def test_held_back_deletions_run_at_the_end_only_after_a_normal_exit(tmp_path: Path) -> None:
    from study.core.atomic_fs import atomic_local_filesystem

    fs = atomic_local_filesystem()
    for name, fails in (("kept", True), ("deleted", False)):
        (tmp_path / name).mkdir()
        with pytest.raises(KeyboardInterrupt) if fails else _nothing(), \
                ray_compat.safe_checkpoint_deletion():
            from ray.train._internal import checkpoint_manager

            checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / name))
            assert (tmp_path / name).exists()  # held back: no state saved since
            if fails:
                raise KeyboardInterrupt
    assert (tmp_path / "kept").exists()  # the final state may still name it
    assert not (tmp_path / "deleted").exists()


def test_the_gate_waits_for_two_later_state_writes(tmp_path: Path) -> None:
    from study.core.atomic_fs import atomic_local_filesystem, observe_writes

    gate = ray_compat.StateSavedGate()
    fs = atomic_local_filesystem()
    deleted: list[str] = []
    with observe_writes(gate.file_written):
        import time

        gate.defer(lambda: deleted.append("old"), time.monotonic())
        with fs.open_output_stream(str(tmp_path / "result.json")) as out:
            out.write(b"{}")  # not a state: does not count
        state = tmp_path / "experiment_state-x.json"
        for n in range(2):
            assert deleted == [], f"deleted after {n} state write(s)"
            with fs.open_output_stream(str(state)) as out:
                out.write(b'{"trial_data": []}')
    assert deleted == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment_state-x.json",
                                                          "result.json"]


def test_loopback_only_restores_the_driver_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import ray_constants

    monkeypatch.delenv(ray_compat.LOCAL_ONLY_ENV, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_compat.loopback_only():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        assert os.environ[ray_compat.LOCAL_ONLY_ENV] == "0"
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert ray_compat.LOCAL_ONLY_ENV not in os.environ


def test_refused_token_reads_the_cause_chain() -> None:
    from ray.exceptions import AuthenticationError

    try:
        try:
            raise RuntimeError("rpc error: Unauthenticated: bad token")
        except RuntimeError as inner:
            raise ConnectionError("could not connect") from inner
    except ConnectionError as exc:
        assert ray_compat.refused_token(exc)
    assert ray_compat.refused_token(AuthenticationError("no token"))
    assert not ray_compat.refused_token(ConnectionError("connection refused"))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def test_restore_pickle_globs_come_from_the_installed_ray() -> None:
    """The patterns --resume checks are Ray's own file names for what it unpickles."""
    globs = ray_compat.restore_pickle_globs()
    for pattern in ("tuner.pkl", "experiment_state-*.json", "basic-variant-state-*.json",
                    "searcher-state-*.pkl", "search_gen_state-*.json", "*/error.pkl"):
        assert pattern in globs, globs


@pytest.mark.slow
def test_shutdown_stops_the_monitor_before_ray_stops_the_gcs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # ray.shutdown stops the GCS first; a monitor still running then waits a second on it.
    from study.engine.options import RunOptions
    from study.engine.ray_session import init_ray

    init_ray(RunOptions(num_cpus=1))
    node = hook("ray._private.worker._global_node")
    (monitor,) = [info.process for info in node.all_processes["monitor"]]
    seen: list[bool] = []
    kill_all = type(node).kill_all_processes

    def spy(self, *args, **kwargs):  # ray.shutdown's stopping of every process it started
        seen.append(monitor.poll() is None)
        return kill_all(self, *args, **kwargs)

    monkeypatch.setattr(type(node), "kill_all_processes", spy)
    ray_compat.shutdown_ray()
    assert seen == [False]  # the monitor had exited before Ray stopped the rest
    assert not ray.is_initialized()
