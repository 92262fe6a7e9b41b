"""The views hyperparameter-search users expect, drawn from the rebuilt Optuna study.

Optimisation history (best so far), parameter importance (Optuna's evaluators), parallel
coordinates, one scatter per searched parameter against the metric (to spot search bounds that
are too tight), and an early-stopping view (every learning curve, stopped trials marked).
`collect_*` return DataFrames; `plot_*` draw them on an Axes and return it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from analysis.plotting import Axes, new_axes, plt
from study.core.names import RunStatus

MIN_IMPORTANCE_TRIALS = 5  # below this, importances are noise (PED-ANOVA even refuses)
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
               TrialState.FAIL: "fail", TrialState.RUNNING: "running",
               TrialState.WAITING: "waiting"}
# How each way a trial ended is drawn (colour, legend label); any other status is drawn as
# errored (no_results) or unfinished (still going, or never started).
STATUS_STYLE = {RunStatus.COMPLETED: ("C0", "finished"),
                RunStatus.STOPPED: ("C1", "stopped early"),
                RunStatus.DIVERGED: ("C3", "diverged"), RunStatus.ERROR: ("C3", "errored"),
                RunStatus.UNFINISHED: ("C7", "unfinished")}


def _empty(ax: Axes, text: str) -> Axes:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _metric(study: optuna.Study) -> str:
    return str(study.user_attrs.get("metric", "objective"))


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


# --- numbers ------------------------------------------------------------------------------


def collect_params(study: optuna.Study) -> pd.DataFrame:
    """Return one row per trial: number, trial_id, state, status, value, and its parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "trial_id": t.user_attrs.get("trial_id", str(t.number)),
                     "state": STATE_NAMES.get(t.state, str(t.state)),
                     "status": t.user_attrs.get("status", ""),
                     "value": t.value if t.value is not None else math.nan, **t.params})
    # no trial yet (a study stopped as its first trial started): the columns all the same
    return pd.DataFrame(rows, columns=None if rows else
                        ["number", "trial_id", "state", "status", "value"])


def param_distributions(study: optuna.Study) -> dict[str, Any]:
    """Each parameter's distribution, widest range over the trials, in first-seen order."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            old = out.get(name)
            if isinstance(old, FloatDistribution) and isinstance(dist, FloatDistribution):
                dist = FloatDistribution(min(old.low, dist.low), max(old.high, dist.high),
                                         log=dist.log)
            out[name] = dist if old is None or not isinstance(dist, CategoricalDistribution) \
                else old
    return out


def collect_history(study: optuna.Study) -> pd.DataFrame:
    """Return per trial (in creation order): value, state, and the best finished value so far."""
    df = collect_params(study)
    if df.empty:
        return pd.DataFrame(columns=["number", "trial_id", "state", "value", "best_so_far"])
    done = df["value"].where(df["state"] == "complete")
    best = done.cummax() if _maximize(study) else done.cummin()
    return df[["number", "trial_id", "state", "value"]].assign(best_so_far=best)


def collect_importance(study: optuna.Study) -> pd.DataFrame:
    """Return each parameter's importance under Optuna's evaluators: PED-ANOVA (Optuna's
    default), and fANOVA where scikit-learn is installed.

    An empty frame, with the reason in `.attrs["note"]`, when there are too few finished
    trials or no parameter varied.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = [n for n in param_distributions(study)
               if len({t.params.get(n) for t in complete if n in t.params}) > 1]
    empty = pd.DataFrame(columns=["param", "evaluator", "importance"])
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        empty.attrs["note"] = (f"too few finished trials ({len(complete)}) to estimate parameter "
                               f"importance; it needs at least {MIN_IMPORTANCE_TRIALS}")
        return empty
    if not varying:
        empty.attrs["note"] = "no searched parameter varied among finished trials"
        return empty
    evaluators: dict[str, Any] = {"PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator()}
    problems = []
    try:  # Optuna's fANOVA needs scikit-learn, which the project does not require
        evaluators["fANOVA"] = optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        problems.append("fANOVA skipped (needs scikit-learn)")
    rows = []
    for label, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scores = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                 params=varying)
        except (ImportError, ValueError, RuntimeError, ZeroDivisionError) as exc:
            problems.append(f"{label} failed: {exc}")
            continue
        problems += [f"{label}: {w.message}" for w in caught
                     if "importance" in str(w.message).lower()]
        rows += [{"param": p, "evaluator": label, "importance": float(v)}
                 for p, v in scores.items()]
    df = pd.DataFrame(rows, columns=["param", "evaluator", "importance"])
    if problems:
        df.attrs["note"] = "; ".join(problems)
    return df


# --- figures ------------------------------------------------------------------------------


def plot_history(history: pd.DataFrame, metric: str, maximize: bool = True,
                 ax: Axes | None = None) -> Axes:
    """Draw every trial's value in creation order and the best finished value so far."""
    ax = new_axes(ax, (7.0, 4.2))
    if history.empty or history["value"].notna().sum() == 0:
        return _empty(ax, "no trial reported a value")
    for state, (marker, label, face) in {"complete": ("o", "finished", "C0"),
                                         "pruned": ("o", "stopped early (last value)", "none"),
                                         "fail": ("x", "failed (last value)", "C3")}.items():
        part = history[(history["state"] == state) & history["value"].notna()]
        if len(part):
            ax.scatter(part["number"], part["value"], marker=marker, s=22,
                       facecolors=face, edgecolors="C3" if state == "fail" else "C0",
                       label=f"{label} ({len(part)})")
    best = history.dropna(subset=["best_so_far"])
    if len(best):
        ax.step(best["number"], best["best_so_far"], where="post", color="C2", linewidth=2,
                label=f"best so far ({'max' if maximize else 'min'})")
    ax.set_xlabel("trial (creation order)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_importance(importance: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Draw horizontal bars of parameter importance, one colour per evaluator."""
    ax = new_axes(ax, (7.0, 3.5))
    if importance.empty:
        return _empty(ax, importance.attrs.get("note", "no importance computed"))
    table = importance.pivot_table(index="param", columns="evaluator", values="importance")
    table = table.sort_values(table.columns[0])
    y = np.arange(len(table))
    height = 0.8 / len(table.columns)
    for i, evaluator in enumerate(table.columns):
        ax.barh(y + (i - (len(table.columns) - 1) / 2) * height, table[evaluator], height,
                label=evaluator, color=f"C{i}")
    ax.set_yticks(y, table.index)
    note = importance.attrs.get("note")
    ax.set_xlabel("importance (normalised to sum 1)" + (f"\n{note}" if note else ""))
    ax.set_title("Parameter importance (Optuna evaluators, finished trials)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _axis_positions(values: pd.Series, dist: Any) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Map a parameter's values to [0, 1] and return the ticks (position, label) of its axis."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        step = 1 / max(1, len(choices) - 1)
        index = {c: i for i, c in enumerate(choices)}
        pos = values.map(lambda v: index.get(v, math.nan) * step if len(choices) > 1 else 0.5)
        ticks = [(i * step if len(choices) > 1 else 0.5, str(c)) for i, c in enumerate(choices)]
        return pos.to_numpy(dtype=float), ticks
    low, high = float(dist.low), float(dist.high)
    log = bool(getattr(dist, "log", False)) and low > 0
    f = np.log10 if log else (lambda v: v)
    span = (f(high) - f(low)) or 1.0
    pos = (f(values.to_numpy(dtype=float)) - f(low)) / span
    ticks = [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    return pos, ticks


def plot_parallel(params: pd.DataFrame, distributions: dict[str, Any], metric: str,
                  ax: Axes | None = None) -> Axes:
    """Draw parallel coordinates: one axis per parameter and one for the metric, one line per
    finished trial coloured by its value (stopped trials faint grey)."""
    ax = new_axes(ax, (min(15.0, max(6.0, 1.6 * (len(distributions) + 1))), 4.5))
    names = [n for n in distributions if n in params]
    shown = params[params["value"].notna() & params["state"].isin(["complete", "pruned"])]
    if shown.empty or not names:
        return _empty(ax, "no finished trial with searched parameters")
    columns, tick_sets = [], []
    rng = np.random.default_rng(0)
    for name in names:
        pos, ticks = _axis_positions(shown[name], distributions[name])
        if isinstance(distributions[name], CategoricalDistribution):
            # repeats and grid points share a category: spread them so each line shows
            pos = pos + rng.uniform(-0.025, 0.025, len(pos))
        columns.append(pos)
        tick_sets.append(ticks)
    values = shown["value"].to_numpy(dtype=float)
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    span = (vmax - vmin) or 1.0
    columns.append((values - vmin) / span)
    tick_sets.append([(0.0, f"{vmin:.3g}"), (1.0, f"{vmax:.3g}")])
    grid = np.vstack(columns).T
    x = np.arange(len(columns))
    cmap = plt.get_cmap("viridis")
    order = np.argsort(values)  # best drawn last, on top (for max; reversed colours for min)
    states = shown["state"].to_numpy()
    for i in order:
        if states[i] == "pruned":
            ax.plot(x, grid[i], color="lightgrey", linewidth=0.8, zorder=1)
    for i in order:
        if states[i] == "complete":
            ax.plot(x, grid[i], color=cmap((values[i] - vmin) / span), linewidth=1.2,
                    alpha=0.85, zorder=2)
    for xi, ticks in zip(x, tick_sets, strict=True):
        ax.axvline(xi, color="black", linewidth=0.8, zorder=0)
        for pos, label in ticks:
            ax.text(xi + 0.03, pos, label, fontsize=7, va="center", ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    ax.set_xticks(x, [*names, metric], rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(vmin, vmax))
    ax.figure.colorbar(mappable, ax=ax, label=metric, fraction=0.04)
    stopped = int((states == "pruned").sum())
    ax.set_title(f"Parallel coordinates ({int((states == 'complete').sum())} finished trials "
                 "in colour" + (f", {stopped} stopped early in grey)" if stopped else ")"))
    return ax


def plot_param_scatter(params: pd.DataFrame, name: str, distribution: Any, metric: str,
                       maximize: bool = True, ax: Axes | None = None) -> Axes:
    """Draw the metric against one parameter, with the search bounds as dashed lines (a best
    value at a bound suggests the bound is too tight)."""
    ax = new_axes(ax, (5.5, 4.0))
    shown = params[params["value"].notna() & params[name].notna()] if name in params else params
    if name not in params or shown.empty:
        return _empty(ax, f"no trial with {name} and a value")
    rng = np.random.default_rng(0)
    if isinstance(distribution, CategoricalDistribution):
        choices = list(distribution.choices)
        index = {c: i for i, c in enumerate(choices)}
        x = shown[name].map(index).to_numpy(dtype=float) + rng.uniform(-0.12, 0.12, len(shown))
        ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        ax.set_xlim(-0.5, len(choices) - 0.5)
    else:
        x = shown[name].to_numpy(dtype=float)
        if getattr(distribution, "log", False):
            ax.set_xscale("log")
    for state, face, label in (("complete", "C0", "finished"),
                               ("pruned", "none", "stopped early (last value)")):
        mask = (shown["state"] == state).to_numpy()
        if mask.any():
            ax.scatter(x[mask], shown["value"].to_numpy()[mask], facecolors=face,
                       edgecolors="C0", s=24, label=f"{label} ({int(mask.sum())})")
    done = shown[shown["state"] == "complete"]
    if len(done):
        best = done["value"].idxmax() if maximize else done["value"].idxmin()
        bx = x[shown.index.get_loc(best)]
        ax.scatter([bx], [done.loc[best, "value"]], marker="*", s=160, color="C2", zorder=3,
                   label="best finished")
    if not isinstance(distribution, CategoricalDistribution):
        for bound in (distribution.low, distribution.high):
            ax.axvline(bound, color="grey", linestyle="--", linewidth=1,
                       label="search bounds" if bound == distribution.low else "_bound")
    ax.set_xlabel(name)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_learning_curves(epochs: pd.DataFrame, trials: pd.DataFrame, metric: str,
                         ax: Axes | None = None) -> Axes:
    """Draw every trial's `metric` per epoch; trials stopped by the scheduler end in an x,
    diverged or errored ones are red, so the scheduler's decisions can be judged by eye."""
    ax = new_axes(ax, (8.0, 4.8))
    if epochs.empty or metric not in epochs:
        return _empty(ax, "no epochs reported")
    status = dict(zip(trials["trial_id"], trials["status"], strict=True))
    counts: dict[str, int] = {}
    for trial_id, group in epochs.groupby("trial_id", sort=False):
        group = group.sort_values("epoch")
        kind = status.get(trial_id, RunStatus.UNFINISHED.value)
        if kind not in STATUS_STYLE:
            kind = (RunStatus.ERROR.value if kind == RunStatus.NO_RESULTS
                    else RunStatus.UNFINISHED.value)
        color, label = STATUS_STYLE[kind]
        first = kind not in counts
        counts[kind] = counts.get(kind, 0) + 1
        ax.plot(group["epoch"], group[metric], color=color, linewidth=0.9,
                alpha=0.6 if kind == RunStatus.COMPLETED else 0.9,
                label=label if first else "_")
        if kind != RunStatus.COMPLETED:
            ax.scatter(group["epoch"].iloc[-1:], group[metric].iloc[-1:], marker="x", s=30,
                       color=color, zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    by_label = {lab: h for h, lab in zip(handles, labels, strict=True)}
    kinds = {STATUS_STYLE[k][1]: v for k, v in counts.items()}
    ax.legend(by_label.values(), [f"{lab} ({kinds.get(lab, 0)})" for lab in by_label],
              fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("Learning curves of every trial"
                 + (" (x: the last epoch of a trial that did not finish)"
                    if set(counts) - {RunStatus.COMPLETED} else " (none stopped early)"))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return ax
