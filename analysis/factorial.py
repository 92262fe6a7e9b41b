"""A factorial analysis of a grid: main effects and two-way interactions over every run.

One factor at a time (`analysis.homework`) compares arms that differ in one factor with the
others held at the baseline: in the homework grid (2 losses x 4 batch sizes x 2 depths, 3
seeds, 48 runs) the loss and the depth comparisons each use 6 of the 48 runs. A linear model of
every run's test accuracy on the factors, their two-way interactions and the seed as a block
(seed s starts every configuration from the same initialisation stream and data order) uses all
48, and says whether a factor's effect depends on another's:

    accuracy ~ (loss + batch_size + depth)^2 + seed        (statsmodels OLS, sum coding)

- **ANOVA table** (type II): each term's F and p.
- **Main effects**: each level against the baseline's, averaged over the other factors' levels
  alike (a contrast of the model's cell means), with its 95 % CI and p.
- **Interactions**: for each two factors, the difference of differences of a level pair against
  the baseline pair, averaged over the third factor, with its CI and p.

Only a complete grid (every cell of the factors run) is analysed; `collect_*` returns data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from study.core.names import RunStatus

EFFECT_COLUMNS = ["kind", "term", "contrast", "estimate", "ci_low", "ci_high", "p_value"]
ANOVA_COLUMNS = ["term", "df", "sum_sq", "F", "p_value"]


class Factorial(NamedTuple):
    """The fitted grid: its ANOVA table, effect contrasts and what it was fitted on."""

    factors: list[str]
    formula: str
    n: int  # runs in the model
    blocked: bool  # seed entered as a block
    anova: pd.DataFrame  # ANOVA_COLUMNS
    effects: pd.DataFrame  # EFFECT_COLUMNS
    residual_df: float


def _levels(values: pd.Series) -> list[Any]:
    return sorted(values.unique(), key=lambda v: (isinstance(v, str), v))


def collect_factorial(runs: pd.DataFrame, factors: Sequence[str],
                      baseline: dict[str, Any], metric: str = "test_accuracy"
                      ) -> Factorial | None:
    """Fit the factorial model to the completed, distinct runs of a complete grid of
    `factors` (those that vary; at least two); None where there is no such grid. Contrasts
    are against `baseline`'s level of each factor (its first level where the grid lacks it)."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    if runs.empty or metric not in runs or "status" not in runs:
        return None
    data = runs[runs["status"] == RunStatus.COMPLETED]
    if "duplicate" in data:
        data = data[~data["duplicate"].astype(bool)]
    data = data[np.isfinite(pd.to_numeric(data[metric], errors="coerce"))]
    used = [f for f in factors if f in data and data[f].nunique(dropna=True) > 1]
    if len(used) < 2 or data[used].isna().any().any():
        return None
    levels = {f: _levels(data[f]) for f in used}
    cells = data.groupby(used).size()
    if len(cells) < math.prod(len(v) for v in levels.values()) or cells.min() < 2:
        return None  # an incomplete grid, or a cell without a repeat: no error to test on
    frame = pd.DataFrame({f"f_{f}": data[f].astype(str) for f in used})
    frame["y"] = pd.to_numeric(data[metric]).to_numpy(dtype=float)
    blocked = "seed" in data and data["seed"].nunique() > 1 and data["seed"].notna().all()
    terms = [f"C(f_{f}, Sum)" for f in used]
    formula = f"y ~ ({' + '.join(terms)})**2"
    if blocked:
        frame["seed"] = data["seed"].astype(int).astype(str).to_numpy()
        formula += " + C(seed, Sum)"
    frame = frame.reset_index(drop=True)
    fit = smf.ols(formula, data=frame).fit()
    if not fit.df_resid > 0:
        return None
    table = anova_lm(fit, typ=2)
    anova = pd.DataFrame({
        "term": [_term_name(t, used) for t in table.index], "df": table["df"].to_numpy(),
        "sum_sq": table["sum_sq"].to_numpy(), "F": table["F"].to_numpy(),
        "p_value": table["PR(>F)"].to_numpy()}, columns=ANOVA_COLUMNS)
    base = {f: baseline.get(f) if baseline.get(f) in levels[f] else levels[f][0] for f in used}
    effects = _effects(fit, frame, used, levels, base, blocked)
    short = " + ".join(used)
    return Factorial(used, f"{metric} ~ ({short})^2" + (" + seed" if blocked else ""),
                     int(len(frame)), bool(blocked), anova, effects, float(fit.df_resid))


def _term_name(term: str, factors: list[str]) -> str:
    if term == "Residual":
        return "residual"
    if term.startswith("C(seed"):
        return "seed (block)"
    names = [f for f in factors if f"C(f_{f}, Sum)" in term]
    return " x ".join(names) if names else term


def _grid(fit: Any, frame: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Every cell of the grid and its design row (cell means are rows @ params): the mean of
    its runs' rows, with the seed block's columns at their mean over all runs, so that every
    cell is taken at the same average seed."""
    exog = np.asarray(fit.model.exog, dtype=float)
    names = list(fit.model.exog_names)
    seed_columns = [i for i, n in enumerate(names) if n.startswith("C(seed")]
    keys = [f"f_{f}" for f in factors]
    cells, rows = [], []
    for key, index in frame.groupby(keys, sort=True).groups.items():
        row = exog[np.asarray(list(index))].mean(0)
        row[seed_columns] = exog[:, seed_columns].mean(0)
        cells.append(dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)))
        rows.append(row)
    return pd.DataFrame(cells), np.asarray(rows)


def _contrast(fit: Any, grid: pd.DataFrame, design: np.ndarray,
              weights: list[tuple[dict[str, str], float]]) -> tuple[float, float, float, float]:
    """Estimate, 95 % CI and p of a weighted sum of marginal cell means."""
    vector = np.zeros(design.shape[1])
    for where, weight in weights:
        mask = np.ones(len(grid), dtype=bool)
        for column, value in where.items():
            mask &= (grid[column] == value).to_numpy()
        vector += weight * design[mask].mean(0)
    test = fit.t_test(vector[None, :])
    low, high = np.asarray(test.conf_int(alpha=0.05))[0]
    return (float(np.asarray(test.effect).ravel()[0]), float(low), float(high),
            float(np.asarray(test.pvalue).ravel()[0]))


def _effects(fit: Any, frame: pd.DataFrame, factors: list[str], levels: dict[str, list[Any]],
             base: dict[str, Any], blocked: bool) -> pd.DataFrame:
    grid, design = _grid(fit, frame, factors)
    rows = []
    for f in factors:
        b = str(base[f])
        for level in levels[f]:
            if str(level) == b:
                continue
            estimate = _contrast(fit, grid, design, [({f"f_{f}": str(level)}, 1.0),
                                                     ({f"f_{f}": b}, -1.0)])
            rows.append(["main effect", f, f"{f} {level} − {b}", *estimate])
    for f, g in itertools.combinations(factors, 2):
        bf, bg = str(base[f]), str(base[g])
        for lf, lg in itertools.product(levels[f], levels[g]):
            if str(lf) == bf or str(lg) == bg:
                continue
            cells = [({f"f_{f}": str(lf), f"f_{g}": str(lg)}, 1.0),
                     ({f"f_{f}": bf, f"f_{g}": str(lg)}, -1.0),
                     ({f"f_{f}": str(lf), f"f_{g}": bg}, -1.0),
                     ({f"f_{f}": bf, f"f_{g}": bg}, 1.0)]
            estimate = _contrast(fit, grid, design, cells)
            rows.append(["interaction", f"{f} x {g}",
                         f"({f} {lf} − {bf}) at {g} {lg} minus at {g} {bg}", *estimate])
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def factorial_table(result: Factorial) -> pd.DataFrame:
    """The effects and the ANOVA rows as one table (for homework.csv: `row` = factorial)."""
    effects = result.effects.assign(row="factorial")
    anova = result.anova.assign(row="factorial-anova", kind="anova")
    return pd.concat([effects, anova], ignore_index=True)
