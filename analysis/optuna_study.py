"""Rebuild an Optuna study from results on disk, and store it as SQLite for optuna-dashboard.

Whatever searched the space (Optuna through Ray, random or grid), the rebuilt study holds one
Optuna trial per Ray trial, in the order Ray created them: its searched parameters with the
distributions of the study's search space (study.json), its final metric as the value, the
metric of every epoch as intermediate values, and a state: COMPLETE (finished), PRUNED (stopped
early by the scheduler; its last value kept) or FAIL (errored, diverged, unfinished).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from analysis.results import column_name
from study.core.names import META_FILE, RunStatus
from study.errors import StudyError
from study.search.optuna_space import index_name, layer_name
from study.search.space import Param, parse_space

log = logging.getLogger(__name__)

STATES = {RunStatus.COMPLETED: TrialState.COMPLETE,
          RunStatus.STOPPED: TrialState.PRUNED}  # others: FAIL
USER_ATTRS = ("seed", "epochs", "best_val_accuracy", "test_accuracy", "test_auroc",
              "test_sensitivity", "test_specificity", "time_total_s", "node_id", "trial_dir")
MAX_CATEGORIES = 12  # without a search space, a parameter with more values is a range


def _py(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _distribution(p: Param) -> BaseDistribution:
    if p.kind == "choice":
        if any(isinstance(v, tuple) for v in p.values):
            return CategoricalDistribution(list(range(len(p.values))))
        return CategoricalDistribution(list(p.values))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=p.step)
    return FloatDistribution(float(p.low), float(p.high), log=p.log)


def _from_json(raw: dict[str, Any]) -> dict[str, Any]:
    """Undo what JSON did to the YAML space: `by_depth` keys (depths) became strings."""
    out = dict(raw)
    for section in ("params", "fixed"):
        body = raw.get(section)
        if not isinstance(body, dict):
            continue
        fixed = {}
        for name, spec in body.items():
            if isinstance(spec, dict) and isinstance(spec.get("by_depth"), dict):
                table = {int(k) if isinstance(k, str) and k.isdigit() else k: v
                         for k, v in spec["by_depth"].items()}
                spec = {**spec, "by_depth": table}
            fixed[name] = spec
        out[section] = fixed
    return out


def space_distributions(meta: dict[str, Any]) -> dict[str, Param]:
    """The searched parameters of the study's space (study.json), by name; {} without one."""
    raw = meta.get("space")
    if not isinstance(raw, dict):
        return {}
    try:
        space = parse_space(_from_json(raw), source=f"{META_FILE} space")
    except StudyError as exc:
        log.warning("cannot rebuild the search space from %s: %s", META_FILE, exc)
        return {}
    searched = set(meta.get("searched") or space.searched)
    return {n: p for n, p in space.params.items() if p.kind != "fixed" and n in searched}


def inferred_distributions(trials: pd.DataFrame, names: list[str]) -> dict[str, BaseDistribution]:
    """Distributions guessed from the values seen, for an experiment without study.json."""
    out: dict[str, BaseDistribution] = {}
    for name in names:
        column = column_name(name)
        if column not in trials:
            continue
        values = [_py(v) for v in trials[column].dropna().unique()]
        if len(values) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(values) > MAX_CATEGORIES:
            low, high = min(values), max(values)
            log_scale = low > 0 and high / low > 100
            if all(isinstance(v, int) for v in values):
                out[name] = IntDistribution(int(low), int(high), log=log_scale)
            else:
                out[name] = FloatDistribution(float(low), float(high), log=log_scale)
        else:
            labels = [json.dumps(v) if isinstance(v, list) else v for v in values]
            out[name] = CategoricalDistribution(sorted(labels, key=lambda v: (str(type(v)), v)))
    return out


def _widen(dist: BaseDistribution, value: Any) -> BaseDistribution | None:
    """Return `dist`, widened to hold `value` if it is a range (PBT may step outside), or None."""
    try:
        if dist._contains(dist.to_internal_repr(value)):
            return dist
    except (ValueError, TypeError):
        return None
    if isinstance(dist, IntDistribution) and isinstance(value, int):
        return IntDistribution(min(dist.low, value), max(dist.high, value), log=dist.log)
    if isinstance(dist, FloatDistribution) and isinstance(value, (int, float)):
        return FloatDistribution(min(dist.low, value), max(dist.high, value), log=dist.log)
    return None


def trial_params(row: dict[str, Any], space: dict[str, Param],
                 inferred: dict[str, BaseDistribution]
                 ) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """Return (params, distributions) of one trial, named as Optuna's define-by-run space
    names them (`width_index` for a choice of width lists, `width_0`... for per-layer widths)."""
    params: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}

    def put(name: str, value: Any, dist: BaseDistribution) -> None:
        fitted = _widen(dist, value)
        if fitted is not None:
            params[name] = value
            dists[name] = fitted

    for name, p in space.items():
        value = _py(row.get(column_name(name)))
        if _missing(value):
            continue
        if p.kind == "choice" and any(isinstance(v, tuple) for v in p.values):
            value = tuple(value) if isinstance(value, list) else value
            if value in p.values:
                put(index_name(name), p.values.index(value), _distribution(p))
        elif p.kind == "per_layer":
            assert p.inner is not None
            layers = value if isinstance(value, list) else [value]
            for i, layer in enumerate(layers):
                put(layer_name(name, i), layer, _distribution(p.inner))
        elif p.kind in ("choice", "int", "uniform", "loguniform"):
            if p.kind in ("uniform", "loguniform") and isinstance(value, int):
                value = float(value)
            put(name, value, _distribution(p))
    for name, dist in inferred.items():
        value = _py(row.get(column_name(name)))
        if not _missing(value):
            put(name, json.dumps(value) if isinstance(value, list) else value, dist)
    return params, dists


def trial_number(trial_id: str, fallback: int) -> int:
    """Ray's trial counter (the `_00012` of `3f6bd_00012`), the order trials were created."""
    tail = str(trial_id).rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else fallback


def creation_index(row: dict[str, Any], fallback: int) -> int:
    """The order Ray created a trial in, for every search: Ray names a trial's folder
    `<trainable>_<trial_id>_<index>_<params>...`. (Under a searcher, trial ids are random hex
    without the `_00012` counter, so the id alone does not give the order.)"""
    folder = str(row.get("trial_dir") or "")
    found = re.search(rf"_{re.escape(str(row['trial_id']))}_(\d+)(?:_|$)", folder)
    return int(found.group(1)) if found else trial_number(row["trial_id"], fallback)


def creation_order(row: dict[str, Any], fallback: int) -> tuple[int, int]:
    """(driver session, creation index): trials added to a finished study by a later session
    count their index from 1 again, after every earlier trial."""
    session = row.get("session")
    session = int(session) if isinstance(session, (int, float)) and math.isfinite(session) else 0
    return session, creation_index(row, fallback)


def build_study(trials: pd.DataFrame, epochs: pd.DataFrame, meta: dict[str, Any],
                study_name: str, storage: Any = None) -> optuna.Study:
    """Return an Optuna study (in memory unless `storage`) holding every trial that ran.

    Trials that never started (no folder) are left out: they have no parameters to show.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" lines
    metric = meta.get("metric", "val_accuracy")
    direction = "minimize" if meta.get("mode", "max") == "min" else "maximize"
    space = space_distributions(meta)
    inferred = {} if space else inferred_distributions(trials, list(meta.get("searched") or []))
    study = optuna.create_study(study_name=study_name, storage=storage, direction=direction)
    study.set_user_attr("metric", metric)
    for key in ("command", "data", "search", "scheduler", "space_file"):
        if meta.get(key) is not None:
            study.set_user_attr(key, meta[key])
    by_trial = {}
    if not epochs.empty and metric in epochs:
        for trial_id, group in epochs.groupby("trial_id"):
            pairs = zip(group["epoch"], group[metric], strict=True)
            by_trial[trial_id] = {int(e): float(v) for e, v in pairs
                                  if isinstance(v, (int, float)) and math.isfinite(v)}
    ran = trials[trials["trial_dir"].notna()] if "trial_dir" in trials else trials.iloc[0:0]
    order = sorted(((creation_order(r, i), r) for i, r in
                    enumerate(ran.to_dict("records"))), key=lambda pair: pair[0])
    frozen: list[FrozenTrial] = []
    for _, row in order:
        params, dists = trial_params(row, space, inferred)
        # the value the searcher was told: the last epoch's (`last_<metric>`), as the
        # intermediate values; the report's selection reads the tested weights' instead
        value = row.get(f"last_{metric}", row.get(metric))
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        state = STATES.get(row["status"], TrialState.FAIL) if finite else TrialState.FAIL
        attrs = {"trial_id": row["trial_id"], "status": row["status"],
                 "reason": row.get("reason") or ""}
        for key in USER_ATTRS:
            v = _py(row.get(key))
            if not _missing(v):
                attrs[key] = v
        frozen.append(optuna.trial.create_trial(
            params=params, distributions=dists,
            value=float(value) if state != TrialState.FAIL else None,
            intermediate_values=by_trial.get(row["trial_id"], {}), user_attrs=attrs,
            state=state,
        ))
    study.add_trials(frozen)
    return study


def write_optuna_db(study: optuna.Study, path: Path) -> Path:
    """Copy `study` into a new SQLite storage at `path`, atomically (temp file, then rename).

    Open it with `optuna.load_study(study_name=..., storage=f"sqlite:///{path}")` or
    `optuna-dashboard sqlite:///{path}`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")

    def connect() -> sqlite3.Connection:
        # Optuna commits each trial on its own; SQLite's default syncs the disk at every
        # commit (a second per 30 trials). The file is a temporary one, synced once below.
        connection = sqlite3.connect(tmp)
        connection.execute("PRAGMA synchronous = OFF")
        return connection

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}", engine_kwargs={"creator": connect})
    try:
        copy = optuna.create_study(study_name=study.study_name, storage=storage,
                                   directions=study.directions)
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        copy.add_trials(study.get_trials(deepcopy=False))
        storage.remove_session()
        storage.engine.dispose()
        with open(tmp, "rb+") as done:
            os.fsync(done.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
