"""The factorial model of a grid (analysis/factorial.py) against hand computation and scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.factorial import collect_factorial, factorial_table
from analysis.homework import BASELINE, select_comparison
from analysis.report_design import factorial_section


def _grid(seed_effect: float = 0.0) -> pd.DataFrame:
    """The homework grid (2 x 4 x 2, 3 seeds, 48 runs): CE +2, batch 128 +3, and an
    interaction: depth 5 costs 2 points at batch 2 only."""
    rng = np.random.default_rng(8)
    rows = []
    for i, (loss, batch, depth, seed) in enumerate(
            itertools.product(("bce", "ce"), (2, 16, 32, 128), (3, 5), range(3))):
        acc = (80 + 2 * (loss == "ce") + 3 * (batch == 128) - 2 * (depth == 5 and batch == 2)
               + seed_effect * seed + rng.normal(0, 0.5))
        rows.append({"trial_id": f"t{i}", "status": "completed", "seed": seed, "loss": loss,
                     "batch_size": batch, "depth": depth, "test_accuracy": acc})
    return pd.DataFrame(rows)


def test_every_run_enters_and_effects_are_the_grids_marginal_contrasts() -> None:
    runs = _grid(seed_effect=1.0)
    result = collect_factorial(runs, list(BASELINE), BASELINE)
    assert result is not None and result.n == 48 and result.blocked
    one_at_a_time = select_comparison(runs, "loss")
    assert one_at_a_time is not None and len(one_at_a_time.trials) == 6  # of the 48
    effects = result.effects.set_index("contrast")
    # balanced grid: a main effect is the difference of the raw marginal means
    means = runs.groupby("loss")["test_accuracy"].mean()
    assert effects.loc["loss bce − ce", "estimate"] == pytest.approx(means["bce"] - means["ce"])
    batch = runs.groupby("batch_size")["test_accuracy"].mean()
    assert effects.loc["batch_size 128 − 32", "estimate"] == pytest.approx(batch[128] - batch[32])
    # ... and a two-way interaction the difference of differences of the two-way means
    cell = runs.groupby(["batch_size", "depth"])["test_accuracy"].mean()
    by_hand = (cell[2, 5] - cell[32, 5]) - (cell[2, 3] - cell[32, 3])
    row = effects.loc["(batch_size 2 − 32) at depth 5 minus at depth 3"]
    assert row["estimate"] == pytest.approx(by_hand)
    assert row["ci_high"] < 0 and row["p_value"] < 0.001  # the planted interaction is found
    # a two-level main effect's CI by hand: MSE of the model, 24 runs per level
    anova = result.anova.set_index("term")
    mse = anova.loc["residual", "sum_sq"] / anova.loc["residual", "df"]
    half = stats.t.ppf(0.975, result.residual_df) * math.sqrt(mse * (1 / 24 + 1 / 24))
    loss = effects.loc["loss bce − ce"]
    assert loss["ci_high"] - loss["estimate"] == pytest.approx(half)
    # type II sum of squares of a balanced factor: 24 runs x sum of squared level deviations
    grand = runs["test_accuracy"].mean()
    assert anova.loc["loss", "sum_sq"] == pytest.approx(24 * ((means - grand) ** 2).sum())
    assert anova.loc["seed (block)", "p_value"] < 0.001  # the seed block takes its share
    f = anova.loc["batch_size x depth", "F"]
    assert anova.loc["batch_size x depth", "p_value"] == pytest.approx(
        stats.f.sf(f, 3, result.residual_df))


def test_an_incomplete_grid_is_not_fitted() -> None:
    runs = _grid()
    assert collect_factorial(runs[runs["batch_size"] != 2].iloc[1:], list(BASELINE),
                             BASELINE) is not None  # one run fewer: every cell still repeats
    missing = runs[~((runs["batch_size"] == 2) & (runs["depth"] == 5) & (runs["loss"] == "ce"))]
    assert collect_factorial(missing, list(BASELINE), BASELINE) is None
    assert collect_factorial(runs[(runs["loss"] == "ce") & (runs["depth"] == 3)], list(BASELINE),
                             BASELINE) is None  # one factor left


def test_the_section_and_table_carry_the_numbers() -> None:
    result = collect_factorial(_grid(), list(BASELINE), BASELINE)
    assert result is not None
    text = "\n".join(factorial_section(result))
    assert "one linear model of all 48 runs" in text and "| batch_size x depth | 3 |" in text
    table = factorial_table(result)
    assert set(table["row"]) == {"factorial", "factorial-anova"}
