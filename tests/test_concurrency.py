"""Every slot runs trials, even when a worker takes longer to start than a trial takes to run.

With actor reuse, Ray Tune hands a finished trial's worker to the next pending trial; if that
trial had a new worker starting, Tune used to stop it, and with short trials no new worker was
ever up in time: the study ran one trial at a time on 2 slots. Here every worker of the
module's Ray after the first starts 3 s late (its set-up hook sleeps after the real warm-up),
and a study of trials shorter than that must still run two at a time once the late worker is
up (`study.core.ray_compat.keep_starting_workers`).

This module's Ray imports it in its workers (for the set-up hook), so it imports little.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LATE_S = 3.0  # how much later than the first every other worker is up
MARKS_ENV = "STUDY_TEST_WORKER_MARKS"  # the folder where the first worker claims to be first
DATA = "synthetic:size=16,n=1000,n_test=40"  # 2,000 training images: ~0.05 s an epoch
TRIALS, EPOCHS = 16, 10  # trials of ~0.5-1.5 s, shorter than a late worker's start
HANDOVER_S = 0.3  # a slot between two trials: the next one's start, well under a trial


def warm_up_then_start_late() -> None:
    """The set-up hook of this module's Ray: the study's warm-up; then every worker but the
    first to get here sleeps LATE_S."""
    from study.engine.trainable import warm_up

    warm_up()
    try:
        os.close(os.open(Path(os.environ[MARKS_ENV]) / "first", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(LATE_S)


@pytest.fixture(scope="module")
def late_workers_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the module, started as a study starts its own but with the set-up
    hook above (its workers find this module on PYTHONPATH, inherited from this process)."""
    from study.core.ray_compat import shutdown_ray
    from study.engine import ray_session
    from study.engine.options import RunOptions

    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", MARKS_ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent), saved["PYTHONPATH"]]))
    os.environ[MARKS_ENV] = str(tmp_path_factory.mktemp("worker-marks"))
    hook = ray_session.WORKER_SETUP
    ray_session.WORKER_SETUP = f"{Path(__file__).stem}.{warm_up_then_start_late.__name__}"
    try:
        ray_session.init_ray(RunOptions(num_cpus=2))
        yield
    finally:
        shutdown_ray()
        ray_session.WORKER_SETUP = hook
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def trial_results(exp: Path) -> list[list[dict[str, Any]]]:
    """Each trial's reported results, in report order."""
    return [[json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in sorted(exp.glob("*/result.json"))]


def interval(results: list[dict[str, Any]]) -> tuple[float, float]:
    """When a trial ran: from its first report's wall-clock time minus that report's
    `time_this_iter_s` (from the trial's start on its worker) to its last report."""
    return results[0]["reported_at"] - results[0]["time_this_iter_s"], results[-1]["reported_at"]


def running_at(t: float, spans: list[tuple[float, float]], but: int | None = None) -> int:
    return sum(1 for i, (s, e) in enumerate(spans) if i != but and s <= t < e)


@pytest.mark.slow
def test_both_slots_run_trials_though_a_worker_starts_later_than_trials_take(
        late_workers_ray: None, tmp_path: Path) -> None:
    from study.engine.options import RunOptions
    from study.engine.run import run_study

    space = tmp_path / "space.yaml"
    space.write_text(json.dumps({
        "metric": "val_accuracy", "mode": "max",
        "params": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "fixed": {"epochs": EPOCHS, "batch_size": 16, "depth": 1, "width": 16}}))
    run = run_study(RunOptions(space=str(space), data=DATA, search="optuna", scheduler="fifo",
                               num_samples=TRIALS, storage_path=str(tmp_path), name="late",
                               seed=0, verbose=0))
    trials = trial_results(run.path)
    assert run.num_errors == 0 and len(trials) == TRIALS
    assert all(len(t) == EPOCHS for t in trials)

    spans = sorted(interval(t) for t in trials)
    durations = sorted(e - s for s, e in spans)
    assert durations[len(durations) // 2] < LATE_S  # trials shorter than the late start

    # Both workers ran trials: the late one was kept while it started, not stopped for the
    # first worker freeing up (Ray Tune's choice), which left every trial to the first.
    per_worker: dict[int, list[tuple[float, float]]] = {}
    for t in trials:
        per_worker.setdefault(t[0]["pid"], []).append(interval(t))
    assert len(per_worker) == 2, {pid: len(s) for pid, s in per_worker.items()}
    assert min(len(s) for s in per_worker.values()) >= 2, {p: len(s) for p, s in
                                                            per_worker.items()}

    # Once the late worker ran its first trial, the two slots stayed busy: two trials ran at
    # once, and every trial started after that had a second one running beside it within
    # HANDOVER_S (trials of one length end together, and the two next ones start a few
    # milliseconds apart), the study's last trials excepted, which start while the other
    # slot has nothing left to run.
    both_up = max(min(s for s, _ in w) for w in per_worker.values())
    assert max(running_at(s + 1e-6, spans) for s, _ in spans) == 2
    later = [i for i, (s, _) in enumerate(spans) if s > both_up]
    alone = [i for i in later if running_at(spans[i][0], spans, but=i) == 0
             and running_at(spans[i][0] + HANDOVER_S, spans, but=i) == 0]
    assert len(later) >= 2 and len(alone) <= 1, (len(later), alone, spans)
    # Time-weighted: from the late worker's first trial to the last one's end, on average
    # nearly two trials ran at once.
    end = max(e for _, e in spans)
    area = sum(max(0.0, min(e, end) - max(s, both_up)) for s, e in spans)
    assert area / (end - both_up) > 1.5, area / (end - both_up)


# --- the patch itself, on a stand-in for Ray Tune's controller (no Ray started) ----------


class _Manager:
    def __init__(self, placed: set[str]) -> None:
        self.placed = placed

    def is_actor_started(self, actor: str) -> bool:  # Ray's name: resources granted, placed
        return actor in self.placed


class _Controller:
    """The three attributes of Ray Tune's TuneController that the patch reads."""

    def __init__(self, trial_to_actor: dict[str, str], started: set[str],
                 placed: set[str]) -> None:
        self._trial_to_actor = trial_to_actor
        self._started_actors = started
        self._actor_manager = _Manager(placed)


def test_a_trial_keeps_its_starting_worker_and_takes_a_free_one_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution.tune_controller import TuneController

    from study.core import ray_compat

    handed: list[str] = []
    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor",
                        lambda self, trial: handed.append(trial) or True)
    controller = _Controller({"starting": "x", "waiting": "y", "running": "z"},
                             started={"z"}, placed={"x", "z"})
    with ray_compat.keep_starting_workers():
        reuse = TuneController._maybe_reuse_cached_actor
        assert reuse(controller, "starting") is False  # its worker is placed, not yet up
        assert reuse(controller, "waiting") is True  # still waiting for resources
        assert reuse(controller, "running") is True  # its worker is up (a reset)
        assert reuse(controller, "new") is True  # no worker of its own yet
        assert handed == ["waiting", "running", "new"]
        monkeypatch.setattr(ray_compat, "KEEP_STARTING_S", 0.0)
        assert reuse(controller, "starting") is True  # starting for too long: Tune's choice
    assert TuneController._maybe_reuse_cached_actor is not reuse  # undone


def test_a_missing_patched_method_fails_before_anything_is_patched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution.tune_controller import TuneController

    from study.core import ray_compat

    monkeypatch.delattr(TuneController, "_maybe_reuse_cached_actor")
    with pytest.raises(ray_compat.RayCompatError, match="_maybe_reuse_cached_actor"):
        with ray_compat.keep_starting_workers():
            pass
