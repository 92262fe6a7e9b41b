"""The leaderboard and the best configuration, chosen on validation only, from results on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.results import CONFIG_KEYS, META_FILE, collect_trials, column_name, read_meta
from analysis.stats import mean_ci
from study.errors import StudyError
from study.space import METRICS, MODES

LEADERBOARD_FIRST = ("trial_id", "status", "epochs", "seed", "node_id")
LEADERBOARD_METRICS = ("val_accuracy", "val_loss", "val_auroc", "best_val_accuracy",
                       "test_accuracy", "test_auroc", "test_sensitivity", "test_specificity")
SUMMARY_METRICS = ("val_accuracy", "val_loss", "val_auroc", "test_accuracy", "test_auroc",
                   "test_sensitivity", "test_specificity")


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The config columns present, seed excluded (a configuration is the same over seeds)."""
    names = [column_name(k) for k in CONFIG_KEYS if k != "seed"]
    return [c for c in names if c in trials.columns]


def leaderboard(trials: pd.DataFrame, metric: str, mode: str, searched: list[str]) -> pd.DataFrame:
    """Return one row per trial, best first by `metric`, with the documented columns."""
    params = [p for p in searched if p in trials.columns]
    rest = [c for c in config_columns(trials) if c not in params]
    columns = [*LEADERBOARD_FIRST, *params, *LEADERBOARD_METRICS, *rest, "reason", "failures",
               "time_total_s", "trial_dir"]
    board = trials.reindex(columns=[c for c in columns if c in trials.columns or c in
                                    (*LEADERBOARD_FIRST, *LEADERBOARD_METRICS)])
    if metric in board:
        board = board.sort_values(metric, ascending=mode == "min", na_position="last")
    return board.reset_index(drop=True)


def best_configuration(trials: pd.DataFrame, metric: str, mode: str) -> dict[str, Any] | None:
    """Pick the configuration with the best mean `metric` over its seeds (validation only).

    Completed trials count first; a partial study with none falls back to stopped ones.
    Diverged and errored trials never count. Returns the config, mean metrics with 95 % CIs,
    the seeds and trial ids, and the trial whose checkpoint best represents it.
    """
    if trials.empty or metric not in trials:
        return None
    usable = trials[trials["status"] == "completed"]
    if usable[metric].notna().sum() == 0:
        usable = trials[trials["status"].isin(["completed", "stopped", "unfinished"])]
    usable = usable[usable[metric].notna()]
    if usable.empty:
        return None
    keys = config_columns(usable)
    groups = usable.groupby(keys, dropna=False, sort=False)
    scores = groups[metric].mean()
    best_key = scores.idxmin() if mode == "min" else scores.idxmax()
    best_key = best_key if isinstance(best_key, tuple) else (best_key,)
    members = usable
    for key, value in zip(keys, best_key, strict=True):
        members = members[members[key].isna()] if _isnan(value) else members[members[key] == value]
    config = {}
    for key, value in zip(keys, best_key, strict=True):
        if _isnan(value):
            continue
        name = "epochs" if key == "planned_epochs" else key
        if isinstance(value, str) and value.startswith("["):
            value = json.loads(value)
        config[name] = value.item() if hasattr(value, "item") else value
    representative = members.sort_values(metric, ascending=mode == "min").iloc[0]
    config["seed"] = int(representative["seed"])
    metrics, ci95 = {}, {}
    for name in SUMMARY_METRICS:
        if name in members and members[name].notna().any():
            stats = mean_ci(members[name].tolist())
            metrics[name] = stats.mean
            if stats.n > 1:
                ci95[name] = stats.half_width
    return {
        "config": config,
        "metrics": metrics,
        "ci95": ci95,
        "n_seeds": int(len(members)),
        "seeds": sorted(int(s) for s in members["seed"]),
        "trial_ids": list(members["trial_id"]),
        "trial_dir": representative["trial_dir"],
    }


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def summarise(exp_dir: Path) -> dict[str, Any]:
    """Collect trials and pick the best configuration; nothing is written."""
    exp_dir = Path(exp_dir)
    meta = read_meta(exp_dir)
    where = exp_dir / META_FILE
    metric = meta.get("metric", "val_accuracy")
    if metric not in METRICS:  # whatever a file says, the test split never selects
        raise StudyError(f"{where}: metric must be one of {', '.join(METRICS)} (validation "
                         f"only), got {metric!r}")
    mode = meta.get("mode", "min" if metric == "val_loss" else "max")
    if mode not in MODES:
        raise StudyError(f"{where}: mode must be max or min, got {mode!r}")
    searched = meta.get("searched", [])
    if not isinstance(searched, list) or not all(isinstance(p, str) for p in searched):
        raise StudyError(f"{where}: searched must be a list of parameter names, got "
                         f"{searched!r:.100}")
    trials = collect_trials(exp_dir)
    return {
        "experiment": str(exp_dir.resolve()),
        "metric": metric,
        "mode": mode,
        "meta": meta,
        "trials": trials,
        "leaderboard": leaderboard(trials, metric, mode, searched),
        "best": best_configuration(trials, metric, mode),
    }
