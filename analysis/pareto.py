"""Several objectives and constraints: the Pareto front of the configurations, their
feasibility, the configuration chosen from the front and the rule that chose it.

A study whose space gives several objectives (`metric: [val_auroc, val_sensitivity]`) or
constraints (`constraints: {val_sensitivity: ">= 0.90"}`) is summarised here: each
configuration by the seed-means of its objectives (on the weights each run tested), feasible
when those means meet every constraint. The front is Optuna's: the non-dominated configurations
among the feasible ones (among all, when none is feasible). `collect_front` computes it,
`plot_pareto` draws it, `pareto_section` says it in report.md.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from analysis.plotting import plt
from analysis.results import CONFIG_KEYS, column_name
from study.core.names import FIGURES_DIR, RunStatus
from study.search.space import Constraint, parse_constraints, parse_objectives

FIGURE = "pareto_front"  # figures/pareto_front.png (its own section, not among hpo_*)
RULE = ("the best first objective among the feasible configurations on the Pareto front "
        "(ties: the next objective)")
NONE_FEASIBLE = ("no configuration meets the constraints: the least-violating one (smallest "
                 "total shortfall of its seed-means), ties broken by the first objective")


class Front(NamedTuple):
    """The configurations of a study with several objectives or constraints."""

    table: pd.DataFrame  # one row per configuration: keys, objectives, `feasible`, `pareto`, ...
    keys: list[str]  # the config columns that name a configuration
    metrics: list[str]
    modes: list[str]
    constraints: tuple[Constraint, ...]
    chosen: int | None  # the row of `table` chosen as best (None: no configuration)
    any_feasible: bool

    @property
    def key(self) -> tuple[Any, ...] | None:
        """The chosen configuration's values of `keys` (as `best_configuration` groups them)."""
        if self.chosen is None:
            return None
        return tuple(self.table.loc[self.chosen, self.keys])


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows of `values` (n configurations x k objectives) no other row dominates.

    A row dominates another when it is at least as good in every objective and better in one
    (`modes`: max or min per column). Written out: Optuna's own front works on trials, and
    its helper is private."""
    signed = np.asarray(values, dtype=float) * np.where(np.array(modes) == "max", 1.0, -1.0)
    at_least = (signed[:, None, :] >= signed[None, :, :]).all(axis=2)  # [j, i]: j >= i
    better = (signed[:, None, :] > signed[None, :, :]).any(axis=2)
    dominated = (at_least & better).any(axis=0)
    return ~dominated


def _usable(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The runs a configuration is judged by, as `best_configuration` takes them: completed
    ones (a partial study without any: stopped and unfinished ones too), no duplicates."""
    if "duplicate" in runs:
        runs = runs[~runs["duplicate"].astype(bool)]
    scored = runs[list(metrics)].notna().all(axis=1)
    usable = runs[(runs["status"] == RunStatus.COMPLETED) & scored]
    if usable.empty:
        usable = runs[runs["status"].isin(
            [RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.UNFINISHED]) & scored]
    return usable


def objectives_of(meta: dict[str, Any], where: str
                  ) -> tuple[list[str], list[str], tuple[Constraint, ...]] | None:
    """The objectives (metrics, modes) and constraints of study.json's space; None for one
    objective without constraints (a study summarised as before)."""
    raw = meta.get("space")
    if not isinstance(raw, dict):
        return None
    objectives = parse_objectives(raw, f"{where}: space")
    constraints = parse_constraints(raw.get("constraints"), f"{where}: space")
    if len(objectives) == 1 and not constraints:
        return None
    return [m for m, _ in objectives], [m for _, m in objectives], constraints


def collect_front(runs: pd.DataFrame, metrics: list[str], modes: list[str],
                  constraints: tuple[Constraint, ...] = ()) -> Front:
    """Return the configurations' seed-mean objectives and constrained metrics, their
    feasibility (`feasible`, `violation`: the total shortfall), `pareto`, and the chosen one."""
    names = list(dict.fromkeys([*metrics, *(c.metric for c in constraints)]))
    present = [n for n in names if n in runs]
    usable = _usable(runs, names) if runs is not None and len(present) == len(names) \
        and "status" in runs else pd.DataFrame()
    keys = [c for c in (column_name(k) for k in CONFIG_KEYS if k != "seed") if c in usable]
    if usable.empty or not keys:
        return Front(pd.DataFrame(), keys, metrics, modes, constraints, None, False)
    groups = usable.groupby(keys, dropna=False, sort=False)
    table = groups[names].mean().reset_index()
    table["n_seeds"] = groups.size().to_numpy()
    table["trial_ids"] = [", ".join(dict.fromkeys(g["trial_id"])) for _, g in groups]
    table["feasible"] = [all(c.holds(row[c.metric]) for c in constraints)
                         for _, row in table.iterrows()]
    table["violation"] = [sum(max(c.violation(row[c.metric]), 0.0) for c in constraints
                              if not c.holds(row[c.metric])) for _, row in table.iterrows()]
    any_feasible = bool(table["feasible"].any())
    among = table["feasible"] if any_feasible else pd.Series(True, index=table.index)
    mask = np.zeros(len(table), dtype=bool)
    mask[among.to_numpy()] = pareto_mask(table.loc[among, metrics].to_numpy(), modes)
    table["pareto"] = mask
    order = [m == "min" for m in modes]
    if any_feasible:
        pool = table[table["pareto"]].sort_values(metrics, ascending=order)
    else:
        pool = table.sort_values(["violation", *metrics], ascending=[True, *order])
    return Front(table, keys, metrics, modes, constraints, int(pool.index[0]), any_feasible)


def selection_record(front: Front | None) -> dict[str, Any]:
    """What best_config.json says of the choice: the objectives, the constraints, the rule and
    whether the chosen configuration meets them (nothing for a single objective)."""
    if front is None or front.chosen is None:
        return {}
    best = front.table.loc[front.chosen]
    return {"objectives": dict(zip(front.metrics, front.modes, strict=True)),
            "constraints": [str(c) for c in front.constraints],
            "rule": RULE if front.any_feasible else NONE_FEASIBLE,
            "feasible": bool(best["feasible"]), "pareto_size": int(front.table["pareto"].sum())}


def mark_leaderboard(board: pd.DataFrame, runs: pd.DataFrame, front: Front) -> pd.DataFrame:
    """`board` (one row per run) with the objectives and constrained metrics it lacks, and
    its configuration's `feasible` and `pareto` on every run (blank and False where no run of
    the configuration was judged: all diverged, errored or unfinished)."""
    names = [n for n in dict.fromkeys([*front.metrics, *(c.metric for c in front.constraints)])
             if n not in board and n in runs]
    if names and {"trial_id", "seed"} <= set(runs) and {"trial_id", "seed"} <= set(board):
        extra = runs[["trial_id", "seed", *names]].drop_duplicates(["trial_id", "seed"])
        board = board.merge(extra, on=["trial_id", "seed"], how="left")
    if front.table.empty or not set(front.keys) <= set(board):
        return board.assign(feasible=pd.NA, pareto=False)
    flags = front.table[[*front.keys, "feasible", "pareto"]]  # every run of a configuration
    marked = board.merge(flags, on=front.keys, how="left")
    marked["pareto"] = marked["pareto"].fillna(False).astype(bool)
    return marked


def plot_pareto(front: Front, ax: Any = None) -> Any:
    """The configurations on their first two objectives: the front highlighted (a line through
    it), feasible ones in colour, infeasible ones grey, the chosen one starred."""
    ax = ax if ax is not None else plt.subplots(figsize=(6.4, 4.8))[1]
    table = front.table
    x, y = front.metrics[0], front.metrics[1] if len(front.metrics) > 1 else front.metrics[0]
    if table.empty:
        ax.text(0.5, 0.5, "no configuration scored yet", ha="center", va="center",
                transform=ax.transAxes)
        return ax
    infeasible = table[~table["feasible"]]
    feasible = table[table["feasible"] & ~table["pareto"]]
    on_front = table[table["pareto"]].sort_values(x)
    ax.scatter(infeasible[x], infeasible[y], color="0.7", label="infeasible", zorder=2)
    ax.scatter(feasible[x], feasible[y], color="C0", alpha=0.7, label="feasible", zorder=3)
    ax.plot(on_front[x], on_front[y], "o-", color="C3", label="Pareto front", zorder=4)
    if front.chosen is not None:
        best = table.loc[front.chosen]
        ax.scatter([best[x]], [best[y]], marker="*", s=260, color="gold", edgecolor="k",
                   label="chosen", zorder=5)
    for c in front.constraints:  # each bound drawn where it is on an axis
        if c.metric in (x, y):
            (ax.axvline if c.metric == x else ax.axhline)(c.bound, color="0.4", ls="--", lw=1)
    ax.set_xlabel(f"{x} ({front.modes[0]}), seed-mean")
    ax.set_ylabel(f"{y} ({front.modes[1] if len(front.modes) > 1 else front.modes[0]}), "
                  "seed-mean")
    ax.set_title("Configurations: the Pareto front" + (" (constraints: "
                 + "; ".join(map(str, front.constraints)) + ")" if front.constraints else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    return ax


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def pareto_section(front: Front | None, figures: dict[str, str]) -> list[str]:
    """report.md's section on the objectives, the front and the chosen configuration (nothing
    for a study with one objective and no constraints)."""
    if front is None:
        return []
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(front.metrics, front.modes,
                                                             strict=True))
    lines = ["## Objectives, constraints and the Pareto front", "",
             f"Objectives: {objectives}; constraints: "
             + ("; ".join(map(str, front.constraints)) or "none") + ". Each configuration is "
             "judged by its seed-means on validation (the weights each run tested). Optuna "
             "searched all objectives (TPE/GP also learned where the constraints hold); "
             f"early-stopping schedulers judged the first objective, {front.metrics[0]}, only.",
             ""]
    if front.table.empty:
        return [*lines, "No configuration has every objective scored yet.", ""]
    rule = RULE if front.any_feasible else NONE_FEASIBLE
    front_rows = front.table[front.table["pareto"]].sort_values(
        front.metrics, ascending=[m == "min" for m in front.modes])
    shown = [k for k in front.keys if front.table[k].nunique(dropna=False) > 1]
    names = list(dict.fromkeys([*front.metrics, *(c.metric for c in front.constraints)]))
    lines += [f"The front ({len(front_rows)} of {len(front.table)} configurations"
              + ("" if front.any_feasible else "; none feasible, so the front of all") + "):",
              "", "| " + " | ".join([*shown, *names, "feasible", "seeds", "trials", "chosen"])
              + " |",
              "|" + " --- |" * (len(shown) + len(names) + 4)]
    for index, row in front_rows.iterrows():
        cells = [_cell(row[k]) for k in shown] + [_cell(row[n]) for n in names]
        lines.append("| " + " | ".join([*cells, "yes" if row["feasible"] else "no",
                                        str(row["n_seeds"]), row["trial_ids"],
                                        "**chosen**" if index == front.chosen else ""]) + " |")
    lines += ["", f"Chosen by the rule: {rule}."]
    if front.chosen is not None:
        best = front.table.loc[front.chosen]
        why = ", ".join(f"{m} {_cell(best[m])}" for m in front.metrics)
        lines.append(f"This configuration ({best['trial_ids']}): {why}"
                     + (f"; it meets {'; '.join(map(str, front.constraints))}"
                        if front.constraints and best["feasible"] else "")
                     + (f"; total shortfall {_cell(best['violation'])}"
                        if not best["feasible"] else "") + ".")
    name = f"{FIGURE}.png"
    if name in figures:
        lines += ["", f"![{figures[name]}]({FIGURES_DIR}/{name})"]
    return [*lines, ""]
