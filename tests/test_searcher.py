"""The searcher's live Optuna storage: the real optuna-dashboard server shows a study while it
runs (trials, intermediate values, pruned ones), and a new searcher on the same file continues
the study with every earlier trial seen."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from study.core.names import OPTUNA_DB, OPTUNA_JOURNAL
from study.engine.experiment import live_optuna_file
from study.search.optuna_space import optuna_space
from study.search.searcher import StudyOptunaSearch, live_storage, tpe_sampler
from study.search.space import parse_space

EPOCHS = 4
SPACE = {"metric": "val_accuracy", "mode": "max",
         "params": {"lr": {"loguniform": [1.0e-3, 1.0]}}, "fixed": {"epochs": EPOCHS}}


def make_trainable(seconds: float):
    """Scores 50 + 10 * lr * epoch; a trial with lr < 0.05 stops after one epoch (as a
    scheduler would stop it). A closure: Ray's workers cannot import this test module."""

    def trainable(config: dict) -> None:
        for epoch in range(1, config["epochs"] + 1):
            time.sleep(seconds)
            tune.report({"epoch": epoch, "val_accuracy": 50.0 + 10 * config["lr"] * epoch})
            if config["lr"] < 0.05:
                return

    return trainable


def searcher(db: Path, seed: int = 0) -> StudyOptunaSearch:
    return StudyOptunaSearch(space=optuna_space(parse_space(SPACE)),
                             sampler=tpe_sampler(seed, n_startup_trials=2),
                             metric="val_accuracy", mode="max", storage_file=db,
                             study_name="live",
                             points_to_evaluate=[{"lr": 0.01}, {"lr": 0.5}])



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The real optuna-dashboard on a loopback port, serving the study's live journal file,
    empty, as a user starts it beside a study (`optuna-dashboard <experiment>/<journal>`)."""
    pytest.importorskip("optuna_dashboard")
    db = tmp_path / OPTUNA_JOURNAL
    live_storage(db)  # the file, before the server opens it
    port = free_port()
    command = Path(sys.executable).with_name("optuna-dashboard")  # the [dashboard] extra's
    server = subprocess.Popen(
        [str(command), str(db), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{base}/api/meta")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"optuna-dashboard did not start: {server.stderr.read()[-2000:]!r}"
                    ) from None
                time.sleep(0.3)
        yield base, db
    finally:
        server.terminate()
        server.wait(timeout=30)


class PollDashboard(tune.Callback):
    """Reads the dashboard's API while the study runs (from Tune's own event loop)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: list[dict[str, Any]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result["epoch"] != 2 or self.seen:
            return
        studies = get(f"{self.base}/api/studies")["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "live"]
        detail = get(f"{self.base}/api/studies/{study['study_id']}?after=0")
        self.seen.append({"running_in_ray": [t.trial_id for t in trials
                                             if t.status == "RUNNING"], **detail})


@pytest.mark.slow
def test_dashboard_shows_the_study_while_it_runs(ray_cluster: None, dashboard, tmp_path):
    base, db = dashboard
    poll = PollDashboard(base)
    tuner = tune.Tuner(
        make_trainable(0.3),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher(db), 1),
                                    num_samples=3),
        run_config=tune.RunConfig(name="live", storage_path=str(tmp_path / "results"),
                                  verbose=0, callbacks=[poll]),
    )
    tuner.fit()
    # While the second trial (lr 0.5) was in its second epoch, the dashboard showed the first
    # one pruned, the second running with its first two epochs.
    (seen,) = poll.seen
    by_number = {t["number"]: t for t in seen["trials"]}
    assert by_number[0]["state"] == "Pruned"
    assert by_number[1]["state"] == "Running"
    assert [v["value"] for v in by_number[1]["intermediate_values"]] == pytest.approx(
        [55.0, 60.0])
    ray_ids = {a["key"]: a["value"] for a in by_number[1]["user_attrs"]}
    assert ray_ids["trial_id"] in seen["running_in_ray"]
    # After the study, the file holds all three, numbered in creation order.
    study = optuna.load_study(study_name="live", storage=live_storage(db))
    states = [t.state.name for t in study.trials]
    assert states[:2] == ["PRUNED", "COMPLETE"] and len(states) == 3
    assert study.trials[1].params["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", [OPTUNA_JOURNAL, OPTUNA_DB])  # OPTUNA_DB: made before
def test_a_new_searcher_on_the_file_continues_the_study(tmp_path: Path, name: str) -> None:
    db = tmp_path / name
    first = searcher(db)
    first.set_search_properties(None, None, {})
    for i in range(3):
        first.suggest(f"t{i}")
        first.on_trial_result(f"t{i}", {"val_accuracy": 60.0 + i, "training_iteration": 1})
        first.on_trial_complete(f"t{i}", {"val_accuracy": 60.0 + i, "config/epochs": 1,
                                          "epoch": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        again = StudyOptunaSearch(space=optuna_space(parse_space(SPACE)),
                                  sampler=tpe_sampler(1, n_startup_trials=2),
                                  metric="val_accuracy", mode="max", storage_file=db,
                                  study_name="live")
    again.set_search_properties(None, None, {})
    again.suggest("t3")
    study = optuna.load_study(study_name="live", storage=live_storage(db))
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["RUNNING"]
    assert [t.value for t in study.trials[:3]] == [60.0, 61.0, 62.0]
    assert study.trials[3].user_attrs["trial_id"] == "t3"


def test_an_experiment_made_with_sqlite_keeps_its_live_study_there(tmp_path: Path) -> None:
    assert live_optuna_file(tmp_path) == tmp_path / OPTUNA_JOURNAL
    optuna.create_study(study_name="old", storage=live_storage(tmp_path / OPTUNA_DB))
    assert live_optuna_file(tmp_path) == tmp_path / OPTUNA_DB
