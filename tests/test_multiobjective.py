"""Several objectives and constraints: the searcher tells Optuna every objective and sets each
trial's constraint values; a real `study run` makes a multi-objective, constrained Optuna study
(and a random search with several objectives runs); trials report validation sensitivity and
specificity every epoch."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from study.cli import main as cli
from study.search.optuna_space import optuna_space
from study.search.searcher import StudyOptunaSearch, live_storage, make_sampler, sampler_settings
from study.search.space import parse_space

DATA = "synthetic:size=16,n=200,n_test=40"
SPACE = {"metric": ["val_auroc", "val_sensitivity"], "mode": ["max", "max"],
         "constraints": {"val_sensitivity": ">= 0.90"},
         "params": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "depth": {"int": [1, 2]}},
         "fixed": {"batch_size": 16, "width": 8, "epochs": 2}}
BOUND = "val_sensitivity >= 0.9"
State = optuna.trial.TrialState


# --- the searcher (no Ray cluster) --------------------------------------------------------


def searcher() -> StudyOptunaSearch:
    space = parse_space(SPACE)
    return StudyOptunaSearch(space=optuna_space(space), metric=space.metrics, mode=space.modes,
                             constraints=space.constraints,
                             sampler=optuna.samplers.TPESampler(seed=0))


def last(auroc: float, sens: float, epoch: int = 2) -> dict[str, Any]:
    return {"val_auroc": auroc, "val_sensitivity": sens, "epoch": epoch, "config/epochs": 2}


def test_the_searcher_tells_every_objective_and_sets_the_constraints() -> None:
    search = searcher()
    for tid in ("feasible", "infeasible", "stopped", "nan", "error"):
        assert search.suggest(tid) is not None
    search.on_trial_complete("feasible", last(0.80, 0.95))
    search.on_trial_complete("infeasible", last(0.99, 0.50))  # dominates, but infeasible
    search.on_trial_complete("stopped", last(0.70, 0.92, epoch=1))
    search.on_trial_complete("nan", last(0.9, math.nan))
    search.on_trial_complete("error", None, error=True)
    ot_study = search._ot_study
    assert [d.name for d in ot_study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    feasible, infeasible, stopped, nan, error = ot_study.get_trials(deepcopy=False)
    assert feasible.state == State.COMPLETE and feasible.values == [0.80, 0.95]
    assert feasible.constraints == {BOUND: pytest.approx(0.9 - 0.95)}
    assert infeasible.values == [0.99, 0.50]
    assert infeasible.constraints == {BOUND: pytest.approx(0.4)}
    assert stopped.state == State.PRUNED and stopped.constraints == {
        BOUND: pytest.approx(-0.02)}
    assert nan.state == State.FAIL and nan.constraints == {}  # a NaN sensitivity: no verdict
    assert error.state == State.FAIL
    # Optuna's own front leaves the infeasible trial out, although its values dominate
    assert [t.number for t in ot_study.best_trials] == [feasible.number]


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_the_samplers_learn_from_the_constraints(sampler: str) -> None:
    # past their startup trials TPE and GP model the constraint values themselves (GP fits
    # one regression per constraint): every trial must carry them, finite, and no warning of
    # Optuna's deprecated constraints_func may appear
    space = parse_space(SPACE)
    search = StudyOptunaSearch(space=optuna_space(space), metric=space.metrics,
                               mode=space.modes, constraints=space.constraints,
                               sampler=make_sampler(sampler_settings(sampler, 0, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for i in range(4):
            assert search.suggest(f"t{i}") is not None
            search.on_trial_complete(f"t{i}", last(0.5 + 0.1 * i, 0.85 + 0.03 * i))
    trials = search._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [State.COMPLETE] * 4
    assert [t.constraints[BOUND] for t in trials] == pytest.approx([0.05, 0.02, -0.01, -0.04])
    assert [t.number for t in search._ot_study.best_trials] == [3]


# --- real studies (one Ray for the module) ------------------------------------------------


def run_study(tmp_path: Path, name: str, *args: str) -> Path:
    space = tmp_path / f"{name}.yaml"
    space.write_text(json.dumps(SPACE))
    status = cli.main(["run", "--space", str(space), "--data", DATA, "--storage-path",
                       str(tmp_path), "--name", name, "--quiet", *args])
    assert status == 0
    return tmp_path / name


def results(exp: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial's reported results (result.json), by trial id."""
    out = {}
    for path in exp.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[rows[0]["trial_id"]] = rows
    return out


@pytest.mark.slow
def test_a_two_objective_constrained_study(ray_cluster: None, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    exp = run_study(tmp_path, "mo", "--scheduler", "fifo", "--num-samples", "6",
                    "--max-concurrent", "2")
    printed = capsys.readouterr().out
    meta = json.loads((exp / "study.json").read_text())
    # study.json's metric is the first objective (what TuneConfig and the schedulers judge);
    # the space it keeps gives them all
    assert (meta["metric"], meta["mode"]) == ("val_auroc", "max")
    assert meta["space"]["metric"] == ["val_auroc", "val_sensitivity"]
    runs = results(exp)
    assert len(runs) == 6
    for rows in runs.values():  # sensitivity and specificity, every epoch, as fractions
        assert [r["epoch"] for r in rows] == [1, 2]
        for r in rows:
            assert 0 <= r["val_sensitivity"] <= 1 and 0 <= r["val_specificity"] <= 1
            assert len(r["seed_metrics"]["val_sensitivity"]) == 1
    ot_study = optuna.load_study(study_name="mo",
                                 storage=live_storage(exp / "optuna_journal.log"))
    assert [d.name for d in ot_study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    trials = ot_study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    for t in trials:
        final = runs[t.user_attrs["trial_id"]][-1]
        assert t.values == pytest.approx([final["val_auroc"], final["val_sensitivity"]])
        assert t.constraints == {BOUND: pytest.approx(0.9 - final["val_sensitivity"])}
    feasible = {t.number for t in trials if t.constraints[BOUND] <= 0}
    assert {t.number for t in ot_study.best_trials} <= feasible
    # the summary: each configuration flagged, the best chosen by the stated rule
    board = pd.read_csv(exp / "summary" / "leaderboard.csv", dtype={"trial_id": str})
    assert {"val_sensitivity", "feasible", "pareto"} <= set(board.columns)
    assert (board["feasible"] == (board["val_sensitivity"] >= 0.9)).all()
    front = board[board["pareto"] & board["feasible"]]
    if board["feasible"].any():
        assert board["pareto"].sum() == len(front) >= 1
    else:
        front = board[board["pareto"]]
    best = json.loads((exp / "summary" / "best_config.json").read_text())
    chosen = front.sort_values(["val_auroc", "val_sensitivity"], ascending=False).iloc[0]
    assert best["trial_ids"] == [chosen["trial_id"]]
    assert best["objectives"] == {"val_auroc": "max", "val_sensitivity": "max"}
    assert best["constraints"] == [BOUND] and best["feasible"] == bool(chosen["feasible"])
    report = (exp / "summary" / "report.md").read_text()
    assert "## Objectives, constraints and the Pareto front" in report
    assert f"| {chosen['trial_id']} | **chosen** |" in report
    assert (exp / "summary" / "figures" / "pareto_front.png").stat().st_size > 10_000
    assert report.count("(figures/pareto_front.png)") == 1  # its own section, once
    # the best score seen but not chosen is explained by the rule, not by a trial's status
    top = board.sort_values("val_auroc", ascending=False).iloc[0]
    if top["trial_id"] != chosen["trial_id"]:
        assert "with several objectives or constraints the best configuration is" in printed
        assert "but it is completed" not in printed
        assert ("does not meet the constraints" in printed) == (not bool(top["feasible"]))


@pytest.mark.slow
def test_a_random_search_with_several_objectives_runs(ray_cluster: None,
                                                      tmp_path: Path) -> None:
    exp = run_study(tmp_path, "rand", "--search", "random", "--num-samples", "2")
    assert len(results(exp)) == 2
    board = pd.read_csv(exp / "summary" / "leaderboard.csv")
    assert board["pareto"].sum() >= 1 and "feasible" in board
    assert not (exp / "optuna_journal.log").exists()  # no Optuna study without Optuna
