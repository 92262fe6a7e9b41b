"""Homework comparisons, the rebuilt Optuna study and every plot_* on constructed tables."""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.axes import Axes

from analysis import homework, hpo
from analysis.optuna_study import build_study, space_distributions, write_optuna_db

SPACE = {"metric": "val_accuracy", "mode": "max",
         "params": {"loss": {"choice": ["bce", "ce"]}, "batch_size": {"choice": [16, 32, 128]},
                    "depth": {"choice": [3, 5]}, "lr": {"loguniform": [1e-5, 1e-1]}},
         # as study.json holds it: JSON made the by_depth keys strings
         "fixed": {"width": {"by_depth": {"3": 64, "5": [256, 128, 64, 64, 64]}}, "epochs": 3}}
META = {"space": SPACE, "searched": ["loss", "batch_size", "depth", "lr"],
        "metric": "val_accuracy", "mode": "max", "command": "study run ..."}


def _trials(batch_sizes: tuple[int, ...] = (16, 32, 128), seeds: int = 3) -> pd.DataFrame:
    """A full-factorial grid whose test accuracy rises with batch size and CE, seeded noise."""
    rng = np.random.default_rng(0)
    rows = []
    grid = itertools.product(("bce", "ce"), batch_sizes, (3, 5), range(seeds))
    for i, (loss, batch, depth, seed) in enumerate(grid):
        acc = 70 + batch / 16 + (2 if loss == "ce" else 0) + rng.normal(0, 0.5)
        rows.append({"trial_id": f"abcde_{i:05d}", "status": "completed", "reason": "",
                     "epochs": 3, "seed": seed, "loss": loss, "batch_size": batch,
                     "depth": depth, "width": 64 if depth == 3 else "[256, 128, 64, 64, 64]",
                     "lr": 1e-3 * (1 + seed), "val_accuracy": acc + 1,
                     "best_val_accuracy": acc + 2, "test_accuracy": acc,
                     "trial_dir": f"train_trial_abcde_{i:05d}"})
    return pd.DataFrame(rows)


def _epochs(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in trials.itertuples():
        for epoch in range(1, 4):
            rows.append({"trial_id": row.trial_id, "epoch": epoch,
                         "val_accuracy": row.val_accuracy - (3 - epoch),
                         "train_accuracy": row.val_accuracy - 5 + epoch,
                         "train_loss": 1 / epoch, "val_loss": 1.1 / epoch})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def _png(ax: Axes) -> bytes:
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_comparison_holds_other_factors_at_the_baseline() -> None:
    comparison = homework.select_comparison(_trials(), "loss")
    assert comparison is not None
    assert comparison.arms == ["bce", "ce"]
    assert comparison.held == {"batch_size": 32, "depth": 3}
    assert set(comparison.trials["batch_size"]) == {32} and set(comparison.trials["depth"]) == {3}
    # lr differs by seed only, so it varies inside each arm: named as marginalised
    assert comparison.marginalised == ["lr"]
    assert "held at the homework's baseline: batch_size = 32, depth = 3" in comparison.note


def test_comparison_marginalises_a_factor_without_the_baseline_value() -> None:
    comparison = homework.select_comparison(_trials(batch_sizes=(16, 128)), "depth")
    assert comparison is not None
    assert comparison.held == {"loss": "ce"}
    assert "batch_size" in comparison.marginalised
    assert len(comparison.trials) == 2 * 2 * 3  # both batch sizes, both depths, 3 seeds
    # the deeper arm's widths come with its depth: part of the arm, not marginalised
    assert "width" not in comparison.marginalised


def test_no_comparison_when_the_factor_does_not_vary() -> None:
    trials = _trials()
    assert homework.select_comparison(trials[trials["depth"] == 3], "depth") is None
    assert homework.select_comparison(trials.drop(columns=["loss"]), "loss") is None


def test_arm_stats_carry_the_homework_numbers_and_a_verdict() -> None:
    comparison = homework.select_comparison(_trials(), "batch_size")
    assert comparison is not None
    stats = homework.collect_arm_stats(comparison)
    assert list(stats["label"]) == ["batch 16", "batch 32", "batch 128"]
    assert list(stats["n"]) == [3, 3, 3]
    assert list(stats["homework_label"]) == ["74 %", '"100 %" (scoring bug)', "72.25 %"]
    result = homework.compare_test_accuracy(stats)
    assert result.test == "repeated-measures" and result.p_value < 0.001  # seeds shared
    assert "highest: batch 128" in result.verdict
    (result,) = homework.adjust_comparisons([result])
    record = homework.comparison_record(comparison, stats, result)
    loaded = json.loads(json.dumps(record))
    assert loaded["arms"][0]["n"] == 3 and loaded["family"] == 1
    assert [(p["a"], p["b"]) for p in loaded["pairs"]] == [
        ("batch 16", "batch 32"), ("batch 16", "batch 128"), ("batch 32", "batch 128")]
    pairs = homework.collect_pairs(comparison, result)
    assert list(pairs.columns) == homework.PAIR_COLUMNS
    row = pairs.iloc[1]  # batch 16 - batch 128: the trials' accuracy rises by batch / 16
    values = stats.set_index("label")["test_values"]
    assert row["difference"] == pytest.approx(np.mean(values["batch 16"])
                                              - np.mean(values["batch 128"]))
    assert row["ci_low"] < row["difference"] < row["ci_high"] < 0
    assert row["p_holm"] == pytest.approx(max(row["p_value"], result.p_adjusted))
    assert row["detectable_80"] > 0 and row["seeds_needed"] >= 2


@pytest.mark.parametrize("status", ["diverged", "stopped", "error"])
def test_a_failed_run_read_twice_is_counted_once(status: str) -> None:
    # Bug 3: a diverged (stopped, errored) seed whose trial is read twice counted twice, while
    # the metrics counted the copy once.
    comparison = homework.select_comparison(_trials(), "loss")
    assert comparison is not None
    failed = comparison.trials.iloc[:1].assign(seed=7, status=status, test_accuracy=math.nan)
    twice = comparison._replace(trials=pd.concat([comparison.trials, failed, failed]))
    stats = homework.collect_arm_stats(twice).set_index("label")
    key = {"diverged": "n_diverged", "stopped": "n_stopped", "error": "n_error"}[status]
    assert stats.loc["BCE", key] == 1 and stats.loc["BCE", "n_duplicate"] == 1
    assert stats.loc["BCE", "n"] == 3
    marked = pd.concat([comparison.trials.assign(duplicate=False),
                        failed.assign(duplicate=False), failed.assign(duplicate=True)])
    stats = homework.collect_arm_stats(comparison._replace(trials=marked)).set_index("label")
    assert stats.loc["BCE", key] == 1 and stats.loc["BCE", "n_duplicate"] == 1


def test_identical_runs_count_once() -> None:
    trials = _trials()
    comparison = homework.select_comparison(trials, "loss")
    assert comparison is not None
    doubled = comparison._replace(trials=pd.concat([comparison.trials,
                                                    comparison.trials.iloc[:2]]))
    stats = homework.collect_arm_stats(doubled)
    assert list(stats["n"]) == [3, 3] and list(stats["n_duplicate"]) == [2, 0]
    reference = homework.collect_arm_stats(comparison)
    assert list(stats["test_mean"]) == pytest.approx(list(reference["test_mean"]))
    # another seed of the same configuration is a new run
    other = comparison.trials.iloc[:1].assign(seed=99, test_accuracy=50.0)
    more = homework.collect_arm_stats(comparison._replace(
        trials=pd.concat([comparison.trials, other])))
    assert list(more["n"]) == [4, 3]


def test_homework_plots_return_axes_and_draw() -> None:
    trials = _trials()
    comparison = homework.select_comparison(trials, "loss")
    assert comparison is not None
    curves = homework.collect_arm_curves(comparison, _epochs(trials))
    assert set(curves["n"]) == {3} and set(curves["epoch"]) == {1, 2, 3}
    ax = homework.plot_arm_curves(curves, "val_accuracy")
    assert isinstance(ax, Axes) and _png(ax).startswith(b"\x89PNG")
    ax = homework.plot_arm_tests(homework.collect_arm_stats(comparison), title="loss")
    assert isinstance(ax, Axes) and _png(ax).startswith(b"\x89PNG")
    fig = homework.plot_comparison_curves(comparison, curves)
    assert len(fig.axes) == 4


def test_space_from_study_json_gives_optuna_distributions() -> None:
    params = space_distributions(META)
    assert list(params) == ["loss", "batch_size", "depth", "lr"]


def test_rebuilt_study_has_every_trial_state_and_value(tmp_path: Path) -> None:
    trials = _trials()
    trials.loc[0, "status"] = "stopped"
    trials.loc[1, ["status", "val_accuracy"]] = ["diverged", math.nan]
    study = build_study(trials, _epochs(trials), META, "unit")
    assert len(study.trials) == len(trials)
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.PRUNED
    assert states[1] == optuna.trial.TrialState.FAIL
    assert study.trials[2].params == {"loss": "bce", "batch_size": 16, "depth": 3,
                                      "lr": pytest.approx(3e-3)}
    assert study.trials[2].intermediate_values[3] == pytest.approx(trials.loc[2, "val_accuracy"])
    done = trials[trials["status"] == "completed"]
    assert study.best_value == pytest.approx(done["val_accuracy"].max())
    path = write_optuna_db(study, tmp_path / "optuna.db")
    loaded = optuna.load_study(study_name="unit", storage=f"sqlite:///{path}")
    assert len(loaded.trials) == len(trials) and loaded.best_value == study.best_value
    assert loaded.user_attrs["metric"] == "val_accuracy"


def test_rebuilt_study_numbers_trials_by_creation_index_under_a_searcher() -> None:
    """Under --search optuna Ray's trial ids are random hex (no `_00012` counter); the creation
    index is in the trial folder's name, and it orders the rebuilt study."""
    trials = _trials(batch_sizes=(16,), seeds=1)  # 4 trials
    hexes = ["f3a9c2d1", "0b12aa34", "c0ffee00", "11aa22bb"]  # created in this order
    trials["trial_id"] = hexes
    trials["trial_dir"] = [f"train_trial_{h}_{i + 1}_batch_size=16,depth=3_2026-11-27_23-00-0{i}"
                           for i, h in enumerate(hexes)]
    shuffled = trials.iloc[[2, 0, 3, 1]].reset_index(drop=True)  # as read from disk
    study = build_study(shuffled, _epochs(shuffled), META, "order")
    assert [t.user_attrs["trial_id"] for t in study.trials] == hexes
    history = hpo.collect_history(study)
    assert list(history["trial_id"]) == hexes
    assert list(history["number"]) == [0, 1, 2, 3]


def test_hpo_collectors_and_plots() -> None:
    trials = _trials()
    study = build_study(trials, _epochs(trials), META, "unit")
    history = hpo.collect_history(study)
    assert history["best_so_far"].is_monotonic_increasing
    assert history["best_so_far"].iloc[-1] == pytest.approx(study.best_value)
    importance = hpo.collect_importance(study)
    assert set(importance["param"]) == {"loss", "batch_size", "depth", "lr"}
    params = hpo.collect_params(study)
    dists = hpo.param_distributions(study)
    axes = [hpo.plot_history(history, "val_accuracy"), hpo.plot_importance(importance),
            hpo.plot_parallel(params, dists, "val_accuracy"),
            *(hpo.plot_param_scatter(params, n, d, "val_accuracy") for n, d in dists.items()),
            hpo.plot_learning_curves(_epochs(trials), trials, "val_accuracy")]
    for ax in axes:
        assert isinstance(ax, Axes) and _png(ax).startswith(b"\x89PNG")


def test_importance_with_too_few_trials_says_so() -> None:
    trials = _trials().head(3)
    study = build_study(trials, _epochs(trials), META, "few")
    importance = hpo.collect_importance(study)
    assert importance.empty and "too few finished trials (3)" in importance.attrs["note"]
    ax = hpo.plot_importance(importance)
    assert "too few" in ax.texts[0].get_text()
