"""Read a Ray Tune experiment folder from disk: one table of trials, one of epochs.

Works without Ray running, on finished, partial (errored, unfinished) and copied experiments:
it reads only JSON files (`result.json`, `params.json`, `experiment_state-*.json`, the study's
`study.json`) and never unpickles anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.predictions import read_predictions
from study.core.files import read_trial_states
from study.core.names import (
    META_FILE,
    PARAMS_FILE,
    RESULT_FILE,
    STATE_GLOB,
    RunStatus,
    TrialStatus,
)
from study.errors import StudyError
from study.training.config import TrialConfig

RUN_METRICS = ("val_accuracy", "val_loss", "val_auroc", "val_sensitivity", "val_specificity",
               "train_accuracy", "train_loss", "test_accuracy", "test_auroc", "test_sensitivity",
               "test_specificity")
# Validation metrics scored on the weights a run keeps, tests and exports (those of its epoch
# with the best validation loss): under their own names, with the last epoch's as `last_<name>`.
KEPT_METRICS = ("val_loss", "val_accuracy", "val_auroc", "val_sensitivity", "val_specificity")
# The configuration of a trial: TrialConfig's fields, but `repeats` (how many seeds a trial
# trains), which is counted from its results instead.
CONFIG_KEYS = tuple(f.name for f in fields(TrialConfig) if f.name != "repeats")
# Ray's statuses of a trial that is still going (or was when its state was last saved).
RAY_GOING = (TrialStatus.RUNNING, TrialStatus.PENDING, TrialStatus.PAUSED)


def column_name(config_key: str) -> str:
    """Table column of a config key: `epochs` is the planned budget, `planned_epochs`, since
    `epochs` in the trial table counts the epochs actually trained."""
    return "planned_epochs" if config_key == "epochs" else config_key


def read_meta(exp_dir: Path) -> dict[str, Any]:
    """Return the study's own record (study.json), or {} for a plain Ray Tune experiment."""
    path = Path(exp_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise StudyError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise StudyError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    return meta


def trial_dirs(exp_dir: Path) -> list[Path]:
    """Return the trial folders of an experiment (those holding params.json), sorted by name."""
    return sorted(p.parent for p in Path(exp_dir).glob(f"*/{PARAMS_FILE}"))


def check_experiment(exp_dir: Path) -> None:
    """Raise StudyError unless `exp_dir` looks like a Ray Tune experiment folder."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise StudyError(f"{exp_dir}: no such folder")
    has_state = any(exp_dir.glob(STATE_GLOB))
    if not (has_state or trial_dirs(exp_dir) or (exp_dir / META_FILE).exists()):
        raise StudyError(
            f"{exp_dir}: not a study experiment folder (no {META_FILE}, {STATE_GLOB} "
            f"or trial folders with {PARAMS_FILE})"
        )


def _read_text(path: Path) -> str:
    """The text of a JSON file Ray wrote; StudyError where it is unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StudyError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise StudyError(f"{path}: cannot be read ({exc.strerror})") from None


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by a crash: keep what came before it
        if not isinstance(row, dict) or not isinstance(row.get("config", {}), dict):
            raise StudyError(f"{path}: line {number} is not a result record (a JSON object), "
                             f"got {line[:80]!r}")
        rows.append(row)
    return rows


def read_trial(trial_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return one trial folder's configuration (its params.json; {} where a crash cut it short)
    and its reported results (its result.json: one dict per report, in report order)."""
    trial_dir = Path(trial_dir)
    try:
        params = json.loads(_read_text(trial_dir / PARAMS_FILE))
    except json.JSONDecodeError:
        params = {}
    return params, _read_results(trial_dir / RESULT_FILE)


def _hashable(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _trial_id(trial_dir: Path, results: list[dict[str, Any]]) -> str:
    if results and "trial_id" in results[-1]:
        return str(results[-1]["trial_id"])
    # Ray names trial folders <trainable>_<trial_id>_<index>_...
    parts = trial_dir.name.split("_")
    return parts[2] if len(parts) > 2 and parts[0] == "train" else trial_dir.name


def _status(last: dict[str, Any] | None, config: dict[str, Any], ray_status: str,
            error_file: Path) -> tuple[str, str]:
    """Return (status, reason) for one trial.

    Ray keeps a trial's error.txt after the trial was retried (`--max-failures`) and went on,
    so error.txt marks an error only where Ray's state does not show the trial terminated or
    still going (and, without that state, where the trial did not reach its planned epochs).
    """
    planned = config.get("epochs")
    reached = last is not None and planned is not None and last.get("epoch", 0) >= planned
    recovered = (ray_status in (TrialStatus.TERMINATED, *RAY_GOING)
                 or (not ray_status and reached))
    if error_file.exists() and not recovered:
        text = error_file.read_text(errors="replace").strip().splitlines()
        return RunStatus.ERROR.value, (text[-1] if text else "error")[:300]
    if last and last.get("diverged"):
        return (RunStatus.DIVERGED.value,
                f"train_loss={last.get('train_loss')} at epoch {last.get('epoch')}")
    if ray_status == TrialStatus.ERROR:
        return RunStatus.ERROR.value, "trial errored (no error.txt)"
    if ray_status in RAY_GOING:
        # Ray's last saved state still had it going: the study stopped (interrupted) with it
        # part-trained, or is still running while this is read.
        done = last.get("epoch", 0) if last else 0
        return RunStatus.UNFINISHED.value, (f"{done}/{planned} epochs when the study stopped "
                                            f"(Ray: {ray_status.lower()})")
    if last is None:
        return RunStatus.NO_RESULTS.value, "no epoch reported"
    if planned is not None and last.get("epoch", 0) < planned:
        if ray_status == TrialStatus.TERMINATED:
            return RunStatus.STOPPED.value, (f"stopped by the scheduler after "
                                             f"{last.get('epoch')}/{planned} epochs")
        return (RunStatus.UNFINISHED.value,
                f"{last.get('epoch')}/{planned} epochs when the study stopped")
    return RunStatus.COMPLETED.value, ""


def _result_seeds(result: dict[str, Any], config: dict[str, Any]) -> list[Any]:
    """The seeds a result covers: its `seeds` list, or (older results) its one `seed`."""
    seeds = result.get("seeds")
    if isinstance(seeds, list) and seeds:
        return seeds
    return [result.get("seed", config.get("seed"))]


def _seed_values(result: dict[str, Any], index: int, names: tuple[str, ...] | list[str]
                 ) -> dict[str, Any]:
    """Seed `index`'s values of `names` in one result: from `seed_metrics` when the result has
    it, else (one seed, older results) the result's own values."""
    per_seed = result.get("seed_metrics")
    out = {}
    for name in names:
        if isinstance(per_seed, dict) and isinstance(per_seed.get(name), list):
            values = per_seed[name]
            out[name] = values[index] if index < len(values) else math.nan
        elif index == 0 and not isinstance(per_seed, dict):
            out[name] = result.get(name)
    return out


def collect_epochs(exp_dir: Path, per_seed: bool = False) -> pd.DataFrame:
    """Return one row per reported epoch: trial_id, epoch, metrics, and the trial's config.

    The metrics are what the trial reported, the seed-mean of a stacked trial (what the
    searcher and the scheduler saw). With `per_seed`, one row per seed and epoch instead, with
    a `seed` column and that seed's own values (`seed_metrics`).
    """
    # One list of plain rows and one DataFrame at the end: a frame per trial, widened column by
    # column, cost a third of a second per hundred trials.
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}  # in the order a frame per trial, concatenated, would have
    dropped = ("config", "seeds", "seed_metrics")
    for trial_dir in trial_dirs(exp_dir):
        results = _read_results(trial_dir / RESULT_FILE)
        if not results:
            continue
        config = results[-1].get("config", {})
        if per_seed:
            results = _expand_seeds(results, config)
        reported = {k: None for result in results for k in result if k not in dropped}
        extra = {key: _hashable(config[key]) for key in CONFIG_KEYS
                 if key in config and key not in reported}
        extra["trial_id"] = _trial_id(trial_dir, results)
        columns.update(reported)
        columns.update(dict.fromkeys(extra))
        rows += [{**{k: v for k, v in result.items() if k not in dropped}, **extra}
                 for result in results]
    if not rows:
        return pd.DataFrame(columns=["trial_id", "epoch"])
    out = pd.DataFrame(rows, columns=list(columns))
    # PBT and restarts may report an epoch twice; keep the latest report of each.
    key = ["trial_id", "seed", "epoch"] if per_seed else ["trial_id", "epoch"]
    return out.drop_duplicates(key, keep="last").reset_index(drop=True)


def _expand_seeds(results: list[dict[str, Any]], config: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    """One row per seed of each result, holding that seed's values under the metric names."""
    rows = []
    for result in results:
        names = list(result.get("seed_metrics") or {})
        for index, seed in enumerate(_result_seeds(result, config)):
            row = {k: v for k, v in result.items() if k not in ("seeds", "seed_metrics")}
            if names:
                for name in names:  # a metric missing for this seed is not the mean's value
                    row.pop(name, None)
                row.update(_seed_values(result, index, names))
            row["seed"] = seed
            rows.append(row)
    return rows


def collect_trials(exp_dir: Path) -> pd.DataFrame:
    """Return one row per trial: id, status, reason, epochs trained, seed, node, config, metrics.

    Metrics are the seed-means of its runs' (`collect_runs`): validation metrics of the weights
    each seed keeps and tests (best validation loss; the last epoch's, what the scheduler saw,
    as `last_val_*`), the test metrics reported at the end of the trial, and
    `best_val_accuracy`, the highest validation accuracy of any epoch. `seeds`, `repeats` and
    (internal, for `collect_runs`) `_per_seed` carry each seed's values.
    """
    exp_dir = Path(exp_dir)
    check_experiment(exp_dir)
    statuses = read_trial_states(exp_dir)
    rows = []
    for trial_dir in trial_dirs(exp_dir):
        results = _read_results(trial_dir / RESULT_FILE)
        last = results[-1] if results else None
        try:
            params = json.loads(_read_text(trial_dir / PARAMS_FILE))
        except json.JSONDecodeError:
            params = {}  # cut short by a crash: the config comes from result.json
        if not isinstance(params, dict):
            raise StudyError(f"{trial_dir / PARAMS_FILE}: must hold a JSON object, got "
                             f"{type(params).__name__}")
        config = (last or {}).get("config") or params
        trial_id = _trial_id(trial_dir, results)
        ray_info = statuses.get(trial_id, {})
        status, reason = _status(last, config, ray_info.get("status", ""),
                                 trial_dir / "error.txt")
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, "reason": reason,
                               "epochs": int(last.get("epoch", 0)) if last else 0}
        seeds = _result_seeds(last or {}, config)
        row["seed"] = seeds[0]
        row["seeds"] = json.dumps(seeds)
        row["repeats"] = len(seeds)
        row["_per_seed"] = _per_seed_rows(results, config, seeds, ray_info.get("status", ""),
                                          trial_dir / "error.txt") if last else []
        predictions = read_predictions(trial_dir) if last else {}
        for seed_row in row["_per_seed"]:  # per-image test correctness, where it was saved
            seed_row["test_correct"] = predictions.get(_int_or_none(seed_row["seed"]))
        row["node_id"] = (last or {}).get("node_id")
        for key in CONFIG_KEYS:
            if key in config and key != "seed":
                row[column_name(key)] = _hashable(config[key])
        for key in RUN_METRICS:
            value = (last or {}).get(key)
            row[key] = value if isinstance(value, (int, float)) else math.nan
        accs = [r["val_accuracy"] for r in results if isinstance(r.get("val_accuracy"), float)]
        row["best_val_accuracy"] = max(accs) if accs else math.nan
        for key in KEPT_METRICS:  # the kept weights' values, seed-means, as for the runs
            row[f"last_{key}"] = row[key]
            kept = [r[key] for r in row["_per_seed"]]
            if kept:
                row[key] = sum(kept) / len(kept)
        row["time_total_s"] = (last or {}).get("time_total_s", math.nan)
        row["failures"] = ray_info.get("failures", 0)
        row["session"] = ray_info.get("run", 0)  # which driver session created it
        row["trial_dir"] = trial_dir.name
        rows.append(row)
    # Trials Ray knows of that never made a folder (pending when the study stopped).
    seen = {r["trial_id"] for r in rows}
    for trial_id, info in statuses.items():
        if trial_id not in seen:
            rows.append({"trial_id": trial_id,
                         "status": info["status"].lower() or RunStatus.PENDING.value,
                         "reason": "never started", "epochs": 0})
    return pd.DataFrame(rows)


def _per_seed_rows(results: list[dict[str, Any]], config: dict[str, Any], seeds: list[Any],
                   ray_status: str, error_file: Path) -> list[dict[str, Any]]:
    """Each seed's status, metrics and best validation accuracy from a trial's results."""
    last = results[-1]
    rows = []
    for index, seed in enumerate(seeds):
        values = _seed_values(last, index, [*RUN_METRICS, "diverged"])
        # The seed's own status: the trial's, with divergence judged per seed.
        alive = {k: v for k, v in last.items() if k != "diverged"}
        status, reason = _status(alive, config, ray_status, error_file)
        if values.get("diverged") and status != RunStatus.ERROR:
            # the epoch it diverged: its first result flagging it, with its loss then
            first = next(r for r in results
                         if _seed_values(r, index, ["diverged"]).get("diverged"))
            loss = _seed_values(first, index, ["train_loss"]).get("train_loss")
            status = RunStatus.DIVERGED.value
            reason = f"train_loss={loss} at epoch {first.get('epoch')}" + (
                f" (seed {seed})" if len(seeds) > 1 else "")
        row = {"seed": seed, "status": status, "reason": reason}
        for key in RUN_METRICS:
            value = values.get(key)
            row[key] = value if isinstance(value, (int, float)) else math.nan
        row.update(kept_values(results, index))
        accs = [v.get("val_accuracy") for v in (_seed_values(r, index, ["val_accuracy"])
                                                for r in results)]
        accs = [a for a in accs if isinstance(a, float) and math.isfinite(a)]
        row["best_val_accuracy"] = max(accs) if accs else math.nan
        rows.append(row)
    return rows


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def kept_values(results: list[dict[str, Any]], index: int) -> dict[str, float]:
    """Seed `index`'s validation metrics on its kept weights (KEPT_METRICS, and `kept_epoch`)
    and on its last epoch's (`last_<name>`).

    The kept weights are those of the epoch with the best validation loss: the trial's final
    report names them (`kept_*`); results written before it did (and trials stopped before
    their end) are read as the loop keeps them, the first epoch with the lowest finite
    validation loss while the training loss is finite."""
    last = _seed_values(results[-1], index, [*KEPT_METRICS, "kept_epoch",
                                             *(f"kept_{k}" for k in KEPT_METRICS)])
    out = {f"last_{k}": _number(last.get(k)) for k in KEPT_METRICS}
    if isinstance(last.get("kept_epoch"), (int, float)):
        out["kept_epoch"] = _number(last["kept_epoch"])
        out.update({k: _number(last.get(f"kept_{k}")) for k in KEPT_METRICS})
        return out
    best, kept = math.inf, None
    for result in results:
        values = _seed_values(result, index, [*KEPT_METRICS, "train_loss"])
        loss, train = _number(values.get("val_loss")), _number(values.get("train_loss", 0.0))
        if math.isfinite(loss) and not math.isnan(train) and math.isfinite(train) \
                and loss < best:
            best, kept = loss, (result.get("epoch"), values)
    if kept is None:  # no validation loss reported: the last epoch's values, as they are
        out.update({k: out[f"last_{k}"] for k in KEPT_METRICS}, kept_epoch=math.nan)
        return out
    out["kept_epoch"] = _number(kept[0])
    out.update({k: _number(kept[1].get(k)) for k in KEPT_METRICS})
    return out


# Which copy of a duplicated run counts: the furthest along (errored and no_results: last, 4).
STATUS_RANK = {RunStatus.COMPLETED: 0, RunStatus.STOPPED: 1, RunStatus.UNFINISHED: 1,
               RunStatus.DIVERGED: 2, RunStatus.RUNNING: 3, RunStatus.PAUSED: 3,
               RunStatus.PENDING: 3}


def collect_runs(exp_dir: Path | None = None, trials: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
    """Return one row per run, a (trial, seed): the trial's columns with that seed's status,
    metrics and best validation accuracy. What intervals over seeds are computed from.
    `val_accuracy` (and `val_loss`, `val_auroc`) are those of the weights the run tested and
    exported, from epoch `kept_epoch`; `last_val_accuracy` the last epoch's.

    A stacked trial (repeats K) gives K rows; a trial of older results, one. Two rows with the
    same configuration (every config key but `seed` and `repeats`) and the same seed are the
    same run and count once: every copy but one is marked `duplicate` (kept in the table, so
    a report can say so; left out of every statistic). The copy counted is the furthest along
    (completed, then stopped or unfinished, then diverged, then running, then errored; then
    the most epochs; then the later trial).
    """
    if trials is None:
        assert exp_dir is not None
        trials = collect_trials(exp_dir)
    rows = []
    for order, trial in enumerate(trials.to_dict("records")):
        per_seed = trial.pop("_per_seed", None)
        if not isinstance(per_seed, list) or not per_seed:
            rows.append({**trial, "_order": order})  # never started: one row, as it was
            continue
        for seed_row in per_seed:
            rows.append({**trial, **seed_row, "_order": order})
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs.drop(columns=["_per_seed"], errors="ignore")
    if "seed" not in runs:  # only trials that never started (no folder or an empty one yet)
        runs["seed"] = None
    config = [column_name(k) for k in CONFIG_KEYS if k != "seed" and column_name(k) in runs]
    runs["_rank"] = runs["status"].map(STATUS_RANK).fillna(4)
    runs = runs.sort_values(["_rank", "epochs", "_order"], ascending=[True, False, False],
                            kind="stable")
    has_seed = runs["seed"].notna() if "seed" in runs else pd.Series(False, index=runs.index)
    key = [*config, "seed"]
    keyed = runs[has_seed].astype({c: str for c in key}).duplicated(key, keep="first")
    runs["duplicate"] = False
    runs.loc[keyed.index, "duplicate"] = keyed
    runs = runs.sort_values(["_order", "seed"], kind="stable")
    return runs.drop(columns=["_rank", "_order", "_per_seed"], errors="ignore"
                     ).reset_index(drop=True)
