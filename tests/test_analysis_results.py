"""Reading results from disk: per-trial rows (what the searcher saw), per-run rows (one per trial
and seed, what intervals are computed from), and the rule that one run counts once."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from analysis.results import collect_epochs, collect_runs, collect_trials
from analysis.summary import best_configuration, summarise

CONFIG = {"loss": "ce", "batch_size": 32, "depth": 3, "width": 64, "dropout": 0.0, "lr": 1e-3,
          "epochs": 2}


def _result(epoch: int, seeds: list[int], per_seed: dict[str, list[float]],
            config: dict[str, Any]) -> dict[str, Any]:
    mean = {k: sum(v) / len(v) for k, v in per_seed.items()}
    return {**mean, "epoch": epoch, "seeds": seeds, "seed": seeds[0],
            "seed_metrics": per_seed, "trial_id": config["_id"],
            "config": {k: v for k, v in config.items() if k != "_id"}}


def _trial(exp: Path, name: str, config: dict[str, Any], results: list[dict[str, Any]]) -> None:
    folder = exp / f"train_trial_{name}_00000_0_x"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(
        {k: v for k, v in config.items() if k != "_id"}))
    (folder / "result.json").write_text("\n".join(json.dumps(r) for r in results) + "\n")


def _stacked(exp: Path, name: str, seeds: list[int], val: list[float], epochs: int = 2,
             test: list[float] | None = None, **extra: Any) -> None:
    config = {**CONFIG, "seed": seeds[0], "repeats": len(seeds), "_id": name, **extra}
    results = []
    for epoch in range(1, epochs + 1):
        per_seed = {"train_loss": [0.5] * len(seeds), "val_accuracy": [v - (2 - epoch)
                                                                       for v in val],
                    "val_loss": [0.6 - 0.1 * epoch] * len(seeds)}
        if epoch == config["epochs"]:
            per_seed["test_accuracy"] = test or [v - 1 for v in val]
        results.append(_result(epoch, seeds, per_seed, config))
    _trial(exp, name, config, results)


def test_one_row_per_trial_and_one_per_seed(tmp_path: Path) -> None:
    _stacked(tmp_path, "a", [0, 1, 2], [80.0, 82.0, 90.0])
    trials = collect_trials(tmp_path)
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["status"] == "completed" and row["repeats"] == 3
    assert row["val_accuracy"] == pytest.approx(84.0)  # the seed-mean the searcher saw
    runs = collect_runs(trials=trials)
    assert list(runs["seed"]) == [0, 1, 2] and set(runs["trial_id"]) == {"a"}
    assert list(runs["val_accuracy"]) == [80.0, 82.0, 90.0]
    assert list(runs["test_accuracy"]) == [79.0, 81.0, 89.0]
    assert list(runs["best_val_accuracy"]) == [80.0, 82.0, 90.0]
    assert set(runs["status"]) == {"completed"}
    best = best_configuration(runs, "val_accuracy", "max")
    assert best is not None and best["n_seeds"] == 3 and best["seeds"] == [0, 1, 2]
    assert best["metrics"]["test_accuracy"] == pytest.approx(83.0)
    assert best["ci95"]["test_accuracy"] == pytest.approx(4.3027 * math.sqrt(28) / math.sqrt(3),
                                                          rel=1e-3)
    # the representative is the best seed; the config retrains its whole trial
    assert best["representative_seed"] == 2
    assert best["config"]["seed"] == 0 and best["config"]["repeats"] == 3
    epochs = collect_epochs(tmp_path, per_seed=True)
    assert len(epochs) == 6 and sorted(set(epochs["seed"])) == [0, 1, 2]
    last = epochs[epochs["epoch"] == 2].sort_values("seed")
    assert list(last["val_accuracy"]) == [80.0, 82.0, 90.0]
    assert len(collect_epochs(tmp_path)) == 2  # per trial: the seed-means


def test_same_configuration_and_seed_count_once(tmp_path: Path) -> None:
    # Seeds 1 and 2 ran twice for the same configuration (a second study into the same
    # folder, a retried trial): each counts once, the finished copy kept.
    _stacked(tmp_path, "a", [0, 1, 2], [80.0, 82.0, 90.0])
    _stacked(tmp_path, "b", [1, 2, 3], [10.0, 20.0, 70.0], epochs=1)  # stopped after 1 epoch
    _stacked(tmp_path, "c", [1], [82.0], lr=1e-2)  # another configuration: its own run
    runs = collect_runs(tmp_path)
    assert len(runs) == 7 and runs["duplicate"].sum() == 2
    assert set(runs.loc[runs["duplicate"], "trial_id"]) == {"b"}
    same = runs[(runs["lr"] == 1e-3) & ~runs["duplicate"]]
    assert sorted(same["seed"]) == [0, 1, 2, 3]
    kept = same.set_index("seed")
    assert kept.loc[1, "trial_id"] == "a" and kept.loc[2, "trial_id"] == "a"
    assert kept.loc[3, "trial_id"] == "b"
    assert len(runs[runs["lr"] == 1e-2]) == 1
    summary = summarise(tmp_path)
    assert len(summary["leaderboard"]) == 7 and len(summary["trials"]) == 3
    best = summary["best"]
    assert best is not None and best["seeds"] == [0, 1, 2]  # seed 3 only ran one epoch
    assert best["metrics"]["val_accuracy"] == pytest.approx(84.0)


def test_a_diverged_seed_is_its_own_run(tmp_path: Path) -> None:
    config = {**CONFIG, "epochs": 1, "seed": 0, "repeats": 2, "_id": "d"}
    per_seed = {"train_loss": [0.4, math.nan], "val_accuracy": [75.0, math.nan],
                "test_accuracy": [74.0, 50.0], "diverged": [0.0, 1.0]}
    _trial(tmp_path, "d", config, [_result(1, [0, 1], per_seed, config)])
    trials = collect_trials(tmp_path)
    assert trials.iloc[0]["status"] == "diverged"  # the searcher saw a NaN mean
    runs = collect_runs(trials=trials).set_index("seed")
    assert runs.loc[0, "status"] == "completed" and runs.loc[1, "status"] == "diverged"
    assert runs.loc[1, "reason"] == "train_loss=nan at epoch 1 (seed 1)"
    best = best_configuration(collect_runs(trials=trials), "val_accuracy", "max")
    assert best is not None and best["seeds"] == [0]


def test_results_without_seed_metrics_are_one_run(tmp_path: Path) -> None:
    # Experiments written before trials stacked their seeds: one seed per trial.
    for i, seed in enumerate((0, 1)):
        config = {**CONFIG, "epochs": 1, "seed": seed, "_id": f"old{i}"}
        result = {"val_accuracy": 70.0 + seed, "test_accuracy": 60.0 + seed, "epoch": 1,
                  "seed": seed, "trial_id": f"old{i}", "config": CONFIG | {"seed": seed}}
        _trial(tmp_path, f"old{i}", config, [result])
    runs = collect_runs(tmp_path)
    assert list(runs["seed"]) == [0, 1] and list(runs["test_accuracy"]) == [60.0, 61.0]
    epochs = collect_epochs(tmp_path, per_seed=True)
    assert list(epochs["seed"]) == [0, 1] and list(epochs["val_accuracy"]) == [70.0, 71.0]
    best = best_configuration(runs, "val_accuracy", "max")
    assert best is not None and best["config"]["seed"] == 1 and best["config"]["repeats"] == 1


@pytest.mark.parametrize("reported", [True, False])
def test_validation_accuracy_is_that_of_the_tested_weights(tmp_path: Path,
                                                           reported: bool) -> None:
    # Bug 1: validation loss best at epoch 1 (val 80.0, test 80.2), validation accuracy rising
    # to 86 by epoch 3. The run's val_accuracy is that of the weights tested (epoch 1), from the
    # trial's `kept_*` report or, for older results, read off its history.
    from analysis.report_sections import _validation_test_section

    seeds = [0, 1, 2]
    config = {**CONFIG, "epochs": 3, "seed": 0, "repeats": 3, "_id": "k"}
    results = []
    for epoch, (loss, acc) in enumerate([(0.3, 80.0), (0.4, 83.0), (0.5, 86.0)], 1):
        per_seed = {"train_loss": [0.5] * 3, "val_loss": [loss] * 3,
                    "val_accuracy": [acc - 0.5, acc, acc + 0.5]}
        if epoch == 3:
            per_seed["test_accuracy"] = [79.7, 80.2, 80.7]
            if reported:
                per_seed |= {"kept_epoch": [1.0] * 3, "kept_val_loss": [0.3] * 3,
                             "kept_val_accuracy": [79.5, 80.0, 80.5],
                             "kept_val_auroc": [0.9] * 3}
        results.append(_result(epoch, seeds, per_seed, config))
    _trial(tmp_path, "k", config, results)
    summary = summarise(tmp_path)
    runs = summary["runs"]
    assert list(runs["val_accuracy"]) == [79.5, 80.0, 80.5]
    assert list(runs["last_val_accuracy"]) == [85.5, 86.0, 86.5]
    assert list(runs["kept_epoch"]) == [1, 1, 1]
    assert summary["trials"].iloc[0]["val_accuracy"] == pytest.approx(80.0)
    best = summary["best"]
    assert best["metrics"]["val_accuracy"] == pytest.approx(80.0)
    text = "\n".join(_validation_test_section(best, {}, summary["trials"]))
    assert "gap −0.20 points" in text and "overstates" not in text
    assert "kept_epoch" in summary["leaderboard"] and "last_val_accuracy" in summary["leaderboard"]


def test_report_header_counts_each_run_once(tmp_path: Path) -> None:
    # Bug 3 (the header): runs read twice are counted once, beside the trial count.
    import pandas as pd

    from analysis.report_sections import render_report

    _stacked(tmp_path, "a", [0, 1, 2], [80.0, 82.0, 90.0])
    _stacked(tmp_path, "b", [1, 2, 3], [10.0, 20.0, 70.0], epochs=1)
    summary = summarise(tmp_path)
    text = render_report(summary, [], pd.DataFrame(), {}, [], None, "x")
    assert "- Trials: 2 (" in text
    assert "- Runs (a trial's seeds, each its own run): 4 (" in text
    assert "; 2 copies of another run counted once" in text
