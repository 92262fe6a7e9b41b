"""The leaderboard and the best configuration, chosen on validation only, from results on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.pareto import collect_front, mark_leaderboard, objectives_of
from analysis.results import CONFIG_KEYS, collect_runs, collect_trials, column_name, read_meta
from analysis.stats import mean_ci
from analysis.uncertainty import combined_half_width, test_set_ci
from study.core.names import IN_PROGRESS, META_FILE, RunStatus
from study.errors import StudyError
from study.search.space import METRICS, MODES

LEADERBOARD_FIRST = ("trial_id", "status", "epochs", "seed", "node_id")
# The metrics a configuration is summarised by (best_config.json, report.md, `study run`).
SUMMARY_METRICS = ("val_accuracy", "val_loss", "val_auroc", "test_accuracy", "test_auroc",
                   "test_sensitivity", "test_specificity")
# `val_*` are scored on the weights each run tests and exports (its best-validation-loss epoch,
# `kept_epoch`); `last_val_accuracy` is its last epoch's, `best_val_accuracy` its best epoch's.
LEADERBOARD_METRICS = (*SUMMARY_METRICS[:3], "kept_epoch", "last_val_accuracy",
                       "best_val_accuracy", *SUMMARY_METRICS[3:])


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The config columns present, seed excluded (a configuration is the same over seeds)."""
    names = [column_name(k) for k in CONFIG_KEYS if k != "seed"]
    return [c for c in names if c in trials.columns]


def leaderboard(trials: pd.DataFrame, metric: str, mode: str, searched: list[str]) -> pd.DataFrame:
    """Return one row per row of `trials` (runs: one per trial and seed), best first by
    `metric`, with the documented columns."""
    params = [p for p in searched if p in trials.columns]
    rest = [c for c in config_columns(trials) if c not in params]
    columns = [*LEADERBOARD_FIRST, *params, *LEADERBOARD_METRICS, *rest, "repeats", "duplicate",
               "reason", "failures", "time_total_s", "trial_dir"]
    board = trials.reindex(columns=[c for c in columns if c in trials.columns or c in
                                    (*LEADERBOARD_FIRST, *LEADERBOARD_METRICS)])
    if metric in board:
        board = board.sort_values(metric, ascending=mode == "min", na_position="last")
    return board.reset_index(drop=True)


def best_configuration(trials: pd.DataFrame, metric: str, mode: str,
                       n_test: int | None = None, chosen: tuple[Any, ...] | None = None
                       ) -> dict[str, Any] | None:
    """Pick the configuration with the best mean `metric` over its seeds (validation only).

    `trials` holds one row per run (`collect_runs`: a trial and seed). Completed runs count
    first; a partial study with none falls back to stopped ones. Diverged and errored runs
    never count. Returns the config, mean metrics with 95 % CIs over seeds, the test accuracy's
    test-set CI (`test_set_ci95`: bootstrap over the saved per-image predictions, else exact
    binomial over `n_test` images) and both combined (`combined_ci95`), each seed's
    validation-test gap (`gap_values`, both on the tested weights), the seeds and trial ids, and
    the run whose checkpoint best represents it (`trial_dir` and `seed`). The config's `seed`
    and `repeats` are those of the representative's trial, so `study train --config` retrains
    that trial: every seed it stacked, the representative among them. `chosen` (the config
    columns' values, `analysis.pareto.Front.key`) names the configuration instead.
    """
    if trials.empty or metric not in trials:
        return None
    if "duplicate" in trials:  # another copy of the same run is counted instead
        trials = trials[~trials["duplicate"].astype(bool)]
    usable = trials[trials["status"] == RunStatus.COMPLETED]
    if usable[metric].notna().sum() == 0:
        usable = trials[trials["status"].isin(
            [RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.UNFINISHED])]
    usable = usable[usable[metric].notna()]
    if usable.empty:
        return None
    keys = config_columns(usable)
    groups = usable.groupby(keys, dropna=False, sort=False)
    scores = groups[metric].mean()
    best_key = chosen if chosen is not None else (
        scores.idxmin() if mode == "min" else scores.idxmax())
    best_key = best_key if isinstance(best_key, tuple) else (best_key,)
    members = usable
    for key, value in zip(keys, best_key, strict=True):
        members = members[members[key].isna()] if _isnan(value) else members[members[key] == value]
    if members.empty:  # `chosen` names no configuration judged here: the best by `metric`
        return best_configuration(trials, metric, mode, n_test)
    config = {}
    for key, value in zip(keys, best_key, strict=True):
        if _isnan(value):
            continue
        name = "epochs" if key == "planned_epochs" else key
        if isinstance(value, str) and value.startswith("["):
            value = json.loads(value)
        config[name] = value.item() if hasattr(value, "item") else value
    representative = members.sort_values(metric, ascending=mode == "min").iloc[0]
    trial_seeds = _seeds(representative)
    config["seed"] = trial_seeds[0]
    config["repeats"] = len(trial_seeds)
    metrics, ci95 = {}, {}
    for name in SUMMARY_METRICS:
        if name in members and members[name].notna().any():
            stats = mean_ci(members[name].tolist())
            metrics[name] = stats.mean
            if stats.n > 1:
                ci95[name] = stats.half_width
    scored = members[members["test_accuracy"].notna()] if "test_accuracy" in members else members
    correct = list(scored["test_correct"]) if "test_correct" in scored else []
    images = test_set_ci(metrics.get("test_accuracy", math.nan), n_test,
                         correct if correct and all(c is not None for c in correct) else ())
    gaps = (scored["val_accuracy"] - scored["test_accuracy"]).tolist() \
        if {"val_accuracy", "test_accuracy"} <= set(scored) else []
    return {
        "config": config,
        "metrics": metrics,
        "ci95": ci95,
        "test_set_ci95": images.half_width,
        "test_set_method": images.method,
        "combined_ci95": combined_half_width(ci95.get("test_accuracy", math.nan),
                                             images.half_width),
        "gap_values": [float(g) for g in gaps],
        "n_seeds": int(len(members)),
        "seeds": sorted(int(s) for s in members["seed"]),
        "trial_ids": list(dict.fromkeys(members["trial_id"])),
        "trial_dir": representative["trial_dir"],
        "representative_seed": int(representative["seed"]),
    }


def _seeds(run: pd.Series) -> list[int]:
    """The seeds of a run's trial (its `seeds` JSON list; older results: its one seed)."""
    raw = run.get("seeds")
    if isinstance(raw, str):
        return [int(s) for s in json.loads(raw)]
    return [int(run["seed"])]


def seed_standings(trials: pd.DataFrame, rule: dict[str, Any],
                   searched: list[str] | None = None) -> pd.DataFrame:
    """Return one row per configuration of a `--repeats auto` study: its label, seeds with a
    value, seeds tried, the 95 % CI half-width of the rule's metric, and where it stopped and
    why, by the same rule the searcher applied (`study.search.seed_rule.Rule`), read from disk."""
    from study.search.seed_rule import CI_METRIC, Rule

    check = Rule.from_dict(rule)
    metric = rule.get("metric", CI_METRIC)
    columns = ["configuration", "n", "tries", "half_width", "done", "why"]
    keys = [c for c in config_columns(trials) if c != "repeats"]
    if trials.empty or not keys or metric not in trials:
        return pd.DataFrame(columns=columns)
    named = [c for c in (searched or []) if c in keys] or keys
    rows = []
    for key, group in trials.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True) if k in named)
        done = group[group["status"] == RunStatus.COMPLETED]
        values = [float(v) for v in done[metric] if isinstance(v, float) and math.isfinite(v)]
        running = int(group["status"].isin(IN_PROGRESS).sum())
        tries = int(len(group)) - running
        wants, why = check.decide(values, tries, running)
        if wants or running:
            why = f"not done: the study ended first ({why})"
        rows.append({"configuration": label, "n": len(values), "tries": tries,
                     "half_width": mean_ci(values).half_width, "done": not (wants or running),
                     "why": why})
    return pd.DataFrame(rows, columns=columns)


def validation_source(data_spec: str | None) -> tuple[str, bool]:
    """Return where a study's validation images came from, in words, and whether that is a
    split of its own (a file's `val_*` arrays) rather than a hold-out of the training images.

    Mirrors `training.data.load_data`: synthetic data and the homework layout hold out a seeded,
    stratified 20 % of train; a `.npz` with `val_images` brings its own validation split.
    """
    if not data_spec:
        return f"unknown (no {META_FILE} records the data)", False
    if data_spec == "synthetic" or data_spec.startswith("synthetic:"):
        return ("a seeded, stratified hold-out of the synthetic training images; the test "
                "images are generated apart from them"), False
    path = Path(data_spec)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                own = "val_images" in archive.files
        except (OSError, ValueError):
            return f"unknown ({path} cannot be read now)", False
        if own:
            return (f"the file's own validation split (`val_images` in {path.name}), a "
                    "different split from its `test_images`"), True
        return (f"a seeded, stratified hold-out of the training images in {path.name}; its "
                "`test_images` are a different split"), False
    return ("a seeded, stratified hold-out of the training images (`train/`), while the test "
            "images come from their own files (`test/`)"), False


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
    runs = collect_runs(trials=trials)
    objectives = objectives_of(meta, str(where))  # None: one objective, no constraints
    front = collect_front(runs, *objectives) if objectives else None
    board = leaderboard(runs, metric, mode, searched)
    return {
        "experiment": str(exp_dir.resolve()),
        "metric": metric,
        "mode": mode,
        "meta": meta,
        "trials": trials,  # one row per trial: what the searcher saw (seed-means)
        "runs": runs,  # one row per (trial, seed), duplicates counted once
        "leaderboard": board if front is None else mark_leaderboard(board, runs, front),
        "best": best_configuration(runs, metric, mode, (meta.get("data_sizes") or {}).get("test"),
                                   front.key if front is not None else None),
        "pareto": front,  # analysis.pareto.Front for several objectives or constraints
    }
